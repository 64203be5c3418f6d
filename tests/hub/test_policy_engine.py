"""The hub's engine applying a fitted policy: the label bias, the weight, and when it must not.

The generalist here is a scripted stand-in (tests.generalists), because the
cases tested are ones the real vLLM server cannot be made to produce on
demand: a content-free answer that fails while real answers succeed, and a
server that returns no label scores. The same policy against the real server
is tested in ``test_end_to_end.py``. The specialists, the registry and the
engine are real.
"""

from __future__ import annotations

import asyncio
import math
from pathlib import Path
from typing import Any

import pytest

from generalist import ArbitrationRequest, GeneralistError
from protocol import ArbitrationPolicy, Mode, ModePolicy
from tests.conftest import SiteKeys
from tests.generalists import ScriptedGeneralist, is_content_free
from tests.hub.conftest import png, publish
from tests.servers import RunningRegistry

pytestmark = pytest.mark.slow

LABELS = ("normal", "pneumonia")
CONTENT_FREE = {"normal": 0.8, "pneumonia": 0.2}
SCORES = {"normal": 0.6, "pneumonia": 0.4}


def _scripted(
    *,
    content_free: dict[str, float] | None = CONTENT_FREE,
    scores: dict[str, float] | None = SCORES,
) -> ScriptedGeneralist:
    """``normal`` with ``scores``; the content-free question gets ``content_free`` (None: fails)."""

    def score(request: ArbitrationRequest) -> dict[str, float] | None:
        if not is_content_free(request):
            return scores
        if content_free is None:
            raise GeneralistError("scripted: the content-free question fails")
        return content_free

    return ScriptedGeneralist(score)


def _policy(weight: float, bias: tuple[float, float] | None) -> ArbitrationPolicy:
    fitted = ModePolicy(
        generalist_weight=weight,
        validation_accuracy={"policy": 0.9},
        weights_tried={},
        label_bias=bias,
    )
    return ArbitrationPolicy(
        task_id="pneumonia-cxr",
        labels=LABELS,
        model="scripted",
        n_examples=50,
        modes={Mode.GSCO: fitted},
    )


def _diagnose(hub: Any, mode: Mode = Mode.GSCO) -> Any:
    return asyncio.run(
        hub.engine.diagnose(
            request_id="t", task_id="pneumonia-cxr", image=png(3), media_type=None, mode=mode
        )
    ).response


@pytest.fixture
def hub(registry: RunningRegistry, make_hub: Any, tmp_path: Path, site_a: SiteKeys) -> Any:
    publish(registry, site_a, tmp_path)
    hub = make_hub()
    hub.sync_now()
    return hub


def test_the_bias_and_weight_of_the_policy_are_applied(hub: Any) -> None:
    hub.engine.generalist = _scripted()
    hub.set_policy(_policy(1.0, (-1.0, 1.0)))
    ensemble = _diagnose(hub, Mode.ENSEMBLE)
    answer = _diagnose(hub)
    use = answer.generalist
    assert use.calibration == "contextual+bias"
    # contextual: 0.6/0.8 against 0.4/0.2; then exp(bias); then renormalised
    logs = [math.log(0.6 / 0.8) - 1.0, math.log(0.4 / 0.2) + 1.0]
    total = sum(math.exp(v) for v in logs)
    assert [use.calibrated_scores[k] for k in LABELS] == pytest.approx(
        [math.exp(v) / total for v in logs]
    )
    fused = [math.log(ensemble.scores[k]) + math.log(use.calibrated_scores[k]) for k in LABELS]
    assert answer.label == LABELS[fused.index(max(fused))]
    assert use.policy_weight == 1.0
    assert not answer.degraded


def test_without_a_calibration_the_policy_gives_the_ensemble(hub: Any) -> None:
    hub.engine.generalist = _scripted(content_free=None)
    hub.set_policy(_policy(4.0, (-1.0, 1.0)))
    ensemble = _diagnose(hub, Mode.ENSEMBLE)
    answer = _diagnose(hub)
    assert answer.degraded
    assert answer.mode_used is Mode.ENSEMBLE
    assert answer.label == ensemble.label
    assert answer.scores == ensemble.scores
    assert any("could not be calibrated" in w for w in answer.warnings)


def test_without_label_scores_the_policy_gives_the_ensemble(hub: Any) -> None:
    hub.engine.generalist = _scripted(scores=None)
    hub.set_policy(_policy(4.0, None))
    answer = _diagnose(hub)
    assert answer.degraded
    assert answer.mode_used is Mode.ENSEMBLE


def test_a_policy_for_another_model_is_not_applied(hub: Any) -> None:
    hub.engine.generalist = _scripted(content_free=None)
    hub.set_policy(_policy(4.0, (-1.0, 1.0)).model_copy(update={"model": "another"}))
    answer = _diagnose(hub)
    # No policy holds for this model: its own (uncalibrated) answer, as without any policy.
    assert not answer.degraded
    assert answer.mode_used is Mode.GSCO
    assert answer.generalist.calibration == "none"
    assert answer.generalist.policy_weight is None
