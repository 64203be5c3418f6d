"""Generalist backends: the interface, and the OpenAI-compatible one that talks to vLLM."""

from __future__ import annotations

import asyncio
import base64
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import httpx

from generalist._parse import parse_answer
from generalist._prompts import SYSTEM, MoedEvidence, RadEvidence, render_prompt
from generalist.errors import (
    AdapterLoadError,
    GeneralistResponseError,
    GeneralistUnavailableError,
)
from protocol import Mode, TaskSpec

__all__ = [
    "ArbitrationRequest",
    "ArbitrationResult",
    "GeneralistBackend",
    "OpenAICompatibleBackend",
    "OpenAIConfig",
    "label_scores",
]


@dataclass(frozen=True)
class ArbitrationRequest:
    """What the generalist is asked: the task, the evidence, and the image if it can see."""

    task: TaskSpec
    mode: Mode = Mode.GSCO
    moed: tuple[MoedEvidence, ...] = ()
    rad: tuple[RadEvidence, ...] = ()
    image_png: bytes | None = field(default=None, repr=False)
    adapter: str | None = None  # the LoRA adapter to answer with (a name the server holds)


@dataclass(frozen=True)
class ArbitrationResult:
    """The generalist's decision and how it was reached."""

    label: str
    scores: dict[str, float] | None  # per label, from logprobs, when the server returns them
    raw_text: str
    prompt: str
    model: str
    saw_image: bool
    prompt_tokens: int | None
    completion_tokens: int | None
    latency_ms: float
    option_orders: int = 1  # over how many option orders ``scores`` are averaged


class GeneralistBackend(Protocol):
    """A generalist model. ``sees_images`` says whether it receives the image.

    ``model`` is the base model; a request may name a LoRA adapter the server
    holds (``ArbitrationRequest.adapter``), and the result's ``model`` says
    which answered.
    """

    model: str
    sees_images: bool

    async def arbitrate(self, request: ArbitrationRequest) -> ArbitrationResult:
        """Decides the label."""

    async def aclose(self) -> None:
        """Releases connections."""


@dataclass(frozen=True)
class OpenAIConfig:
    """How to reach an OpenAI-compatible chat server (vLLM). Units are in the names."""

    base_url: str  # e.g. http://127.0.0.1:8000/v1
    model: str
    sees_images: bool = False
    timeout_s: float = 30.0  # the whole arbitration, retries included
    max_concurrency: int = 8  # requests in flight from this backend
    retries: int = 2  # further attempts on connection errors and 5xx
    backoff_s: float = 0.25  # first retry delay; doubles each time
    api_key: str | None = None
    max_tokens: int = 24
    top_logprobs: int = 10
    constrain: bool = True  # structured_outputs choice; off for servers that cannot
    # Where the served model's decoder layers live, as LoRA tensor names say it: "model"
    # for a causal language model, "language_model.model" for InternVL-Chat (MedDr).
    lora_module_root: str = "model"


def label_scores(
    positions: Sequence[dict[str, Any]], labels: Sequence[str]
) -> dict[str, float] | None:
    """Per-label probabilities from the completion's ``logprobs.content``.

    Walks the generated tokens; at the first position where the alternatives
    in ``top_logprobs`` tell labels apart, each label gets the probability
    mass of the alternatives that continue it. Returns None when the server
    sent no logprobs or no position distinguishes the labels.
    """
    prefix = ""
    candidates = list(labels)
    for position in positions:
        mass = dict.fromkeys(candidates, 0.0)
        distinguishing = False
        for alternative in position.get("top_logprobs") or []:
            text = prefix + str(alternative.get("token", ""))
            continued = [
                label
                for label in candidates
                if label.startswith(text) or (text.startswith(label) and text.strip())
            ]
            distinguishing |= 0 < len(continued) < len(candidates)
            for label in continued:
                mass[label] += math.exp(float(alternative.get("logprob", -math.inf)))
        if distinguishing and sum(mass.values()) > 0:
            total = sum(mass.values())
            return {label: mass.get(label, 0.0) / total for label in labels}
        prefix += str(position.get("token", ""))
        candidates = [c for c in candidates if c.startswith(prefix) or prefix.startswith(c)]
        if len(candidates) <= 1:
            break
    return None


