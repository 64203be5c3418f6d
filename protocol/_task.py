"""The task spec: what a diagnosis task is, independent of any model."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Literal

from pydantic import Field, StringConstraints, model_validator

from protocol._base import LABEL_CHARACTERS, PRINTABLE, Identifier, Label, StrictModel

__all__ = ["TaskSpec", "TaskType", "check_label_set"]


class TaskType(StrEnum):
    """How labels relate to one image."""

    BINARY = "binary"
    MULTICLASS = "multiclass"
    MULTILABEL = "multilabel"
    ORDINAL = "ordinal"


def check_label_set(labels: tuple[str, ...], task_type: TaskType) -> None:
    """Raises ``ValueError`` if ``labels`` does not fit ``task_type`` (used by validators)."""
    if len({label.casefold() for label in labels}) != len(labels):
        raise ValueError("labels must be unique (case-insensitively)")
    if task_type is TaskType.BINARY and len(labels) != 2:
        raise ValueError(f"a binary task has exactly 2 labels, got {len(labels)}")


#: The imaging modality named in prompts (``chest X-ray``): the characters of a label.
Modality = Annotated[str, StringConstraints(min_length=2, max_length=100), LABEL_CHARACTERS]


class TaskSpec(StrictModel):
    """A diagnosis task: the modality named in prompts and the ordered label set.

    ``synonyms`` maps a label to other words that mean it (``"pneumonia"``:
    ``["pneumonic", "consolidation"]``); the generalist's free-text parser uses them.
    """

    schema_version: Literal[1] = 1
    task_id: Identifier
    modality: Modality
    labels: Annotated[tuple[Label, ...], Field(min_length=2, max_length=256)]
    task_type: TaskType
    synonyms: dict[Label, tuple[Label, ...]] = Field(default_factory=dict)
    description: Annotated[str, StringConstraints(max_length=1000), PRINTABLE] = ""
    #: Whether the anatomy allows left-right mirroring (training may then augment with it).
    mirroring: bool = False

    @model_validator(mode="after")
    def _labels_consistent(self) -> TaskSpec:
        check_label_set(self.labels, self.task_type)
        unknown = set(self.synonyms) - set(self.labels)
        if unknown:
            raise ValueError(f"synonyms for labels not in the label set: {sorted(unknown)}")
        return self
