"""The one in-memory dataset type that every ingestion path produces."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from protocol import DataSummary, TaskSpec
from site_agent.errors import DataFormatError, EmptyClassError

__all__ = ["LocalDataset", "Split"]


@dataclass(frozen=True)
class Split:
    """Images ``uint8 [N, H, W, C]`` (C = 1 or 3) and integer labels ``[N]``."""

    images: NDArray[np.uint8]
    labels: NDArray[np.int64]

    def __post_init__(self) -> None:
        if self.images.ndim != 4 or self.images.shape[-1] not in (1, 3):
            raise DataFormatError(f"images must be [N, H, W, 1 or 3], got {self.images.shape}")
        if self.images.dtype != np.uint8:
            raise DataFormatError(f"images must be uint8, got {self.images.dtype}")
        if self.labels.shape != (len(self.images),):
            raise DataFormatError(
                f"{len(self.images)} images but labels of shape {self.labels.shape}"
            )

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, indices: NDArray[np.int64]) -> Split:
        """The rows at ``indices``."""
        return Split(self.images[indices], self.labels[indices])


@dataclass(frozen=True)
class LocalDataset:
    """A task's labelled images, split into train, validation and test.

    ``source`` is coarse (``medmnist:pneumoniamnist``, ``folder``, ``csv``):
    it is published in the card, so it never holds paths or names.
    ``dicom_files`` are the DICOM files the images were decoded from (never
    published): the de-identification report is built from them.
    """

    task: TaskSpec
    train: Split
    val: Split
    test: Split
    source: str
    dicom_files: tuple[Path, ...] = ()

    def __post_init__(self) -> None:
        n_labels = len(self.task.labels)
        shapes = {
            split.images.shape[1:] for split in (self.train, self.val, self.test) if len(split)
        }
        if len(shapes) > 1:
            raise DataFormatError(f"splits have different image shapes: {sorted(shapes)}")
        for name, split in (("train", self.train), ("val", self.val), ("test", self.test)):
            if len(split) and (split.labels.min() < 0 or split.labels.max() >= n_labels):
                raise DataFormatError(
                    f"{name} labels must lie in 0..{n_labels - 1} for task "
                    f"{self.task.task_id!r}, found {split.labels.min()}..{split.labels.max()}"
                )
        if not len(self.val) or not len(self.test):
            raise DataFormatError("the validation and test splits must not be empty")
        counts = np.bincount(self.train.labels, minlength=n_labels)
        empty = [label for label, count in zip(self.task.labels, counts, strict=True) if not count]
        if empty:
            raise EmptyClassError(f"no training images for class(es): {', '.join(empty)}")

    @property
    def channels(self) -> int:
        """1 (grey) or 3 (RGB)."""
        return int(self.train.images.shape[-1])

    @property
    def image_size(self) -> tuple[int, int]:
        """(height, width) of the stored images."""
        return int(self.train.images.shape[1]), int(self.train.images.shape[2])

    def class_counts(self, split: Split) -> dict[str, int]:
        """Images per label name in ``split``."""
        counts = np.bincount(split.labels, minlength=len(self.task.labels))
        return {label: int(n) for label, n in zip(self.task.labels, counts, strict=True)}

    def subsample(
        self, max_train: int | None = None, max_eval: int | None = None, seed: int = 0
    ) -> LocalDataset:
        """A seeded random subset: ``max_train`` training, ``max_eval`` val and test images."""
        rng = np.random.default_rng(seed)

        def take(split: Split, limit: int | None) -> Split:
            if limit is None or len(split) <= limit:
                return split
            return split.subset(np.sort(rng.permutation(len(split))[:limit]).astype(np.int64))

        return LocalDataset(
            self.task,
            take(self.train, max_train),
            take(self.val, max_eval),
            take(self.test, max_eval),
            self.source,
            self.dicom_files,
        )

    def summary(self) -> DataSummary:
        """The coarse, publishable summary for the card."""
        return DataSummary(
            source=self.source,
            n_train=len(self.train),
            n_val=len(self.val),
            n_test=len(self.test),
            train_class_counts=self.class_counts(self.train),
        )