class OpenAICompatibleBackend:
    """Chat completions against vLLM's OpenAI server, constrained to the label set."""

    def __init__(
        self, config: OpenAIConfig, transport: httpx.AsyncBaseTransport | None = None
    ) -> None:
        self.config = config
        self.model = config.model
        self.sees_images = config.sees_images
        headers = {"Authorization": f"Bearer {config.api_key}"} if config.api_key else {}
        self._client = httpx.AsyncClient(
            base_url=config.base_url.rstrip("/"),
            headers=headers,
            timeout=httpx.Timeout(config.timeout_s),
            transport=transport,
        )
        self._slots = asyncio.Semaphore(config.max_concurrency)

    def build_payload(self, request: ArbitrationRequest) -> tuple[dict[str, Any], str]:
        """The chat-completions body for ``request`` and the prompt text in it."""
        sees = self.sees_images and request.image_png is not None
        prompt = render_prompt(
            request.task, request.mode, request.moed, request.rad, sees_image=sees
        )
        content: list[dict[str, Any]] = []
        if sees:
            assert request.image_png is not None
            url = "data:image/png;base64," + base64.b64encode(request.image_png).decode()
            content.append({"type": "image_url", "image_url": {"url": url}})
        content.append({"type": "text", "text": prompt})
        payload: dict[str, Any] = {
            "model": request.adapter or self.model,
            "messages": [
                {"role": "system", "content": SYSTEM},
                {"role": "user", "content": content},
            ],
            "temperature": 0.0,
            "max_tokens": self.config.max_tokens,
            "logprobs": True,
            "top_logprobs": self.config.top_logprobs,
        }
        if self.config.constrain:
            # vLLM >= 0.12 reads structured_outputs; the old guided_choice is ignored silently.
            payload["structured_outputs"] = {"choice": list(request.task.labels)}
        return payload, prompt

    def load_adapter(self, name: str, path: str) -> None:
        """Loads the LoRA adapter in folder ``path`` (on the server's machine) as ``name``.

        vLLM's ``POST /v1/load_lora_adapter``: the server must run with
        ``--enable-lora`` and ``VLLM_ALLOW_RUNTIME_LORA_UPDATING=1``. Loading a
        name it already holds succeeds (the adapter is the same one). A blocking
        call, for control paths (start-up, sync), on a client of its own.

        Raises:
            AdapterLoadError: the server refused the adapter (rank too large, an
                unsupported PEFT feature, LoRA off, unreadable files) or is down.
        """
        response = self._control("/load_lora_adapter", {"lora_name": name, "lora_path": path})
        if response.status_code >= 400 and "already been loaded" not in response.text:
            raise AdapterLoadError(
                f"the generalist refused adapter {name!r} ({response.status_code}): "
                f"{response.text[:500]}"
            )

    def unload_adapter(self, name: str) -> None:
        """Unloads adapter ``name`` (``POST /v1/unload_lora_adapter``); absent is not an error.

        Raises:
            AdapterLoadError: the server could not be reached.
        """
        self._control("/unload_lora_adapter", {"lora_name": name})

    def _control(self, path: str, body: dict[str, Any]) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.config.api_key}"} if self.config.api_key else {}
        try:
            return httpx.post(
                self.config.base_url.rstrip("/") + path,
                json=body,
                headers=headers,
                timeout=max(self.config.timeout_s, 60.0),
            )
        except httpx.HTTPError as exc:
            raise AdapterLoadError(
                f"{path}: the generalist at {self.config.base_url} is unreachable: {exc}"
            ) from exc

    async def arbitrate(self, request: ArbitrationRequest) -> ArbitrationResult:
        """Asks the server; raises GeneralistUnavailableError within ``timeout_s`` if it cannot."""
        payload, prompt = self.build_payload(request)
        started = time.perf_counter()
        try:
            async with asyncio.timeout(self.config.timeout_s):
                async with self._slots:
                    body = await self._post_with_retries(payload)
        except TimeoutError as exc:
            raise GeneralistUnavailableError(
                f"the generalist at {self.config.base_url} did not answer within "
                f"{self.config.timeout_s:g} s"
            ) from exc
        latency_ms = (time.perf_counter() - started) * 1000
        return self._result(request, body, prompt, latency_ms)

    async def _post_with_retries(self, payload: dict[str, Any]) -> dict[str, Any]:
        delay = self.config.backoff_s
        for attempt in range(self.config.retries + 1):
            last = attempt == self.config.retries
            try:
                response = await self._client.post("/chat/completions", json=payload)
            except httpx.TransportError as exc:
                if last:
                    raise GeneralistUnavailableError(
                        f"the generalist at {self.config.base_url} is unreachable: {exc}"
                    ) from exc
            else:
                if response.status_code < 500:
                    if response.status_code >= 400:
                        raise GeneralistResponseError(
                            f"the generalist refused the request ({response.status_code}): "
                            f"{response.text[:300]}"
                        )
                    try:
                        body: dict[str, Any] = response.json()
                    except ValueError as exc:
                        raise GeneralistResponseError(
                            "the generalist answered with invalid JSON"
                        ) from exc
                    return body
                if last:
                    raise GeneralistUnavailableError(
                        f"the generalist failed ({response.status_code}): {response.text[:300]}"
                    )
            await asyncio.sleep(delay)
            delay *= 2
        raise AssertionError("unreachable")

    def _result(
        self, request: ArbitrationRequest, body: dict[str, Any], prompt: str, latency_ms: float
    ) -> ArbitrationResult:
        try:
            choice = body["choices"][0]
            text = str(choice["message"]["content"] or "")
        except (KeyError, IndexError, TypeError) as exc:
            raise GeneralistResponseError("the generalist's response has no message") from exc
        labels = request.task.labels
        label = text.strip() if text.strip() in labels else parse_answer(text, request.task).label
        if label is None:
            raise GeneralistResponseError(
                f"the generalist answered outside the label set: {text.strip()[:200]!r}"
            )
        positions = ((choice.get("logprobs") or {}).get("content")) or []
        usage = body.get("usage") or {}
        return ArbitrationResult(
            label=label,
            scores=label_scores(positions, labels),
            raw_text=text,
            prompt=prompt,
            model=str(body.get("model", request.adapter or self.model)),
            saw_image=self.sees_images and request.image_png is not None,
            prompt_tokens=usage.get("prompt_tokens"),
            completion_tokens=usage.get("completion_tokens"),
            latency_ms=latency_ms,
        )

    async def aclose(self) -> None:
        """Closes the HTTP client."""
        await self._client.aclose()
