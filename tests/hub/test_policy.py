"""The arbitration policy: fitted on validation, it never trusts a generalist that does not help."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from hub import (
    HubConfigError,
    fit_label_bias,
    fit_mode,
    fit_policy,
    fuse,
    load_policies,
    vote_scores,
    with_bias,
)
from protocol import SIGNIFICANCE, ArbitrationPolicy, GscoError, Mode, TaskSpec, TaskType, vote

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


def _biased(generalist: np.ndarray, bias: tuple[float, ...]) -> np.ndarray:
    logs = np.log(generalist) + np.asarray(bias)
    p = np.exp(logs - logs.max(axis=1, keepdims=True))
    return p / p.sum(axis=1, keepdims=True)


def test_the_label_bias_undoes_a_label_preference() -> None:
    _, generalist, truth = _evidence(600, 6, generalist_accuracy=0.85)
    leaning = _biased(generalist, (1.5, -1.5))  # a model that prefers the first label
    bias = fit_label_bias(leaning, truth)
    assert bias is not None
    assert bias[0] < -0.8
    assert bias[1] > 0.8
    assert sum(bias) == pytest.approx(0.0, abs=1e-6)
    before = (leaning.argmax(1) == truth).mean()
    after = (with_bias(leaning, bias).argmax(1) == truth).mean()
    assert after > before + 0.1


def test_the_label_bias_does_not_learn_the_validation_prevalence() -> None:
    # An unbiased generalist on a validation split that is 85% one label: balanced, no bias.
    _, generalist, truth = _evidence(3000, 7, generalist_accuracy=0.85)
    keep = np.flatnonzero(truth == 1)[:2000].tolist() + np.flatnonzero(truth == 0)[:350].tolist()
    bias = fit_label_bias(generalist[keep], truth[keep])
    assert bias is not None
    assert max(abs(b) for b in bias) < 0.25
    # One label only: nothing to balance, no bias.
    assert fit_label_bias(generalist[truth == 1], truth[truth == 1]) is None


def test_a_biased_generalist_is_trusted_once_its_bias_is_fitted() -> None:
    ensemble, generalist, truth = _evidence(400, 8, generalist_accuracy=0.9)
    leaning = _biased(generalist, (2.5, -2.5))
    plain = fit_mode(ensemble, leaning, truth, label_bias=False)
    fitted = fit_mode(ensemble, leaning, truth)
    assert plain.label_bias is None
    assert fitted.label_bias is not None
    accuracy = fitted.validation_accuracy
    assert accuracy["generalist (calibrated+bias)"] > accuracy["generalist (calibrated)"]
    assert fitted.validation_accuracy["policy"] > plain.validation_accuracy["policy"]
    # On cases the fit never saw, the fitted bias and weight beat the ensemble.
    e2, g2, t2 = _evidence(2000, 9, generalist_accuracy=0.9)
    g2 = with_bias(_biased(g2, (2.5, -2.5)), fitted.label_bias)
    fused = np.array([fuse(e, g, fitted.generalist_weight) for e, g in zip(e2, g2, strict=True)])
    assert (fused.argmax(1) == t2).mean() > (e2.argmax(1) == t2).mean()


def test_a_policy_refuses_a_bias_of_the_wrong_length() -> None:
    ensemble, generalist, truth = _evidence(200, 10, 0.9)
    policy = fit_policy(TASK, ensemble, {Mode.GSCO: generalist}, truth, model="smollm2")
    document = policy.model_dump(mode="json")
    assert len(document["modes"]["gsco"]["label_bias"]) == 2
    document["modes"]["gsco"]["label_bias"] = [0.1, 0.2, -0.3]
    with pytest.raises(GscoError, match="3 label biases for 2 labels"):
        ArbitrationPolicy.parse(document)
    document["modes"]["gsco"]["label_bias"] = [float("nan"), 0.0]
    with pytest.raises(GscoError):
        ArbitrationPolicy.parse(document)


def _scores(truth: np.ndarray, k: int, accuracy: float, rng: np.random.Generator) -> np.ndarray:
    """``[N, K]`` probabilities whose argmax is the truth with probability ``accuracy``."""
    n = len(truth)
    right = rng.random(n) < accuracy
    top = rng.choice(np.flatnonzero(np.ones(k)), n)  # a random label for the wrong answers
    top = np.where(right, truth, np.where(top == truth, (truth + 1) % k, top))
    scores = rng.dirichlet(np.ones(k), n) * 0.4
    scores[np.arange(n), top] += 0.6
    return np.asarray(scores / scores.sum(axis=1, keepdims=True))


def test_a_generalist_that_does_not_help_is_trusted_at_most_at_the_gate_level() -> None:
    # 150 validation sets of 60 three-label cases; the generalist is confident about labels
    # drawn independently of the truth. Some weight always scores above the ensemble on some
    # sets by luck; the gate must keep trusting such a generalist rare.
    rng = np.random.default_rng(11)
    trusted = 0
    for _ in range(150):
        truth = rng.integers(0, 3, 60)
        ensemble = _scores(truth, 3, 0.5, rng)
        unrelated = _scores(rng.integers(0, 3, 60), 3, 1.0, rng)
        fitted = fit_mode(ensemble, unrelated, truth)
        assert fitted.gate_p_value is not None
        if fitted.generalist_weight > 0:
            trusted += 1
            assert fitted.gate_p_value <= SIGNIFICANCE
        lucky = max(fitted.weights_tried.values()) > fitted.validation_accuracy["ensemble"]
        if fitted.generalist_weight == 0 and lucky:
            assert fitted.gate_p_value > SIGNIFICANCE  # why the luckiest weight was refused
    assert trusted / 150 <= SIGNIFICANCE


def test_the_gate_p_value_is_recorded_with_the_policy() -> None:
    ensemble, generalist, truth = _evidence(200, 12, generalist_accuracy=0.9)
    policy = fit_policy(TASK, ensemble, {Mode.GSCO: generalist}, truth, model="smollm2")
    fitted = policy.modes[Mode.GSCO]
    assert fitted.generalist_weight > 0
    assert fitted.gate_p_value is not None
    assert fitted.gate_p_value <= SIGNIFICANCE
    assert ArbitrationPolicy.parse(policy.model_dump_json()) == policy
    # A policy written before the p-value was recorded still loads.
    document = policy.model_dump(mode="json")
    del document["modes"]["gsco"]["gate_p_value"]
    assert ArbitrationPolicy.parse(document).modes[Mode.GSCO].gate_p_value is None


def test_vote_scores_decide_as_the_vote_and_rank_by_the_mean() -> None:
    rng = np.random.default_rng(13)
    for _ in range(500):
        n, k = int(rng.integers(1, 7)), int(rng.integers(2, 6))
        probabilities = rng.dirichlet(np.ones(k) * rng.choice([0.3, 1.0, 3.0]), size=n)
        scores = vote_scores(probabilities)
        assert scores.sum() == pytest.approx(1.0)
        decided = probabilities.argmax(axis=1).tolist()
        expected = vote(decided, k, TaskType.MULTICLASS, probabilities.mean(axis=0))
        assert int(scores.argmax()) == expected
    # Many cases at once, as the fit uses it: [n, N, K] -> [N, K].
    many = rng.dirichlet(np.ones(3), size=(4, 10))
    assert np.allclose(vote_scores(many), np.stack([vote_scores(many[:, i]) for i in range(10)]))
    # One confident specialist does not outvote two that lean the other way.
    probabilities = np.array([[0.45, 0.55], [0.45, 0.55], [0.99, 0.01]])
    assert probabilities.mean(axis=0).argmax() == 0  # the mean follows the confident one
    assert vote_scores(probabilities).argmax() == 1


def _sites(truth: np.ndarray, rng: np.random.Generator, confident_wrong: float) -> np.ndarray:
    """Three sites' [3, N, 2] probabilities: two lean right, one is confidently wrong at times."""
    n = len(truth)
    lean = np.where(truth == 1, 0.6, 0.4)[None, :] + rng.normal(0, 0.02, (2, n))
    third = np.where(rng.random(n) < confident_wrong, 1 - truth, truth).astype(float)
    third = np.clip(third, 0.01, 0.99)
    p1 = np.concatenate([lean, third[None, :]])
    return np.stack([1 - p1, p1], axis=-1)


