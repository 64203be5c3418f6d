"""Label scores that do not follow the order the options are listed in.

Language models prefer options by position (the first, or the last, whatever
they say: Zheng et al., "Large language models are not robust multiple choice
selectors", ICLR 2024); an adapter tuned on few examples can learn where the
answer stands instead of what it says. :class:`ReversedOrderAveraging` asks
the same question twice, with the options as given and reversed, and
averages each label's log-probability over the two. Reversing the options of
the question then gives the same two requests, so the averaged scores are
exactly invariant to it, for any number of labels; a preference for a
position that grows or shrinks steadily along the list (primacy, recency)
cancels. The two requests go out together, so a batching server (vLLM)
answers them at nearly the latency of one.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import time
from collections.abc import Sequence

import numpy as np

from generalist._backend import ArbitrationRequest, ArbitrationResult, GeneralistBackend
from generalist._calibration import _FLOOR
from protocol import calibrated_softmax

__all__ = ["ReversedOrderAveraging", "average_scores"]


def average_scores(
    labels: Sequence[str], answers: Sequence[dict[str, float] | None]
) -> dict[str, float] | None:
    """The normalised geometric mean, per label, of the answers that have scores.

    ``None`` when none has.
    """
    scored = [a for a in answers if a]
    if not scored:
        return None
    logs = [
        sum(math.log(max(float(a.get(label, 0.0)), _FLOOR)) for a in scored) / len(scored)
        for label in labels
    ]
    averaged = calibrated_softmax(np.array([logs]))[0]
    return {label: float(p) for label, p in zip(labels, averaged, strict=True)}


class ReversedOrderAveraging:
    """A backend whose label scores average the options as given and reversed.

    The answer's generated label, prompt and raw text are those of the order
    as given (what the model says when asked once); its ``scores`` are the
    average, and ``option_orders`` says over how many orders.
    """

    option_orders = 2

    def __init__(self, backend: GeneralistBackend) -> None:
        self._backend = backend
        self.model = backend.model
        self.sees_images = backend.sees_images

    async def arbitrate(self, request: ArbitrationRequest) -> ArbitrationResult:
        """Asks in both orders at once; fails as the wrapped backend does if either fails."""
        task = request.task
        flipped = task.model_copy(update={"labels": tuple(reversed(task.labels))})
        started = time.perf_counter()
        given, reversed_ = await asyncio.gather(
            self._backend.arbitrate(request),
            self._backend.arbitrate(dataclasses.replace(request, task=flipped)),
        )
        tokens = [r.prompt_tokens for r in (given, reversed_)]
        completion = [r.completion_tokens for r in (given, reversed_)]
        return dataclasses.replace(
            given,
            scores=average_scores(task.labels, [given.scores, reversed_.scores]),
            prompt_tokens=sum(t for t in tokens if t is not None) if any(tokens) else None,
            completion_tokens=(
                sum(t for t in completion if t is not None) if any(completion) else None
            ),
            latency_ms=(time.perf_counter() - started) * 1000,
            option_orders=self.option_orders,
        )

    async def aclose(self) -> None:
        """Closes the wrapped backend."""
        await self._backend.aclose()
