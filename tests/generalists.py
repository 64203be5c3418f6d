"""A scripted generalist: the fast stand-in beside the tests with the real vLLM server.

:class:`ScriptedGeneralist` is a :class:`generalist.GeneralistBackend` whose
label scores are a function of the request. Engine and calibration tests use
it where the real server cannot be made to answer as a case needs (a
content-free question that fails while real ones succeed, no label scores, a
fixed label bias); the real server is tested end to end in
``tests/hub/test_end_to_end.py`` and ``tests/hub/test_adapters.py``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from generalist import ArbitrationRequest, ArbitrationResult

__all__ = ["ScriptedGeneralist", "is_content_free"]

Scores = dict[str, float] | None


def is_content_free(request: ArbitrationRequest) -> bool:
    """Whether ``request`` is the content-free question (no evidence, no image)."""
    return not request.moed and not request.rad and request.image_png is None


class ScriptedGeneralist:
    """Answers ``label`` with the label scores ``score(request)`` gives (or raises)."""

    sees_images = False

    def __init__(
        self,
        score: Callable[[ArbitrationRequest], Scores],
        *,
        label: str = "normal",
        model: str = "scripted",
        delay_s: float = 0.0,
    ) -> None:
        self.score = score
        self.label = label
        self.model = model
        self.delay_s = delay_s  # how long each answer takes
        self.calls: list[ArbitrationRequest] = []

    async def arbitrate(self, request: ArbitrationRequest) -> ArbitrationResult:
        """The scripted answer; whatever ``score`` raises (a GeneralistError) propagates."""
        self.calls.append(request)
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        scores = self.score(request)
        return ArbitrationResult(
            label=self.label,
            scores=scores,
            raw_text=self.label,
            prompt="(scripted)",
            model=request.adapter or self.model,
            saw_image=False,
            prompt_tokens=None,
            completion_tokens=None,
            latency_ms=1.0,
        )

    async def aclose(self) -> None:
        """Nothing to release."""
