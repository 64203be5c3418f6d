"""Held-out metrics and temperature scaling (numpy in, numbers out)."""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from scipy.optimize import minimize_scalar
from sklearn.metrics import confusion_matrix, f1_score, recall_score, roc_auc_score

from protocol import calibrated_softmax

__all__ = ["Evaluation", "evaluate", "expected_calibration_error", "fit_temperature"]


def _nll(logits: NDArray[np.floating], labels: NDArray[np.int64], temperature: float) -> float:
    probs = calibrated_softmax(logits, temperature)  # the hub's, from protocol
    return float(-np.mean(np.log(np.clip(probs[np.arange(len(labels)), labels], 1e-12, None))))


def fit_temperature(logits: NDArray[np.floating], labels: NDArray[np.int64]) -> float:
    """The temperature T > 0 minimising validation NLL of ``softmax(logits / T)``."""
    result = minimize_scalar(
        lambda log_t: _nll(logits, labels, math.exp(log_t)),
        bounds=(math.log(0.05), math.log(20.0)),
        method="bounded",
        options={"xatol": 1e-4},
    )
    return float(math.exp(result.x))


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

    def as_dict(self) -> dict[str, object]:
        """A JSON-ready dict."""
        return {
            "n": self.n,
            "accuracy": self.accuracy,
            "macro_auc": self.macro_auc,
            "macro_f1": self.macro_f1,
            "ece": self.ece,
            "per_class_recall": self.per_class_recall,
            "confusion_matrix": self.confusion,
        }


def evaluate(
    probs: NDArray[np.floating], labels: NDArray[np.int64], label_names: tuple[str, ...]
) -> Evaluation:
    """ACC, macro-AUC (one-vs-rest; None if a class is absent), macro-F1, recall, ECE, confusion."""
    k = len(label_names)
    predicted = probs.argmax(axis=1)
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
    )
