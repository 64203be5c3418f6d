"""Calibrated label scores: contextual calibration removes a label prior the evidence cannot."""

from __future__ import annotations

import asyncio
import math

import pytest

from generalist import (
    ArbitrationRequest,
    CalibrationCache,
    CalibrationMethod,
    LabelCalibration,
    MoedEvidence,
    content_free,
)
from hub._engine import _calibrated_answer
from protocol import Mode, TaskSpec
from tests.generalists import ScriptedGeneralist

TASK = TaskSpec(
    task_id="pneumonia-cxr",
    modality="chest X-ray",
    labels=("normal", "pneumonia"),
    task_type="binary",
)


def _biased(request: ArbitrationRequest) -> dict[str, float]:
    """Like SmolLM2 on the GSCo prompt: "normal" always wins, but evidence moves the scores.

    Measured on the real server: content-free 0.87/0.13; all-pneumonia evidence
    0.79/0.21; all-normal 0.90/0.10.
    """
    votes = [e.label for e in request.moed]
    share = votes.count("pneumonia") / len(votes) if votes else 0.5
    pneumonia = 0.08 + 0.14 * share if votes else 0.13
    return {"normal": 1 - pneumonia, "pneumonia": pneumonia}


def _request(*labels: str) -> ArbitrationRequest:
    return ArbitrationRequest(
        task=TASK, mode=Mode.MOED, moed=tuple(MoedEvidence(label, 0.9) for label in labels)
    )


def test_contextual_calibration_follows_the_evidence_the_raw_answer_ignores() -> None:
    generalist = ScriptedGeneralist(_biased)  # SmolLM2's measured label bias
    cache = CalibrationCache()

    async def answer(*labels: str) -> tuple[str, dict[str, float] | None, LabelCalibration]:
        result = await generalist.arbitrate(_request(*labels))

        async def measure() -> dict[str, float] | None:
            return (
                await generalist.arbitrate(ArbitrationRequest(task=TASK, mode=Mode.MOED))
            ).scores

        calibration = await cache.get((TASK.task_id, "moed", "scripted"), TASK.labels, measure)
        label, scores = _calibrated_answer(result, calibration)
        return label, scores, calibration

    async def run() -> None:
        for labels, expected in (
            (("pneumonia",) * 3, "pneumonia"),
            (("normal",) * 3, "normal"),
            (("pneumonia", "pneumonia", "normal"), "pneumonia"),
            (("normal", "normal", "pneumonia"), "normal"),
        ):
            label, scores, calibration = await answer(*labels)
            assert label == expected, (labels, scores)
            assert scores is not None
            assert math.isclose(sum(scores.values()), 1.0)
            assert calibration.method is CalibrationMethod.CONTEXTUAL

    asyncio.run(run())
    content_free_calls = [c for c in generalist.calls if not c.moed]
    assert len(content_free_calls) == 1  # measured once per (task, template, model)


def test_a_failed_measurement_is_not_kept() -> None:
    cache = CalibrationCache()
    attempts = []

    async def failing() -> dict[str, float] | None:
        attempts.append(1)
        return None

    async def run() -> None:
        first = await cache.get(("t", "gsco", "m"), ("a", "b"), failing)
        assert first.method is CalibrationMethod.NONE
        await cache.get(("t", "gsco", "m"), ("a", "b"), failing)

    asyncio.run(run())
    assert len(attempts) == 2


def test_calibration_arithmetic() -> None:
    calibration = content_free(("a", "b", "c"), {"a": 0.5, "b": 0.3, "c": 0.2})
    # The content-free answer itself calibrates to uniform.
    assert calibration.apply({"a": 0.5, "b": 0.3, "c": 0.2}) == pytest.approx(
        {"a": 1 / 3, "b": 1 / 3, "c": 1 / 3}
    )
    biased = LabelCalibration(("a", "b"), content_free=(0.5, 0.5), bias=(0.0, math.log(3.0)))
    assert biased.method is CalibrationMethod.CONTEXTUAL_BIAS
    assert biased.apply({"a": 0.5, "b": 0.5}) == pytest.approx({"a": 0.25, "b": 0.75})
    # Missing labels and zeros are floored, never a division by zero.
    assert sum(content_free(("a", "b"), {"a": 1.0}).apply({"b": 1.0}).values()) == pytest.approx(1)
    assert content_free(("a", "b"), None).method is CalibrationMethod.NONE
