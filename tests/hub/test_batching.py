"""Dynamic batching (hub._batching) on a real onnxruntime session and faiss index."""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

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
    specialist: LoadedSpecialist, pool: ThreadPoolExecutor, inbound: int = 0, **options: Any
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


@pytest.mark.parametrize("bounded", [True, False])
def test_a_batch_is_formed_when_a_worker_is_free_so_late_requests_join_it(
    specialist: LoadedSpecialist, bounded: bool
) -> None:
    """Specialists share the workers: a batch that waits for one takes who came meanwhile.

    One worker, two specialists' queues. A holds the only batch slot while its run
    is held up; B's first request and five later ones wait. With the slots shared
    (``BatchingOptions.slots``), B's batch is formed when A's run ends and holds all
    six, with the same answers as alone; without a bound, B's first request sits in
    the executor's queue as a batch of one and the five later ones follow apart.
    """
    import threading

    inputs = _inputs(6)
    gate = threading.Event()

    async def main() -> list:
        slots = asyncio.Semaphore(1)
        options = BatchingOptions(slots=1 if bounded else None)

        def shared() -> asyncio.Semaphore | None:
            return slots if bounded else None

        with ThreadPoolExecutor(1) as pool:
            first = SpecialistBatcher(specialist, pool, options, lambda: 0, shared)
            second = SpecialistBatcher(specialist, pool, options, lambda: 0, shared)
            pool.submit(gate.wait)  # the only worker is busy until the gate opens
            held = first.submit(inputs[0])
            early = second.submit(inputs[0])
            await asyncio.sleep(0.05)  # both drainers have run: one holds the slot
            late = [second.submit(x) for x in inputs[1:]]
            await asyncio.sleep(0.05)
            gate.set()
            return list(await asyncio.gather(held, early, *late))

    held, *outputs = asyncio.run(main())
    assert held.batch_size == 1
    sizes = [out.batch_size for out in outputs]
    assert sizes == ([6] * 6 if bounded else [1, 5, 5, 5, 5, 5])
    for x, out in zip(inputs, outputs, strict=True):
        probs, _ = specialist.run(x)
        np.testing.assert_allclose(out.probabilities, probs[0], rtol=1e-5, atol=1e-6)
        assert out.values == pytest.approx(probs[0].tolist(), rel=1e-5, abs=1e-6)
        assert out.label_index == int(np.argmax(probs[0]))


@pytest.mark.parametrize("per_specialist", [1, 2])
def test_one_specialist_runs_as_many_batches_at_once_as_per_specialist_allows(
    specialist: LoadedSpecialist, per_specialist: int
) -> None:
    """With ``per_specialist=2`` a task served by one specialist uses both workers.

    Its session is thread-safe; the runs are held up so that they overlap if allowed.
    """
    import threading

    running, most = 0, 0
    lock = threading.Lock()
    real_run = specialist.run

    def slow_run(inputs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
        time.sleep(0.1)
        with lock:
            running -= 1
        return real_run(inputs)

    specialist.run = slow_run  # type: ignore[method-assign]
    inputs = _inputs(4)

    async def main() -> list:
        with ThreadPoolExecutor(2) as pool:
            batcher = _batcher(specialist, pool, max_batch=1, per_specialist=per_specialist)
            return list(await asyncio.gather(*(batcher.run(x) for x in inputs)))

    outputs = asyncio.run(main())
    assert most == per_specialist
    for x, out in zip(inputs, outputs, strict=True):
        probs, _ = real_run(x)
        np.testing.assert_allclose(out.probabilities, probs[0], rtol=1e-5, atol=1e-6)


def test_a_search_uses_one_openmp_thread_in_whichever_thread_runs_it(
    specialist: LoadedSpecialist,
) -> None:
    """OpenMP's thread count is per thread: the worker that searches sets its own.

    Left at the default, faiss's BLAS started a team of one thread per core in
    every worker thread, spinning between searches (the hub used 1.8 cores at
    concurrency 1 with one specialist instead of 0.9).
    """
    import threading

    import faiss

    from hub._runtime import FAISS_THREADS

    embedding = specialist.run(_inputs(1)[0])[1]
    seen: list[int] = []

    def worker() -> None:
        faiss.omp_set_num_threads(2)  # what a new thread may start with
        specialist.search(embedding, 3)
        seen.append(faiss.omp_get_max_threads())

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join()
    assert seen == [FAISS_THREADS]


def test_options_are_checked() -> None:
    with pytest.raises(ValueError, match="max_batch"):
        BatchingOptions(max_batch=0)
    with pytest.raises(ValueError, match="window_ms"):
        BatchingOptions(window_ms=-1)
    with pytest.raises(ValueError, match="slots"):
        BatchingOptions(slots=0)
    with pytest.raises(ValueError, match="per_specialist"):
        BatchingOptions(per_specialist=0)
