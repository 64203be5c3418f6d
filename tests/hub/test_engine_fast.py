"""The diagnosis engine's paths in seconds: an in-process registry and a scripted generalist.

No server is started: the hub syncs (through its own TUF client, as ever) from
:class:`registry.InProcessRegistry` over a registry core in a temporary
folder, and the generalist is :class:`tests.generalists.ScriptedGeneralist`.
The same paths against the real gRPC registry and the real vLLM server are
tested in ``test_end_to_end.py`` and ``test_adapters.py``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from generalist import ArbitrationRequest, GeneralistResponseError
from hub.web import Hub
from protocol import Mode
from registry import Registry
from tests.bundles import publish_to, read_files, tiny_onnx, write_bundle_files
from tests.conftest import SiteKeys
from tests.generalists import ScriptedGeneralist, is_content_free
from tests.hub.conftest import in_process_hub, png

LABELS = ("normal", "pneumonia")


def _publish(registry: Registry, where: Path, models: dict[SiteKeys, bytes]) -> None:
    for site, model in models.items():
        registry.enroll(site.site_id, site.public.pem)
        folder = write_bundle_files(where / site.site_id, site, model=model)
        publish_to(registry, read_files(folder), site)


def _follows_the_evidence(request: ArbitrationRequest) -> dict[str, float]:
    """Scores that follow the specialists' vote, and the retrieval's when there is no vote."""
    if is_content_free(request):
        return {"normal": 0.5, "pneumonia": 0.5}
    votes = [e.label for e in request.moed] or [c.label for c in request.rad]
    share = votes.count("pneumonia") / max(1, len(votes))
    return {"normal": 1 - 0.8 * share - 0.1, "pneumonia": 0.8 * share + 0.1}


@pytest.fixture
def store(tmp_path: Path, site_a: SiteKeys, site_b: SiteKeys) -> Iterator[Registry]:
    registry = Registry(tmp_path / "registry")
    _publish(registry, tmp_path, {site_a: tiny_onnx(1), site_b: tiny_onnx(2)})
    yield registry
    registry.close()


@pytest.fixture
def make_hub(store: Registry, tmp_path: Path) -> Iterator[Any]:
    hubs: list[Hub] = []

    def make(generalist: Any, **overrides: Any) -> Hub:
        hub = in_process_hub(store, tmp_path / f"hub-{len(hubs)}", generalist, **overrides)
        hubs.append(hub)
        return hub

    yield make
    for hub in hubs:
        asyncio.run(hub.aclose())


def _diagnose(hub: Hub, mode: Mode, seed: int = 0) -> Any:
    assert hub.engine is not None
    return asyncio.run(
        hub.engine.diagnose(
            request_id="t", task_id="pneumonia-cxr", image=png(seed), media_type=None, mode=mode
        )
    ).response


def test_the_hub_syncs_from_the_in_process_registry_through_tuf(make_hub: Any) -> None:
    hub = make_hub(None)
    assert hub.last_sync is not None and hub.last_sync.ok  # noqa: PT018
    assert {s.card.site_id for s in hub.catalog.for_task("pneumonia-cxr")} == {"site-a", "site-b"}


@pytest.mark.parametrize("mode", [Mode.GSCO, Mode.MOED, Mode.RAD])
def test_each_generalist_mode_answers_with_its_evidence(make_hub: Any, mode: Mode) -> None:
    generalist = ScriptedGeneralist(_follows_the_evidence)
    hub = make_hub(generalist)
    answer = _diagnose(hub, mode)
    assert answer.mode_used is mode
    assert not answer.degraded
    assert answer.generalist.model == "scripted"
    assert answer.generalist.calibration == "contextual"
    asked = [r for r in generalist.calls if not is_content_free(r)][-1]
    assert asked.mode is mode
    assert bool(asked.moed) == (mode in (Mode.GSCO, Mode.MOED))  # rad sees no specialist votes
    assert bool(asked.rad) == (mode in (Mode.GSCO, Mode.RAD))
    assert answer.label in LABELS
    assert answer.label == max(answer.scores, key=answer.scores.__getitem__)


def test_a_generalist_that_times_out_gives_the_ensemble(make_hub: Any) -> None:
    hub = make_hub(ScriptedGeneralist(_follows_the_evidence, delay_s=2.0), generalist_timeout_s=0.2)
    ensemble = _diagnose(hub, Mode.ENSEMBLE)
    answer = _diagnose(hub, Mode.GSCO)
    assert answer.degraded
    assert answer.mode_used is Mode.ENSEMBLE
    assert answer.label == ensemble.label
    assert any("did not answer within 0.2 s" in w for w in answer.warnings)


def test_an_off_label_answer_gives_the_ensemble(make_hub: Any) -> None:
    def off_label(request: ArbitrationRequest) -> dict[str, float]:
        raise GeneralistResponseError("the answer 'maybe' is not one of the task's labels")

    hub = make_hub(ScriptedGeneralist(off_label))
    answer = _diagnose(hub, Mode.MOED)
    assert answer.degraded
    assert answer.mode_used is Mode.ENSEMBLE
    assert any("the generalist failed" in w and "maybe" in w for w in answer.warnings)


def test_answers_average_the_option_orders_and_say_so(make_hub: Any) -> None:
    def first_listed_wins(request: ArbitrationRequest) -> dict[str, float]:
        scores = _follows_the_evidence(request)
        first = request.task.labels[0]
        boosted = {k: v * (4.0 if k == first else 1.0) for k, v in scores.items()}
        return {k: v / sum(boosted.values()) for k, v in boosted.items()}

    averaged = ScriptedGeneralist(first_listed_wins)
    answer = _diagnose(make_hub(averaged), Mode.GSCO)
    assert answer.generalist.option_orders == 2
    asked = {tuple(r.task.labels) for r in averaged.calls}
    assert asked == {LABELS, LABELS[::-1]}
    # The content-free question is averaged too: the position bias cancels, and the
    # calibrated scores are those of the evidence alone.
    expected = _follows_the_evidence(averaged.calls[-1])
    assert answer.generalist.calibrated_scores == pytest.approx(expected, abs=1e-6)

    plain = ScriptedGeneralist(first_listed_wins)
    answer = _diagnose(make_hub(plain, average_option_orders=False), Mode.GSCO)
    assert answer.generalist.option_orders == 1
    assert {tuple(r.task.labels) for r in plain.calls} == {LABELS}


@pytest.mark.parametrize("weight", [0.0, 1.0])
def test_a_policy_with_the_vote_as_base_fuses_with_the_votes_scores(
    make_hub: Any, weight: float
) -> None:
    import numpy as np

    from hub import fuse, vote_scores
    from protocol import ArbitrationPolicy, ModePolicy

    hub = make_hub(ScriptedGeneralist(_follows_the_evidence))
    fitted = ModePolicy(
        generalist_weight=weight, base="voting", validation_accuracy={}, weights_tried={}
    )
    policy = ArbitrationPolicy(
        task_id="pneumonia-cxr",
        labels=LABELS,
        model="scripted",
        n_examples=10,
        modes={Mode.GSCO: fitted},
    )
    hub.set_policy(policy)
    answer = _diagnose(hub, Mode.GSCO, seed=4)
    assert answer.generalist.policy_base == "voting"
    assert answer.generalist.policy_weight == weight
    sites = np.array([[p.probabilities[label] for label in LABELS] for p in answer.moed])
    calibrated = [answer.generalist.calibrated_scores[label] for label in LABELS]
    expected = fuse(vote_scores(sites).tolist(), calibrated, weight)
    assert [answer.scores[label] for label in LABELS] == pytest.approx(expected.tolist())
    assert answer.label == LABELS[int(expected.argmax())]
    if weight == 0:
        vote = _diagnose(hub, Mode.VOTING, seed=4)
        assert answer.label == vote.label  # the base alone is the vote


def test_the_worker_pool_has_one_thread_per_core_unless_told(
    make_hub: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One intra-op thread per session and one worker per core: no more runnable threads
    than cores (4 workers on 2 cores stretched retrieval from 0.03 ms to 2-5 ms)."""
    import os

    from hub import HubConfigError
    from hub.web._service import available_cores

    monkeypatch.setattr(os, "sched_getaffinity", lambda _: {0, 1, 2})
    assert available_cores() == 3
    assert make_hub(None).executor._max_workers == 3
    assert make_hub(None, workers=5).executor._max_workers == 5
    with pytest.raises(HubConfigError, match="workers"):
        make_hub(None, workers=0).config.check()


