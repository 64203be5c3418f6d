"""One entry point for every ingestion path: ``--data`` (file or folder) or the catalog."""

from __future__ import annotations

from pathlib import Path

from site_agent.data._catalog import CatalogEntry
from site_agent.data._dataset import LocalDataset
from site_agent.data._files import load_csv_manifest, load_image_folder
from site_agent.data._medmnist import find_medmnist, load_medmnist
from site_agent.errors import DataFormatError, DataNotFoundError

__all__ = ["load_local_data"]


def load_local_data(
    data: Path | None,
    entry: CatalogEntry,
    *,
    image_size: int = 64,
    channels: int | None = None,
    seed: int = 0,
    dataset: str | None = None,
) -> LocalDataset:
    """Loads the data for ``entry``'s task.

    ``data`` may be a MedMNIST ``.npz``, a folder with one sub-folder per class,
    or a CSV manifest. Without ``data``, the task's MedMNIST dataset is looked up
    in ``$GSCO_DATA_DIR`` and ``~/.medmnist`` or downloaded. ``dataset`` names
    the MedMNIST set a ``.npz`` is (or is a share of) for the card's data
    source; by default the task's, when the file is named like it.
    """
    if data is None:
        if entry.medmnist is None:
            raise DataNotFoundError(
                f"task {entry.task.task_id!r} has no public dataset: pass --data PATH"
            )
        return load_medmnist(find_medmnist(entry.medmnist), entry.task, dataset=entry.medmnist)
    if not data.exists():
        raise DataNotFoundError(f"no such file or folder: {data}")
    if data.is_dir():
        return load_image_folder(
            data, entry.task, image_size=image_size, channels=channels, seed=seed
        )
    suffix = data.suffix.lower()
    if suffix == ".npz":
        known = entry.medmnist if entry.medmnist and data.name.startswith(entry.medmnist) else None
        return load_medmnist(data, entry.task, dataset=dataset or known)
    if suffix == ".csv":
        return load_csv_manifest(
            data, entry.task, image_size=image_size, channels=channels, seed=seed
        )
    raise DataFormatError(
        f"{data.name}: --data takes a MedMNIST .npz, a CSV manifest or a folder of class folders"
    )
