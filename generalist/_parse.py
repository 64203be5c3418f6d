"""From free text to the label set, for servers that cannot constrain their output."""

from __future__ import annotations

import re
import string
from dataclasses import dataclass

from protocol import TaskSpec, TaskType

__all__ = ["ParsedAnswer", "parse_answer"]

_REFUSALS = (
    r"\bi (?:can ?not|can't|am unable to|am not able to|won't)\b",
    r"\bi'?m (?:sorry|unable|not able)\b",
    r"\bas an ai\b",
    r"\bunable to (?:determine|diagnose|provide|assess)\b",
    r"\bcannot (?:determine|diagnose|provide|assess|be determined)\b",
    r"\bconsult (?:a|your) (?:doctor|physician|radiologist)\b",
    r"\bnot possible to (?:determine|tell)\b",
)
_PUNCTUATION = str.maketrans(dict.fromkeys(string.punctuation, " "))


@dataclass(frozen=True)
class ParsedAnswer:
    """What a free-text answer says: a label, several (multi-label), or a refusal."""

    labels: tuple[str, ...]
    refused: bool = False

    @property
    def label(self) -> str | None:
        """The single label, or None (no answer, a refusal, or several labels)."""
        return self.labels[0] if len(self.labels) == 1 else None


def _norm(text: str) -> str:
    return " ".join(text.casefold().translate(_PUNCTUATION).split())


def _mentions(text: str, phrase: str) -> int | None:
    """Where ``phrase`` occurs as whole words in ``text`` (both normalised), else None."""
    found = re.search(rf"(?<![a-z0-9]){re.escape(phrase)}(?![a-z0-9])", text)
    return found.start() if found else None


def parse_answer(text: str, task: TaskSpec) -> ParsedAnswer:
    """Maps ``text`` to the task's labels.

    Exact (case and punctuation insensitive) matches win; then whole-word
    mentions of labels and of their synonyms, longest phrases first so that
    "normal or benign" is not read as "normal". A single-label task takes the
    earliest mention; a multi-label task takes every mentioned label. Refusals
    ("I cannot determine...") are reported as such.
    """
    normalised = _norm(text)
    phrases: list[tuple[str, str]] = [(_norm(label), label) for label in task.labels]
    for label, synonyms in task.synonyms.items():
        phrases.extend((_norm(s), label) for s in synonyms)
    for phrase, label in phrases:
        if normalised == phrase:
            return ParsedAnswer((label,))
    if any(re.search(pattern, normalised) for pattern in _REFUSALS):
        return ParsedAnswer((), refused=True)
    found: dict[str, int] = {}
    covered: list[tuple[int, int]] = []
    for phrase, label in sorted(phrases, key=lambda item: -len(item[0])):
        position = _mentions(normalised, phrase)
        if position is None or any(a <= position < b for a, b in covered):
            continue
        covered.append((position, position + len(phrase)))
        found[label] = min(found.get(label, position), position)
    ordered = tuple(sorted(found, key=found.__getitem__))
    if task.task_type is TaskType.MULTILABEL:
        return ParsedAnswer(tuple(label for label in task.labels if label in found))
    return ParsedAnswer(ordered[:1])
