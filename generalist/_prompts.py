"""The GSCo prompts (He et al. 2026, Fig. A4) and their baselines, kept as data."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from protocol import Mode, TaskSpec

__all__ = [
    "PROMPTS",
    "PROMPT_TEMPLATE_VERSION",
    "SYSTEM",
    "MoedEvidence",
    "RadEvidence",
    "render_prompt",
]

#: Names the wording below: an adapter tuned on one version's prompts says so in its card,
#: and the hub serves it only with the same version. Change it with any change of wording.
PROMPT_TEMPLATE_VERSION = "gsco-fig-a4/1"
SYSTEM = "You are a helpful medical assistant."
#: Sentences, by the evidence they carry. ``{...}`` fields are filled by render_prompt.
PROMPTS: dict[Mode, tuple[str, ...]] = {
    Mode.GSCO: (
        "Your task is disease diagnosis. You are given a {modality} image.",
        "The possible options are: {labels}.",
        "The diagnoses of the most similar cases are {rad}.",
        "The reference answers by other models are {moed}.",
    ),
    Mode.MOED: (
        "Your task is disease diagnosis. You are given a {modality} image.",
        "The possible options are: {labels}.",
        "The reference answers by other models are {moed}.",
    ),
    Mode.RAD: (
        "Your task is disease diagnosis. You are given a {modality} image.",
        "The possible options are: {labels}.",
        "The diagnoses of the most similar cases are {rad}.",
    ),
    Mode.GENERALIST: (
        "Your task is disease diagnosis. You are given a {modality} image.",
        "The possible options are: {labels}.",
    ),
}
TEXT_ONLY_NOTE = "The image itself is not available to you: decide from the evidence above."
ANSWER_INSTRUCTION = "Answer with exactly one of the options."


@dataclass(frozen=True)
class MoedEvidence:
    """One specialist's calibrated answer."""

    label: str
    probability: float


@dataclass(frozen=True)
class RadEvidence:
    """One retrieved similar case."""

    label: str
    similarity: float


def render_prompt(
    task: TaskSpec,
    mode: Mode,
    moed: Sequence[MoedEvidence] = (),
    rad: Sequence[RadEvidence] = (),
    *,
    sees_image: bool = True,
) -> str:
    """The user prompt for ``mode`` (``gsco``, ``moed``, ``rad`` or ``generalist``)."""
    if mode not in PROMPTS:
        raise ValueError(f"mode {mode.value!r} does not ask the generalist")
    fields = {
        "modality": task.modality,
        "labels": ", ".join(task.labels),
        "moed": ", ".join(f"{e.label} ({e.probability:.2f})" for e in moed) or "not available",
        "rad": ", ".join(f"{e.label} (similarity {e.similarity:.2f})" for e in rad)
        or "not available",
    }
    sentences = [sentence.format(**fields) for sentence in PROMPTS[mode]]
    if not sees_image:
        sentences.append(TEXT_ONLY_NOTE)
    sentences.append(ANSWER_INSTRUCTION)
    return " ".join(sentences)
