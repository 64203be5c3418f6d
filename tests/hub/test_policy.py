"""The arbitration policy: fitted on validation, it never trusts a generalist that does not help."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from hub import HubConfigError, fit_mode, fit_policy, fuse, load_policies
from protocol import ArbitrationPolicy, Mode, TaskSpec

TASK = TaskSpec(
    task_id="pneumonia-cxr", modality="chest X-ray", labels=("normal", "pneumonia"),
    task_type="binary",
)  # fmt: skip


def _evidence(n: int, seed: int, generalist_accuracy: float) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, 2, n)
    # An ensemble that is right 80% of the time, with confidence.
    right = rng.random(n) < 0.8
    p_true = np.where(right, rng.uniform(0.55, 0.95, n), rng.uniform(0.05, 0.45, n))
    ensemble = np.stack([1 - p_true, p_true], axis=1)
    ensemble[truth == 0] = ensemble[truth == 0][:, ::-1]
    g_right = rng.random(n) < generalist_accuracy
    g_true = np.where(g_right, rng.uniform(0.6, 0.99, n), rng.uniform(0.01, 0.4, n))
    generalist = np.stack([1 - g_true, g_true], axis=1)
    generalist[truth == 0] = generalist[truth == 0][:, ::-1]
    return ensemble, generalist, truth


def test_a_generalist_no_better_than_chance_gets_no_weight() -> None:
    ensemble, generalist, truth = _evidence(400, 1, generalist_accuracy=0.5)
    fitted = fit_mode(ensemble, generalist, truth)
    assert fitted.generalist_weight == 0.0
    assert fitted.validation_accuracy["policy"] == fitted.validation_accuracy["ensemble"]


def test_an_informative_generalist_is_trusted_and_helps() -> None:
    ensemble, generalist, truth = _evidence(400, 2, generalist_accuracy=0.9)
    fitted = fit_mode(ensemble, generalist, truth)
    assert fitted.generalist_weight > 0
    assert fitted.validation_accuracy["policy"] > fitted.validation_accuracy["ensemble"]
    # And the gain holds on cases the fit never saw.
    e2, g2, t2 = _evidence(2000, 3, generalist_accuracy=0.9)
    fused = np.array([fuse(e, g, fitted.generalist_weight) for e, g in zip(e2, g2, strict=True)])
    assert (fused.argmax(1) == t2).mean() > (e2.argmax(1) == t2).mean()


def test_weight_zero_is_the_ensemble_exactly() -> None:
    ensemble, generalist, _ = _evidence(50, 4, 0.9)
    for e, g in zip(ensemble, generalist, strict=True):
        assert fuse(e, g, 0.0) == pytest.approx(e / e.sum())


def test_a_policy_round_trips_and_refuses_what_it_should(tmp_path: Path) -> None:
    ensemble, generalist, truth = _evidence(200, 5, 0.9)
    policy = fit_policy(
        TASK, ensemble, {Mode.GSCO: generalist, Mode.MOED: generalist * 0 + 0.5}, truth,
        model="smollm2",
    )  # fmt: skip
    assert policy.fitted_on == "validation"
    assert policy.n_examples == 200
    assert policy.modes[Mode.MOED].generalist_weight == 0.0  # uninformative: ignored
    assert policy.recommended_mode is Mode.GSCO
    path = tmp_path / "policies.json"
    path.write_text(json.dumps([policy.model_dump(mode="json")]))
    assert load_policies(path) == {"pneumonia-cxr": policy}
    path.write_text(json.dumps([policy.model_dump(mode="json")] * 2))
    with pytest.raises(HubConfigError, match="two policies"):
        load_policies(path)
    document = policy.model_dump(mode="json")
    document["fitted_on"] = "test"  # a policy fitted on test is not a policy
    path.write_text(json.dumps(document))
    with pytest.raises(HubConfigError):
        load_policies(path)
    assert ArbitrationPolicy.parse(policy.model_dump_json()) == policy
