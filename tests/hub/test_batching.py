"""Dynamic batching (hub._batching) on a real onnxruntime session and faiss index."""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from hub._batching import BatchingOptions, SpecialistBatcher
from hub._runtime import LoadedSpecialist, load_specialist
from protocol import SpecialistCard
from tests.bundles import read_files, tiny_onnx, write_bundle_files
from tests.conftest import SiteKeys


@pytest.fixture
def specialist(tmp_path: Path, site_a: SiteKeys) -> LoadedSpecialist:
    files = read_files(write_bundle_files(tmp_path / "b", site_a, model=tiny_onnx(3)))
    card = SpecialistCard.parse(files["card.json"])
    return load_specialist(card, "ab" * 32, files)


def _inputs(count: int) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.normal(size=(1, 1, 8, 8)).astype(np.float32) for _ in range(count)]


def _batcher(
    specialist: LoadedSpecialist, pool: ThreadPoolExecutor, inbound: int = 0, **options: float
) -> SpecialistBatcher:
    return SpecialistBatcher(specialist, pool, BatchingOptions(**options), lambda: inbound)


def test_requests_queued_together_run_as_one_batch_with_the_same_answers(
    specialist: LoadedSpecialist,
) -> None:
    inputs = _inputs(10)

    async def main() -> list:
        with ThreadPoolExecutor(2) as pool:
            batcher = _batcher(specialist, pool)
            return list(await asyncio.gather(*(batcher.run(x, top_k=3) for x in inputs)))

    outputs = asyncio.run(main())
    assert [out.batch_size for out in outputs] == [10] * 10
    for x, out in zip(inputs, outputs, strict=True):
        probs, embedding = specialist.run(x)  # alone, unbatched
        np.testing.assert_allclose(out.probabilities, probs[0], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(out.embedding, embedding, rtol=1e-5, atol=1e-6)
        assert out.neighbours == specialist.search(embedding, 3)[0]
        assert len(out.neighbours) == 3


def test_a_batch_holds_at_most_max_batch_and_asks_only_for_the_neighbours_wanted(
    specialist: LoadedSpecialist,
) -> None:
    async def main() -> list:
        with ThreadPoolExecutor(2) as pool:
            batcher = _batcher(specialist, pool, max_batch=4)
            runs = [batcher.run(x, top_k=k % 3) for k, x in enumerate(_inputs(10))]
            return list(await asyncio.gather(*runs))

    outputs = asyncio.run(main())
    assert [out.batch_size for out in outputs] == [4, 4, 4, 4, 4, 4, 4, 4, 2, 2]
    assert [len(out.neighbours) for out in outputs] == [k % 3 for k in range(10)]


def test_a_lone_request_never_waits_for_the_window(specialist: LoadedSpecialist) -> None:
    async def main(inbound: int, window_ms: float) -> float:
        with ThreadPoolExecutor(2) as pool:
            batcher = _batcher(specialist, pool, inbound=inbound, window_ms=window_ms)
            started = time.perf_counter()
            await batcher.run(_inputs(1)[0])
            return time.perf_counter() - started

    # Nothing else on its way: a 5-second window is not waited at all.
    assert asyncio.run(main(inbound=0, window_ms=5000)) < 2.0
    # Another request is being decoded (and never arrives): the window is waited, once.
    assert asyncio.run(main(inbound=1, window_ms=300)) >= 0.3


def test_an_input_onnxruntime_refuses_fails_only_its_own_request(
    specialist: LoadedSpecialist,
) -> None:
    from hub.errors import SpecialistRuntimeError

    good = _inputs(3)
    bad = np.zeros((1, 1, 8, 8), dtype=np.float64)  # the wrong type: onnxruntime refuses it

    async def main() -> list:
        with ThreadPoolExecutor(2) as pool:
            batcher = _batcher(specialist, pool)
            runs = [batcher.run(good[0]), batcher.run(bad), batcher.run(good[1])]
            runs.append(batcher.run(good[2]))
            return list(await asyncio.gather(*runs, return_exceptions=True))

    first, failed, *rest = asyncio.run(main())
    assert isinstance(failed, SpecialistRuntimeError)
    for out in (first, *rest):
        assert not isinstance(out, BaseException), out
        assert out.batch_size == 1  # the batch was retried one request at a time


def test_options_are_checked() -> None:
    with pytest.raises(ValueError, match="max_batch"):
        BatchingOptions(max_batch=0)
    with pytest.raises(ValueError, match="window_ms"):
        BatchingOptions(window_ms=-1)
