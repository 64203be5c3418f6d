"""Calibration and metrics."""

from __future__ import annotations

import numpy as np

from protocol import calibrated_softmax as softmax
from site_agent.train import evaluate, expected_calibration_error, fit_temperature


def test_temperature_recovers_the_true_one() -> None:
    rng = np.random.default_rng(0)
    true_logits = rng.normal(size=(4000, 3)) * 2
    labels = np.array([rng.choice(3, p=p) for p in softmax(true_logits)])
    assert abs(fit_temperature(true_logits * 3.0, labels) - 3.0) < 0.3


def test_ece_of_a_perfectly_confident_correct_model_is_zero() -> None:
    probs = np.eye(3)[[0, 1, 2, 1]]
    assert expected_calibration_error(probs, np.array([0, 1, 2, 1])) == 0.0


def test_evaluate_binary() -> None:
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]])
    result = evaluate(probs, np.array([0, 1, 1, 1]), ("normal", "pneumonia"))
    assert result.accuracy == 0.75
    assert result.macro_auc == 1.0  # the ranking is perfect even though one is misclassified
    assert result.per_class_recall == {"normal": 1.0, "pneumonia": 2 / 3}
    assert result.confusion == [[1, 0], [1, 2]]


def test_auc_is_none_when_a_class_is_absent() -> None:
    probs = np.array([[0.9, 0.1], [0.8, 0.2]])
    assert evaluate(probs, np.array([0, 0]), ("a", "b")).macro_auc is None
