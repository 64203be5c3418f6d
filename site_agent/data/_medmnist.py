"""Official MedMNIST ``.npz`` files: finding, downloading and loading them."""

from __future__ import annotations

import hashlib
import logging
import os
import zipfile
from pathlib import Path

import numpy as np

from protocol import TaskSpec
from site_agent.data._dataset import LocalDataset, Split
from site_agent.errors import DataFormatError, DataNotFoundError

__all__ = ["find_medmnist", "load_medmnist", "medmnist_filename"]

_log = logging.getLogger(__name__)
_SPLITS = ("train", "val", "test")
#: The sizes MedMNIST publishes (28 is the file without a suffix).
SIZES = (28, 64, 128, 224)


def medmnist_filename(dataset: str, size: int = 28) -> str:
    """``pneumoniamnist.npz`` for 28 px, ``pneumoniamnist_64.npz`` for the larger variants."""
    if size not in SIZES:
        raise DataFormatError(f"MedMNIST sizes are {SIZES}, not {size}")
    return f"{dataset}.npz" if size == 28 else f"{dataset}_{size}.npz"


def _search_dirs() -> list[Path]:
    dirs = []
    if os.environ.get("GSCO_DATA_DIR"):
        dirs.append(Path(os.environ["GSCO_DATA_DIR"]))
    dirs.append(Path.home() / ".medmnist")
    return dirs


def find_medmnist(dataset: str, size: int = 28, *, download: bool = True) -> Path:
    """Finds ``dataset``'s file in ``$GSCO_DATA_DIR``, then ``~/.medmnist``, else downloads it.

    Raises:
        DataNotFoundError: not found, and the download failed (no network, say).
    """
    name = medmnist_filename(dataset, size)
    searched = _search_dirs()
    for directory in searched:
        if (directory / name).is_file():
            return directory / name
    where = ", ".join(str(d) for d in searched)
    if not download:
        raise DataNotFoundError(f"{name} not found in {where}")
    target = Path.home() / ".medmnist"
    try:
        _download(dataset, size, target)
    except Exception as exc:
        reason = (str(exc).strip().splitlines() or [""])[0][:200]
        raise DataNotFoundError(
            f"{name} not found in {where}, and downloading it through the medmnist package "
            f"failed ({type(exc).__name__}: {reason}). Without a network, copy the file into "
            f"one of those folders, point GSCO_DATA_DIR at it, or pass --data PATH."
        ) from exc
    return target / name


def _download(dataset: str, size: int, root: Path) -> None:
    import medmnist

    info = medmnist.INFO.get(dataset)
    if info is None:
        raise DataNotFoundError(f"{dataset!r} is not a MedMNIST dataset")
    root.mkdir(parents=True, exist_ok=True)
    dataset_class = getattr(medmnist, info["python_class"])
    dataset_class(split="train", download=True, root=str(root), size=None if size == 28 else size)


def _check_md5(path: Path, dataset: str | None) -> None:
    """Warns when a file named like an official one does not match its published MD5."""
    if dataset is None:
        return
    import medmnist

    info = medmnist.INFO.get(dataset, {})
    stem = path.stem.removeprefix(dataset)
    key = "MD5" + stem  # "", "_64", "_128", "_224"
    expected = info.get(key)
    if expected is None:
        return
    digest = hashlib.md5(path.read_bytes(), usedforsecurity=False).hexdigest()
    if digest != expected:
        _log.warning("%s differs from the official MedMNIST file (md5 %s)", path.name, digest)


def load_medmnist(path: Path, task: TaskSpec, *, dataset: str | None = None) -> LocalDataset:
    """Loads an official MedMNIST ``.npz`` (any size) for ``task``.

    Labels are indices into ``task.labels``. Nothing is unpickled.

    Raises:
        DataNotFoundError: no such file.
        DataFormatError: not a zip of arrays, missing keys, bad shapes or labels.
        EmptyClassError: a class has no training images.
    """
    if not path.is_file():
        raise DataNotFoundError(f"no such file: {path}")
    _check_md5(path, dataset)
    try:
        with np.load(path, allow_pickle=False) as archive:
            missing = [
                f"{split}_{kind}"
                for split in _SPLITS
                for kind in ("images", "labels")
                if f"{split}_{kind}" not in archive.files
            ]
            if missing:
                raise DataFormatError(
                    f"{path.name} is not a MedMNIST file: missing keys {', '.join(missing)} "
                    f"(found {', '.join(archive.files) or 'none'})"
                )
            splits = {split: _split(archive, split, path.name) for split in _SPLITS}
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
        raise DataFormatError(f"{path.name} is not a readable .npz file: {exc}") from exc
    source = f"medmnist:{dataset}" if dataset else "npz"
    return LocalDataset(task, splits["train"], splits["val"], splits["test"], source)


def _split(archive: np.lib.npyio.NpzFile, split: str, name: str) -> Split:
    images = archive[f"{split}_images"]
    labels = archive[f"{split}_labels"]
    if images.dtype != np.uint8:
        raise DataFormatError(f"{name}: {split}_images must be uint8, got {images.dtype}")
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise DataFormatError(f"{name}: {split}_images has shape {images.shape}")
    if labels.ndim == 2 and labels.shape[1] != 1:
        raise DataFormatError(
            f"{name}: {split}_labels has {labels.shape[1]} columns: multi-label data is not "
            "supported by this loader"
        )
    labels = labels.reshape(-1)
    if not np.issubdtype(labels.dtype, np.integer):
        raise DataFormatError(f"{name}: {split}_labels must be integers, got {labels.dtype}")
    return Split(np.ascontiguousarray(images), labels.astype(np.int64))
