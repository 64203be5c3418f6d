"""Held-out metrics and temperature scaling (numpy in, numbers out)."""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from scipy.optimize import minimize_scalar
from sklearn.metrics import confusion_matrix, f1_score, recall_score, roc_auc_score

from protocol import (
    TaskType,
    calibrated_softmax,
    decide,
    mean_absolute_error,
    quadratic_weighted_kappa,
)

__all__ = [
    "TEMPERATURE_RANGE",
    "Evaluation",
    "evaluate",
    "expected_calibration_error",
    "fit_temperature",
    "temperature_warning",
]

#: The temperatures temperature scaling searches (log-uniformly).
TEMPERATURE_RANGE = (0.05, 100.0)


def _nll(logits: NDArray[np.floating], labels: NDArray[np.int64], temperature: float) -> float:
    probs = calibrated_softmax(logits, temperature)  # the hub's, from protocol
    return float(-np.mean(np.log(np.clip(probs[np.arange(len(labels)), labels], 1e-12, None))))


def fit_temperature(logits: NDArray[np.floating], labels: NDArray[np.int64]) -> float:
    """The temperature T > 0 minimising validation NLL of ``softmax(logits / T)``."""
    result = minimize_scalar(
        lambda log_t: _nll(logits, labels, math.exp(log_t)),
        bounds=(math.log(TEMPERATURE_RANGE[0]), math.log(TEMPERATURE_RANGE[1])),
        method="bounded",
        options={"xatol": 1e-4},
    )
    return float(math.exp(result.x))


def temperature_warning(temperature: float) -> str | None:
    """Why a fitted temperature should not be trusted, if it stopped at the search's bound."""
    low, high = TEMPERATURE_RANGE
    if temperature >= high * 0.99:
        return (
            f"temperature scaling stopped at its upper bound ({high:g}): the model's validation "
            "answers are close to chance, so its probabilities were flattened as far as allowed; "
            "do not trust this specialist's confidence (more data or epochs may help)"
        )
    if temperature <= low * 1.01:
        return (
            f"temperature scaling stopped at its lower bound ({low:g}): the validation logits "
            "barely differ, so they were sharpened as far as allowed"
        )
    return None


def expected_calibration_error(
    probs: NDArray[np.floating], labels: NDArray[np.int64], bins: int = 15
) -> float:
    """ECE of the top-1 prediction over ``bins`` equal-width confidence bins."""
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == labels
    edges = np.linspace(0.0, 1.0, bins + 1)
    ece = 0.0
    for low, high in itertools.pairwise(edges):
        in_bin = (confidence > low) & (confidence <= high)
        if in_bin.any():
            ece += in_bin.mean() * abs(correct[in_bin].mean() - confidence[in_bin].mean())
    return float(ece)


@dataclass(frozen=True)
class Evaluation:
    """Metrics of calibrated probabilities against true labels."""

    n: int
    accuracy: float
    macro_auc: float | None
    macro_f1: float
    ece: float
    per_class_recall: dict[str, float]
    confusion: list[list[int]]  # rows: true label, columns: predicted
    quadratic_weighted_kappa: float | None = None  # ordinal tasks only
    mean_absolute_error: float | None = None  # ordinal tasks only, in grades

    def as_dict(self) -> dict[str, object]:
        """A JSON-ready dict (the ordinal metrics only where there are some)."""
        ordinal = (
            {
                "quadratic_weighted_kappa": self.quadratic_weighted_kappa,
                "mean_absolute_error": self.mean_absolute_error,
            }
            if self.quadratic_weighted_kappa is not None
            else {}
        )
        return {
            **ordinal,
            "n": self.n,
            "accuracy": self.accuracy,
            "macro_auc": self.macro_auc,
            "macro_f1": self.macro_f1,
            "ece": self.ece,
            "per_class_recall": self.per_class_recall,
            "confusion_matrix": self.confusion,
        }


def evaluate(
    probs: NDArray[np.floating],
    labels: NDArray[np.int64],
    label_names: tuple[str, ...],
    task_type: TaskType = TaskType.MULTICLASS,
) -> Evaluation:
    """ACC, macro-AUC (one-vs-rest; None if a class is absent), macro-F1, recall, ECE, confusion.

    The predicted label is the one the hub answers (:func:`protocol.decide`:
    the median grade for ordinal tasks, which also get quadratic weighted kappa
    and the mean absolute error in grades).
    """
    k = len(label_names)
    predicted = decide(probs, task_type)
    qwk = mae = None
    if task_type is TaskType.ORDINAL:
        qwk = quadratic_weighted_kappa(labels, predicted, k)
        mae = mean_absolute_error(labels, predicted)
    present = np.unique(labels)
    macro_auc: float | None = None
    if len(present) == k:
        if k == 2:
            macro_auc = float(roc_auc_score(labels, probs[:, 1]))
        else:
            macro_auc = float(
                roc_auc_score(
                    labels, probs, multi_class="ovr", average="macro", labels=list(range(k))
                )
            )
    recall = recall_score(labels, predicted, labels=list(range(k)), average=None, zero_division=0)
    return Evaluation(
        n=len(labels),
        accuracy=float((predicted == labels).mean()),
        macro_auc=macro_auc,
        macro_f1=float(
            f1_score(labels, predicted, labels=list(range(k)), average="macro", zero_division=0)
        ),
        ece=expected_calibration_error(probs, labels),
        per_class_recall={name: float(r) for name, r in zip(label_names, recall, strict=True)},
        confusion=confusion_matrix(labels, predicted, labels=list(range(k))).tolist(),
        quadratic_weighted_kappa=qwk,
        mean_absolute_error=mae,
    )
