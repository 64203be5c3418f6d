"""Which label a probability distribution stands for, and how votes combine: one rule per task type.

The site agent scores its specialist with these rules and the hub answers with
them, so a card's held-out metrics describe the answers the hub gives.

- **binary, multiclass**: the most probable label; a vote is the plurality.
- **ordinal** (labels ordered, e.g. severity grades): the median of the
  distribution, the smallest grade whose cumulative probability reaches 0.5,
  which minimises the expected absolute error in grades. The most probable
  grade does not: 0.40 / 0.15 / 0 / 0.45 is grade 4 by the largest probability
  but grade 2 by the median, and 2 is off by 1.3 grades on average against 1.5
  for 4. A vote is the median of the specialists' grades, the lower one when
  their number is even, so that one outlying specialist cannot move it far.

And the two metrics that say how far off an ordinal answer is: quadratic
weighted kappa (Cohen's kappa with squared-distance disagreement weights,
agreement beyond chance: 1 perfect, 0 chance) and the mean absolute error in
grades.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray

from protocol._task import TaskType

__all__ = ["decide", "mean_absolute_error", "quadratic_weighted_kappa", "vote"]


def decide(probs: NDArray[np.floating], task_type: TaskType) -> NDArray[np.int64]:
    """The label index each row of ``probs`` (``[N, K]``) stands for under ``task_type``."""
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2 or probs.shape[1] < 2:
        raise ValueError(f"probabilities must be [N, K>=2], got shape {probs.shape}")
    if task_type is TaskType.ORDINAL:
        cumulative = np.cumsum(probs, axis=1)
        cumulative /= cumulative[:, -1:]  # a row that sums to 1 - eps still ends at 1
        chosen = np.argmax(cumulative >= 0.5 - 1e-12, axis=1)
    else:
        chosen = np.argmax(probs, axis=1)
    out: NDArray[np.int64] = chosen.astype(np.int64)
    return out


def vote(
    predicted: Sequence[int], num_classes: int, task_type: TaskType, tie_break: NDArray[np.floating]
) -> int:
    """Combines the specialists' label indices into one.

    ``tie_break`` (``[K]``, usually the ensemble's mean probabilities) settles
    a tied plurality; the ordinal median needs no tie break.

    Raises:
        ValueError: no predictions, or an index outside ``0..num_classes-1``.
    """
    if not predicted:
        raise ValueError("a vote needs at least one prediction")
    if any(not 0 <= p < num_classes for p in predicted):
        raise ValueError(f"a predicted index is outside 0..{num_classes - 1}")
    if task_type is TaskType.ORDINAL:
        ordered = sorted(predicted)
        return int(ordered[(len(ordered) - 1) // 2])
    counts = np.bincount(np.asarray(predicted), minlength=num_classes)
    tied = np.flatnonzero(counts == counts.max())
    return int(tied[np.argmax(np.asarray(tie_break, dtype=np.float64)[tied])])


def quadratic_weighted_kappa(
    truth: NDArray[np.integer], predicted: NDArray[np.integer], num_classes: int
) -> float:
    """Cohen's kappa with weights ``(i - j)^2 / (K - 1)^2``; 0.0 where it is undefined."""
    truth = np.asarray(truth, dtype=np.int64)
    predicted = np.asarray(predicted, dtype=np.int64)
    if len(truth) == 0:
        return 0.0
    k = num_classes
    observed = np.zeros((k, k), dtype=np.float64)
    np.add.at(observed, (truth, predicted), 1.0)
    expected = np.outer(observed.sum(axis=1), observed.sum(axis=0)) / len(truth)
    grid = np.arange(k, dtype=np.float64)
    weights = (grid[:, None] - grid[None, :]) ** 2 / max((k - 1) ** 2, 1)
    chance = float((weights * expected).sum())
    if chance == 0.0:  # one class on both sides: agreement beyond chance is undefined
        return 1.0 if np.array_equal(truth, predicted) else 0.0
    return float(1.0 - (weights * observed).sum() / chance)


def mean_absolute_error(truth: NDArray[np.integer], predicted: NDArray[np.integer]) -> float:
    """The mean distance in grades between ``predicted`` and ``truth``."""
    truth = np.asarray(truth, dtype=np.int64)
    if len(truth) == 0:
        return 0.0
    return float(np.mean(np.abs(np.asarray(predicted, dtype=np.int64) - truth)))