def test_the_base_is_the_vote_unless_the_mean_is_better_on_validation() -> None:
    rng = np.random.default_rng(14)
    truth = rng.integers(0, 2, 300)
    unrelated = _scores(rng.integers(0, 2, 300), 2, 1.0, rng)
    # A site that is confidently wrong on 20% of cases drags the mean; the vote holds.
    sites = _sites(truth, rng, confident_wrong=0.2)
    ensemble, voting = sites.mean(axis=0), vote_scores(sites)
    assert (voting.argmax(1) == truth).mean() > (ensemble.argmax(1) == truth).mean()
    fitted = fit_mode(ensemble, unrelated, truth, voting=voting)
    assert fitted.base == "voting"
    assert fitted.generalist_weight == 0
    assert fitted.validation_accuracy["policy"] == fitted.validation_accuracy["voting"]
    # Where the two never disagree, validation cannot tell them apart: the vote.
    agreeing = np.stack([ensemble, ensemble, ensemble])
    fitted = fit_mode(ensemble, unrelated, truth, voting=vote_scores(agreeing))
    assert fitted.base == "voting"
    # A mean that is right more often than the vote is the base.
    better = np.eye(2)[truth] * 0.8 + 0.1
    erring = np.eye(2)[np.where(rng.random(300) < 0.1, 1 - truth, truth)] * 0.8 + 0.1
    fitted = fit_mode(better, unrelated, truth, voting=erring)
    assert fitted.base == "ensemble"
    assert fitted.validation_accuracy["policy"] == 1.0
    # Without a vote (ordinal tasks), the ensemble.
    assert fit_mode(ensemble, unrelated, truth).base == "ensemble"


