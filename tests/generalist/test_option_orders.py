"""Label scores averaged over the options as given and reversed do not follow option order."""

from __future__ import annotations

import asyncio
import math

import pytest

from generalist import ArbitrationRequest, ReversedOrderAveraging, average_scores
from protocol import Mode, TaskSpec
from tests.generalists import ScriptedGeneralist

TASK = TaskSpec(
    task_id="retina", modality="fundus photograph", labels=("grade 0", "grade 1", "grade 2"),
    task_type="ordinal",
)  # fmt: skip
EVIDENCE = {"grade 0": 0.2, "grade 1": 0.5, "grade 2": 0.3}


def _position_biased(request: ArbitrationRequest) -> dict[str, float]:
    """What the evidence says, times a preference that falls steadily along the options."""
    order = request.task.labels
    raw = {label: EVIDENCE[label] * math.exp(-1.5 * order.index(label)) for label in order}
    total = sum(raw.values())
    return {label: value / total for label, value in raw.items()}


def _ask(backend: object, labels: tuple[str, ...]) -> dict[str, float]:
    task = TASK.model_copy(update={"labels": labels})
    result = asyncio.run(backend.arbitrate(ArbitrationRequest(task, Mode.GSCO)))  # type: ignore[attr-defined]
    assert result.scores is not None
    return result.scores


def test_a_position_bias_decides_alone_and_not_once_averaged() -> None:
    plain = ScriptedGeneralist(_position_biased)
    forward = _ask(plain, TASK.labels)
    backward = _ask(plain, tuple(reversed(TASK.labels)))
    assert max(forward, key=forward.__getitem__) == "grade 0"  # the first option wins
    assert max(backward, key=backward.__getitem__) == "grade 2"  # reversed, the other end

    averaged = ReversedOrderAveraging(ScriptedGeneralist(_position_biased))
    forward = _ask(averaged, TASK.labels)
    backward = _ask(averaged, tuple(reversed(TASK.labels)))
    assert forward == pytest.approx(backward, abs=1e-12)  # invariant to reversal, exactly
    assert max(forward, key=forward.__getitem__) == "grade 1"  # what the evidence says
    assert forward == pytest.approx(EVIDENCE, abs=1e-9)  # a linear bias cancels


def test_the_answer_is_the_order_as_given_and_says_it_was_averaged() -> None:
    inner = ScriptedGeneralist(_position_biased, label="grade 0", model="m")
    backend = ReversedOrderAveraging(inner)
    result = asyncio.run(backend.arbitrate(ArbitrationRequest(TASK, Mode.GSCO)))
    assert result.option_orders == 2
    assert result.label == "grade 0"
    shown = sorted(tuple(r.task.labels) for r in inner.calls)
    assert shown == sorted([TASK.labels, tuple(reversed(TASK.labels))])
    assert backend.model == "m"
    assert not backend.sees_images


def test_average_scores() -> None:
    labels = ("a", "b")
    assert average_scores(labels, [None, None]) is None
    assert average_scores(labels, [{"a": 0.8, "b": 0.2}, None]) == pytest.approx(
        {"a": 0.8, "b": 0.2}
    )
    # The geometric mean: 0.9 and 0.1 for "a" average to even odds.
    assert average_scores(labels, [{"a": 0.9, "b": 0.1}, {"a": 0.1, "b": 0.9}]) == pytest.approx(
        {"a": 0.5, "b": 0.5}
    )
    # A zero is floored, not -inf.
    floored = average_scores(labels, [{"a": 1.0, "b": 0.0}, {"a": 0.5, "b": 0.5}])
    assert floored is not None
    assert 0.99 < floored["a"] < 1.0