def test_a_specialist_that_fails_is_left_out_and_only_a_task_of_failures_fails(
    tmp_path: Path, site_a: SiteKeys, site_b: SiteKeys
) -> None:
    """site-b's model asks for 8 GB per run, over the hub's 4 GiB of run memory.

    Its runs fail alone: answers come from site-a, degraded and naming site-b, and
    the evidence a site's adapter examples are built from leaves it out the same
    way. A task whose every specialist fails fails with SpecialistRuntimeError.
    """
    from hub import SpecialistRuntimeError
    from tests.bundles import memory_bomb_onnx

    registry = Registry(tmp_path / "registry")
    hub: Hub | None = None
    try:
        bomb = memory_bomb_onnx(2_000_000_000)
        _publish(registry, tmp_path, {site_a: tiny_onnx(1), site_b: bomb})
        alone = write_bundle_files(
            tmp_path / "alone", site_b, model=bomb, card_overrides={"task_id": "lonely-task"}
        )
        publish_to(registry, read_files(alone), site_b)
        hub = in_process_hub(registry, tmp_path / "hub")
        answer = _diagnose(hub, Mode.ENSEMBLE)
        assert answer.degraded
        assert [s.site_id for s in answer.specialists] == ["site-a"]
        assert answer.warnings[0].endswith("(site-b) failed on this image and was left out")
        assert hub.engine is not None
        _, request = asyncio.run(hub.engine.evidence(task_id="pneumonia-cxr", image=png(0)))
        assert len(request.moed) == 1  # site-a alone, as the hub sends it
        with pytest.raises(SpecialistRuntimeError, match="site-b"):
            asyncio.run(
                hub.engine.diagnose(
                    request_id="t", task_id="lonely-task", image=png(0), media_type=None
                )
            )
    finally:
        if hub is not None:
            asyncio.run(hub.aclose())
        registry.close()


