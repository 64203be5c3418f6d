"""Calibrated label scores: the generalist's label probabilities, corrected for its label bias.

A language model asked to choose among options prefers some of them whatever
the evidence (the first option, a frequent token): the CPU stand-in answers
"normal" for every image although its label probabilities do follow the
evidence. Contextual calibration (Zhao et al., "Calibrate before use", 2021)
removes that prior without labels: the model is asked the same question with
the evidence removed (a content-free input), and its answer ``p_cf`` is the
bias; every real answer ``p`` is then rescaled, ``q ∝ p / p_cf``. Where
validation evidence exists, a per-label log bias ``b`` fitted on it refines
that: ``q ∝ p / p_cf · exp(b)``.

Calibration is per (task, prompt template, model or adapter): the cache keys
on all three. What was applied travels with every answer.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum

__all__ = ["CalibrationCache", "CalibrationMethod", "LabelCalibration", "content_free"]

_FLOOR = 1e-6  # no label's probability is taken as exactly 0 (log and division)


class CalibrationMethod(StrEnum):
    """Which correction a score went through."""

    NONE = "none"  # raw label probabilities
    CONTEXTUAL = "contextual"  # divided by the content-free answer (no labels needed)
    CONTEXTUAL_BIAS = "contextual+bias"  # and a per-label bias fitted on validation


@dataclass(frozen=True)
class LabelCalibration:
    """One (task, template, model) calibration, in the task's label order."""

    labels: tuple[str, ...]
    content_free: tuple[float, ...] | None = None  # p_cf per label; None: not calibrated
    bias: tuple[float, ...] | None = None  # log bias per label, fitted on validation

    @property
    def method(self) -> CalibrationMethod:
        """What :meth:`apply` does."""
        if self.content_free is None:
            return CalibrationMethod.NONE
        return CalibrationMethod.CONTEXTUAL_BIAS if self.bias else CalibrationMethod.CONTEXTUAL

    def log_scores(self, scores: Mapping[str, float]) -> list[float]:
        """Calibrated log-scores (unnormalised) in label order."""
        values = [math.log(max(float(scores.get(label, 0.0)), _FLOOR)) for label in self.labels]
        if self.content_free is not None:
            values = [
                v - math.log(max(c, _FLOOR)) for v, c in zip(values, self.content_free, strict=True)
            ]
        if self.bias is not None:
            values = [v + b for v, b in zip(values, self.bias, strict=True)]
        return values

    def apply(self, scores: Mapping[str, float]) -> dict[str, float]:
        """Calibrated probabilities per label (they sum to 1)."""
        logs = self.log_scores(scores)
        top = max(logs)
        weights = [math.exp(v - top) for v in logs]
        total = sum(weights)
        return {label: w / total for label, w in zip(self.labels, weights, strict=True)}


def content_free(labels: Sequence[str], scores: Mapping[str, float] | None) -> LabelCalibration:
    """A contextual calibration from the model's answer to a content-free input."""
    if not scores:
        return LabelCalibration(tuple(labels))
    total = sum(max(float(scores.get(label, 0.0)), _FLOOR) for label in labels)
    return LabelCalibration(
        tuple(labels),
        content_free=tuple(max(float(scores.get(label, 0.0)), _FLOOR) / total for label in labels),
    )


class CalibrationCache:
    """Contextual calibrations, each measured once per (task, template, model) and kept.

    ``measure`` asks the generalist the content-free question and returns its
    label scores (or ``None`` when it gave none). A failed measurement is not
    kept: the next request tries again, and meanwhile answers are uncalibrated.
    """

    def __init__(self) -> None:
        self._known: dict[tuple[str, str, str], LabelCalibration] = {}
        self._locks: dict[tuple[str, str, str], asyncio.Lock] = {}

    def known(self) -> dict[tuple[str, str, str], LabelCalibration]:
        """Every calibration measured so far."""
        return dict(self._known)

    async def get(
        self,
        key: tuple[str, str, str],
        labels: Sequence[str],
        measure: Callable[[], Awaitable[Mapping[str, float] | None]],
    ) -> LabelCalibration:
        """The calibration for ``key`` (task, template, model), measured on first use."""
        found = self._known.get(key)
        if found is not None:
            return found
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            found = self._known.get(key)
            if found is not None:
                return found
            scores = await measure()
            calibration = content_free(labels, scores)
            if calibration.content_free is not None:
                self._known[key] = calibration
            return calibration
