"""Image folders (one sub-folder per class) and CSV manifests (path, label[, split])."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from protocol import TaskSpec
from site_agent.data._dataset import LocalDataset, Split
from site_agent.data._images import decode_image, is_dicom
from site_agent.errors import DataFormatError, DataNotFoundError

__all__ = ["load_csv_manifest", "load_image_folder"]

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".dcm", ""})
SPLIT_NAMES = ("train", "val", "test")
#: Manifests larger than this many rows are refused.
MAX_MANIFEST_ROWS = 5_000_000


@dataclass(frozen=True)
class _Item:
    path: Path
    label: int
    split: str | None


def _normalise(name: str) -> str:
    return " ".join(name.casefold().replace("_", " ").replace("-", " ").split())


def _label_index(task: TaskSpec, name: str, where: str) -> int:
    wanted = _normalise(name)
    for index, label in enumerate(task.labels):
        if _normalise(label) == wanted:
            return index
    if name.isdigit() and int(name) < len(task.labels):
        return int(name)
    raise DataFormatError(
        f"{where}: {name!r} is not a label of task {task.task_id!r} "
        f"(labels: {', '.join(task.labels)})"
    )


def load_image_folder(
    root: Path,
    task: TaskSpec,
    *,
    image_size: int = 64,
    channels: int | None = None,
    seed: int = 0,
) -> LocalDataset:
    """Loads ``root/<label>/*`` or ``root/<train|val|test>/<label>/*``.

    Folder names match labels case-insensitively, with ``_`` or ``-`` for spaces.
    Without split folders, a seeded stratified 70/10/20 split is made.
    """
    if not root.is_dir():
        raise DataNotFoundError(f"no such folder: {root}")
    subdirs = sorted(p for p in root.iterdir() if p.is_dir())
    has_splits = {p.name for p in subdirs} >= {"train", "val", "test"}
    items: list[_Item] = []
    for split_dir, split in (
        [(root / name, name) for name in SPLIT_NAMES] if has_splits else [(root, None)]
    ):
        for class_dir in sorted(p for p in split_dir.iterdir() if p.is_dir()):
            label = _label_index(task, class_dir.name, f"folder {class_dir}")
            items.extend(
                _Item(path, label, split)
                for path in sorted(class_dir.rglob("*"))
                if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES
            )
    if not items:
        raise DataFormatError(f"{root}: no images found (expected one sub-folder per class)")
    return _build(items, task, image_size, channels, seed, source="folder")


def load_csv_manifest(
    manifest: Path,
    task: TaskSpec,
    *,
    image_size: int = 64,
    channels: int | None = None,
    seed: int = 0,
) -> LocalDataset:
    """Loads a CSV with a header ``path,label[,split]``; paths are relative to the CSV."""
    if not manifest.is_file():
        raise DataNotFoundError(f"no such file: {manifest}")
    items: list[_Item] = []
    try:
        with manifest.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            columns = set(reader.fieldnames or ())
            if not {"path", "label"} <= columns:
                raise DataFormatError(
                    f"{manifest.name}: the header must name 'path' and 'label' "
                    f"(and optionally 'split'), found {sorted(columns)}"
                )
            for line, row in enumerate(reader, start=2):
                if line > MAX_MANIFEST_ROWS:
                    raise DataFormatError(f"{manifest.name}: more than {MAX_MANIFEST_ROWS} rows")
                where = f"{manifest.name}, line {line}"
                split = (row.get("split") or "").strip() or None
                if split is not None and split not in SPLIT_NAMES:
                    raise DataFormatError(f"{where}: split must be one of {SPLIT_NAMES}")
                path = Path(row["path"] or "")
                items.append(
                    _Item(
                        path if path.is_absolute() else manifest.parent / path,
                        _label_index(task, (row["label"] or "").strip(), where),
                        split,
                    )
                )
    except (UnicodeDecodeError, csv.Error) as exc:
        raise DataFormatError(f"{manifest.name}: not a readable CSV file ({exc})") from exc
    if not items:
        raise DataFormatError(f"{manifest.name}: no rows")
    if any(i.split is None for i in items) and any(i.split is not None for i in items):
        raise DataFormatError(f"{manifest.name}: give a split for every row or for none")
    return _build(items, task, image_size, channels, seed, source="csv")


def _probe_channels(path: Path) -> int:
    if is_dicom(path):
        return 1
    try:
        with Image.open(path) as image:
            return 1 if image.mode in ("1", "L", "I", "I;16", "F", "LA") else 3
    except OSError:
        return 1  # decode_image reports the real problem below


def _build(
    items: Sequence[_Item],
    task: TaskSpec,
    image_size: int,
    channels: int | None,
    seed: int,
    source: str,
) -> LocalDataset:
    channels = channels or _probe_channels(items[0].path)
    images = np.stack([_resized(item.path, channels, image_size) for item in items])
    labels = np.array([item.label for item in items], dtype=np.int64)
    if items[0].split is not None:
        splits = np.array([item.split for item in items])
        parts = [np.flatnonzero(splits == name) for name in SPLIT_NAMES]
    else:
        parts = _stratified_split(labels, seed)
    train, val, test = (Split(images[p], labels[p]) for p in parts)
    dicom_files = tuple(dict.fromkeys(item.path for item in items if is_dicom(item.path)))
    return LocalDataset(task, train, val, test, source, dicom_files)


def _resized(path: Path, channels: int, size: int) -> NDArray[np.uint8]:
    pixels = decode_image(path, channels)
    image = Image.fromarray(pixels[..., 0] if channels == 1 else pixels)
    resized = np.asarray(image.resize((size, size), Image.Resampling.BILINEAR), dtype=np.uint8)
    return resized[..., None] if channels == 1 else resized


def _stratified_split(
    labels: NDArray[np.int64], seed: int, fractions: tuple[float, float] = (0.1, 0.2)
) -> list[NDArray[np.int64]]:
    """Seeded 70/10/20 split per class (each split gets at least one image per class if it can)."""
    rng = np.random.default_rng(seed)
    train: list[int] = []
    val: list[int] = []
    test: list[int] = []
    for label in np.unique(labels):
        rows = rng.permutation(np.flatnonzero(labels == label))
        n_val = max(1, round(len(rows) * fractions[0])) if len(rows) >= 3 else 0
        n_test = max(1, round(len(rows) * fractions[1])) if len(rows) >= 3 else 0
        val.extend(rows[:n_val])
        test.extend(rows[n_val : n_val + n_test])
        train.extend(rows[n_val + n_test :])
    return [np.sort(np.array(part, dtype=np.int64)) for part in (train, val, test)]