def test_a_run_past_max_run_seconds_is_stopped_and_its_specialist_left_out(
    tmp_path: Path, site_a: SiteKeys, site_b: SiteKeys, caplog: pytest.LogCaptureFixture
) -> None:
    """site-b's 6 KB model runs for seconds to minutes; the hub stops it after 0.5 s."""
    from hub import RuntimeOptions
    from tests.bundles import slow_onnx

    registry = Registry(tmp_path / "registry")
    hub: Hub | None = None
    try:
        _publish(registry, tmp_path, {site_a: tiny_onnx(1), site_b: slow_onnx(steps=2000)})
        hub = in_process_hub(
            registry, tmp_path / "hub", runtime=RuntimeOptions(max_run_seconds=0.5)
        )
        with caplog.at_level("WARNING", logger="hub._engine"):
            answer = _diagnose(hub, Mode.ENSEMBLE)
        assert answer.degraded
        assert [s.site_id for s in answer.specialists] == ["site-a"]
        assert answer.warnings[0].endswith("(site-b) failed on this image and was left out")
        assert "(site-b) was stopped after 0.5 s" in caplog.text
    finally:
        if hub is not None:
            asyncio.run(hub.aclose())
        registry.close()


def test_a_specialist_failing_again_and_again_is_suspended_then_tried_again(
    tmp_path: Path, site_a: SiteKeys, site_b: SiteKeys
) -> None:
    """After three failed runs in a row site-b's model is not run for a while.

    Each failed run of a slow model costs a worker up to --max-run-seconds; while
    suspended it costs nothing, and the answers say why it is missing. Once the
    cool-down is over it is run again (and suspended twice as long if it fails).
    """
    from hub._suspend import Suspensions
    from tests.bundles import memory_bomb_onnx

    registry = Registry(tmp_path / "registry")
    hub: Hub | None = None
    try:
        _publish(registry, tmp_path, {site_a: tiny_onnx(1), site_b: memory_bomb_onnx(2 * 10**9)})
        hub = in_process_hub(registry, tmp_path / "hub")
        assert hub.engine is not None
        now = [0.0]
        hub.engine.suspensions = Suspensions(failures=3, cool_down_s=60, clock=lambda: now[0])
        bomb = next(s for s in hub.catalog.all if s.card.site_id == "site-b")
        runs = [0]
        real_run = bomb.run

        def counted(inputs: Any) -> Any:
            runs[0] += 1
            return real_run(inputs)

        bomb.run = counted  # type: ignore[method-assign]
        for _ in range(3):
            assert "failed on this image" in _diagnose(hub, Mode.ENSEMBLE).warnings[0]
        assert runs == [3]
        for _ in range(2):
            answer = _diagnose(hub, Mode.ENSEMBLE)
            assert answer.degraded
            assert [s.site_id for s in answer.specialists] == ["site-a"]
            assert "is suspended after 3 failed runs in a row" in answer.warnings[0]
        assert runs == [3]  # not run while suspended
        now[0] = 61.0
        assert "failed on this image" in _diagnose(hub, Mode.ENSEMBLE).warnings[0]
        assert runs == [4]  # tried again, failed: suspended for 120 s now
        now[0] = 61.0 + 119.0
        assert "is suspended" in _diagnose(hub, Mode.ENSEMBLE).warnings[0]
        assert runs == [4]
    finally:
        if hub is not None:
            asyncio.run(hub.aclose())
        registry.close()