def test_a_generalist_that_only_repeats_the_vote_earns_nothing_against_it() -> None:
    rng = np.random.default_rng(15)
    truth = rng.integers(0, 2, 300)
    sites = _sites(truth, rng, confident_wrong=0.2)
    ensemble, voting = sites.mean(axis=0), vote_scores(sites)
    echo = 0.1 + 0.8 * np.eye(2)[voting.argmax(1)]  # confident in whatever the vote says
    against_ensemble = fit_mode(ensemble, echo, truth)
    assert against_ensemble.generalist_weight > 0  # looks helpful against the mean
    against_vote = fit_mode(ensemble, echo, truth, voting=voting)
    assert against_vote.base == "voting"
    assert against_vote.generalist_weight == 0  # adds nothing to the vote


def test_fit_policy_takes_the_vote_from_the_specialists_except_on_ordinal_tasks() -> None:
    rng = np.random.default_rng(16)
    truth = rng.integers(0, 2, 200)
    sites = _sites(truth, rng, confident_wrong=0.2)
    noise = _scores(rng.integers(0, 2, 200), 2, 1.0, rng)
    policy = fit_policy(
        TASK, sites.mean(axis=0), {Mode.GSCO: noise}, truth, model="m", specialists=sites
    )
    assert policy.modes[Mode.GSCO].base == "voting"
    graded = TASK.model_copy(update={"task_type": TaskType.ORDINAL})
    policy = fit_policy(
        graded, sites.mean(axis=0), {Mode.GSCO: noise}, truth, model="m", specialists=sites
    )
    assert policy.modes[Mode.GSCO].base == "ensemble"
    assert "voting" not in policy.modes[Mode.GSCO].validation_accuracy
