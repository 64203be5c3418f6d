"""Method scores with 95% bootstrap confidence intervals (percentile method)."""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from protocol import mean_absolute_error, quadratic_weighted_kappa

__all__ = ["Interval", "MethodScore", "score_method"]


@dataclass(frozen=True)
class Interval:
    """A point estimate and its 95% bootstrap interval."""

    value: float
    low: float
    high: float

    def __str__(self) -> str:
        return f"{self.value:.3f} [{self.low:.3f}, {self.high:.3f}]"


@dataclass(frozen=True)
class MethodScore:
    """How one method did on the test images it answered."""

    method: str
    n: int
    accuracy: Interval
    macro_f1: Interval
    macro_auc: Interval | None  # None when the method gives no scores
    quadratic_weighted_kappa: Interval | None = None  # ordinal tasks only
    mean_absolute_error: Interval | None = None  # ordinal tasks only, in grades


def _accuracy(y: NDArray[np.int64], p: NDArray[np.int64], _: object) -> float:
    return float(np.mean(y == p))


def _macro_f1(y: NDArray[np.int64], p: NDArray[np.int64], k: object) -> float:
    assert isinstance(k, int)
    f1s = []
    for label in range(k):
        tp = np.sum((p == label) & (y == label))
        fp = np.sum((p == label) & (y != label))
        fn = np.sum((p != label) & (y == label))
        f1s.append(2 * tp / max(2 * tp + fp + fn, 1))
    return float(np.mean(f1s))


def _macro_auc(y: NDArray[np.int64], s: NDArray[np.float64], k: int) -> float | None:
    from sklearn.metrics import roc_auc_score

    if len(np.unique(y)) < 2:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            if k == 2:
                return float(roc_auc_score(y, s[:, 1]))
            present = np.unique(y)
            aucs = [roc_auc_score(y == c, s[:, c]) for c in present]
            return float(np.mean(aucs))
        except ValueError:
            return None


def score_method(
    method: str,
    labels: NDArray[np.int64],
    predicted: NDArray[np.int64],
    scores: NDArray[np.float64] | None,
    num_classes: int,
    *,
    resamples: int = 1000,
    seed: int = 0,
    ordinal: bool = False,
) -> MethodScore:
    """ACC, macro-F1 and (with scores) macro-AUC, each with a 95% bootstrap interval.

    ``ordinal`` adds quadratic weighted kappa and the mean absolute error in grades.
    """
    labels = np.asarray(labels, dtype=np.int64)
    predicted = np.asarray(predicted, dtype=np.int64)
    rng = np.random.default_rng(seed)
    n = len(labels)
    draws = rng.integers(0, n, size=(resamples, n)) if n else np.zeros((0, 0), np.int64)

    def interval(values: list[float], point: float) -> Interval:
        if not values:
            return Interval(point, point, point)
        low, high = np.percentile(values, [2.5, 97.5])
        return Interval(point, float(low), float(high))

    accuracy = interval(
        [_accuracy(labels[d], predicted[d], None) for d in draws],
        _accuracy(labels, predicted, None),
    )
    macro_f1 = interval(
        [_macro_f1(labels[d], predicted[d], num_classes) for d in draws],
        _macro_f1(labels, predicted, num_classes),
    )
    macro_auc = None
    if scores is not None:
        point = _macro_auc(labels, scores, num_classes)
        if point is not None:
            samples = [_macro_auc(labels[d], scores[d], num_classes) for d in draws]
            macro_auc = interval([s for s in samples if s is not None], point)
    qwk = mae = None
    if ordinal:
        qwk = interval(
            [quadratic_weighted_kappa(labels[d], predicted[d], num_classes) for d in draws],
            quadratic_weighted_kappa(labels, predicted, num_classes),
        )
        mae = interval(
            [mean_absolute_error(labels[d], predicted[d]) for d in draws],
            mean_absolute_error(labels, predicted),
        )
    return MethodScore(method, n, accuracy, macro_f1, macro_auc, qwk, mae)