def test_suspensions_clear_on_success_and_never_leave_a_task_empty() -> None:
    from types import SimpleNamespace

    from hub._suspend import Suspensions

    now = [0.0]
    suspensions = Suspensions(failures=2, cool_down_s=10, max_cool_down_s=15, clock=lambda: now[0])
    a, b = (
        SimpleNamespace(bundle_digest=d * 64, card=SimpleNamespace(site_id=f"site-{d}"))
        for d in "ab"
    )
    both: Any = (a, b)
    suspensions.record(a, ok=False)
    suspensions.record(a, ok=True)  # a success clears the count
    suspensions.record(a, ok=False)
    assert suspensions.admit(both) == (both, ())
    suspensions.record(a, ok=False)  # two in a row
    kept, warnings = suspensions.admit(both)
    assert kept == (b,)
    assert warnings == (
        "specialist aaaaaaaaaaaa (site-a) is suspended after 2 failed runs in a row "
        "and was left out",
    )
    suspensions.record(b, ok=False)
    suspensions.record(b, ok=False)
    assert suspensions.admit(both) == (both, ())  # all suspended: all run, nothing else answers
    now[0] = 11.0
    suspensions.record(a, ok=False)  # failed again once back: 20 s, capped at 15
    now[0] = 11.0 + 14.0
    assert suspensions.admit(both)[0] == (b,)  # a: 15 s from 11; b's 10 s are over
    now[0] = 11.0 + 15.5
    assert suspensions.admit(both)[0] == both
    suspensions.forget({b.bundle_digest})
    assert suspensions.admit((a,)) == ((a,), ())
    with pytest.raises(ValueError, match="failures"):
        Suspensions(failures=0)
