"""The task catalog: named tasks, the MedMNIST datasets behind them, and user task files."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import yaml

from protocol import GscoError, TaskSpec, TaskType
from site_agent.errors import DataFormatError, TaskNotFoundError

__all__ = ["CatalogEntry", "TaskCatalog", "default_catalog", "load_task_file"]

#: Task files larger than this are not task files.
MAX_TASK_FILE_BYTES = 256 * 1024


@dataclass(frozen=True)
class CatalogEntry:
    """A task, and the MedMNIST dataset that serves it (if any)."""

    task: TaskSpec
    medmnist: str | None = None


class TaskCatalog:
    """Tasks by id. Built once; ``with_task`` returns an extended copy."""

    def __init__(self, entries: tuple[CatalogEntry, ...] = ()) -> None:
        self._entries = {entry.task.task_id: entry for entry in entries}

    def with_task(self, entry: CatalogEntry) -> TaskCatalog:
        """A catalog that also holds ``entry`` (replacing a task of the same id)."""
        return TaskCatalog((*self._entries.values(), entry))

    def get(self, task_id: str) -> CatalogEntry:
        """The entry for ``task_id``.

        Raises:
            TaskNotFoundError: no such task (the message lists the known ones).
        """
        try:
            return self._entries[task_id]
        except KeyError:
            known = ", ".join(sorted(self._entries)) or "none"
            raise TaskNotFoundError(
                f"unknown task {task_id!r}; known tasks: {known} (or pass --task-file)"
            ) from None

    def for_medmnist(self, dataset: str) -> CatalogEntry:
        """The entry served by a MedMNIST dataset (``pneumoniamnist``)."""
        for entry in self._entries.values():
            if entry.medmnist == dataset:
                return entry
        raise TaskNotFoundError(f"no task in the catalog uses MedMNIST dataset {dataset!r}")

    def __iter__(self) -> Iterator[CatalogEntry]:
        return iter(self._entries.values())


def _task(
    task_id: str,
    modality: str,
    labels: tuple[str, ...],
    task_type: TaskType,
    synonyms: dict[str, tuple[str, ...]] | None = None,
    *,
    mirroring: bool = False,
) -> TaskSpec:
    return TaskSpec(
        task_id=task_id,
        modality=modality,
        labels=labels,
        task_type=task_type,
        synonyms=synonyms or {},
        mirroring=mirroring,
    )


def default_catalog() -> TaskCatalog:
    """The built-in tasks over the 2D MedMNIST datasets (label order = MedMNIST's)."""
    return TaskCatalog(
        (
            CatalogEntry(
                _task(
                    "pneumonia-cxr",
                    "chest X-ray",
                    ("normal", "pneumonia"),
                    TaskType.BINARY,
                    {
                        "normal": ("no pneumonia", "healthy", "no finding", "clear lungs"),
                        "pneumonia": ("pneumonic", "consolidation", "lung infection"),
                    },
                ),
                "pneumoniamnist",
            ),
            CatalogEntry(
                _task(
                    "breast-us",
                    "breast ultrasound",
                    ("malignant", "normal or benign"),
                    TaskType.BINARY,
                    {
                        "malignant": ("cancer", "carcinoma", "malignancy"),
                        "normal or benign": ("benign", "normal", "non-malignant", "normal, benign"),
                    },
                    mirroring=True,  # either breast, scanned from either side
                ),
                "breastmnist",
            ),
            CatalogEntry(
                _task(
                    "blood-cell",
                    "blood cell microscopy",
                    (
                        "basophil",
                        "eosinophil",
                        "erythroblast",
                        "immature granulocytes",
                        "lymphocyte",
                        "monocyte",
                        "neutrophil",
                        "platelet",
                    ),
                    TaskType.MULTICLASS,
                    mirroring=True,  # cells under a microscope have no handedness
                ),
                "bloodmnist",
            ),
            CatalogEntry(
                _task(
                    "retina-oct",
                    "retinal optical coherence tomography",
                    ("choroidal neovascularization", "diabetic macular edema", "drusen", "normal"),
                    TaskType.MULTICLASS,
                ),
                "octmnist",
            ),
            CatalogEntry(
                _task(
                    "retina-fundus-dr",
                    "retinal fundus photograph",
                    ("grade 0", "grade 1", "grade 2", "grade 3", "grade 4"),
                    TaskType.ORDINAL,
                    mirroring=True,  # a left eye is a mirrored right eye
                ),
                "retinamnist",
            ),
        )
    )


def load_task_file(path: Path) -> CatalogEntry:
    """Reads a user-declared task from YAML or JSON.

    The document is a :class:`protocol.TaskSpec`, plus an optional ``medmnist``
    key naming the MedMNIST dataset that serves it::

        task_id: knee-xr
        modality: knee X-ray
        labels: [no osteoarthritis, osteoarthritis]
        task_type: binary
        mirroring: true        # optional: left-right mirroring keeps the label

    Raises:
        DataNotFoundError / DataFormatError: unreadable or invalid file.
    """
    try:
        if path.stat().st_size > MAX_TASK_FILE_BYTES:
            raise DataFormatError(f"{path}: too large for a task file")
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataFormatError(f"cannot read task file {path}: {exc}") from exc
    try:
        document = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise DataFormatError(
            f"{path}: not valid {path.suffix.lstrip('.') or 'YAML'}: {exc}"
        ) from exc
    if not isinstance(document, dict):
        raise DataFormatError(f"{path}: a task file holds one mapping")
    medmnist = document.pop("medmnist", None)
    try:
        task = TaskSpec.parse(document)
    except GscoError as exc:
        raise DataFormatError(f"{path}: {exc}") from exc
    if medmnist is not None and not isinstance(medmnist, str):
        raise DataFormatError(f"{path}: 'medmnist' must name a dataset")
    return CatalogEntry(task, medmnist)
