"""Fixtures of the site agent's tests: the real MedMNIST files and small image sets."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from site_agent.data import LocalDataset, default_catalog, load_medmnist

ROOT = Path(__file__).resolve().parents[2]


def medmnist_dir() -> Path:
    """The folder with the official MedMNIST files (GSCO_DATA_DIR, or shared/ beside the repo)."""
    for candidate in (os.environ.get("GSCO_DATA_DIR"), ROOT.parent / "shared/datasets/medmnist"):
        if candidate and (Path(candidate) / "pneumoniamnist.npz").is_file():
            return Path(candidate)
    message = "the MedMNIST files are not available (set GSCO_DATA_DIR)"
    if os.environ.get("CI"):
        pytest.fail(f"{message}: CI must run these tests, not skip them")
    pytest.skip(message)


@pytest.fixture(scope="session")
def pneumonia_npz() -> Path:
    return medmnist_dir() / "pneumoniamnist.npz"


@pytest.fixture(scope="session")
def pneumonia(pneumonia_npz: Path) -> LocalDataset:
    entry = default_catalog().get("pneumonia-cxr")
    return load_medmnist(pneumonia_npz, entry.task, dataset="pneumoniamnist")


@pytest.fixture(scope="session")
def tiny_pneumonia(pneumonia: LocalDataset) -> LocalDataset:
    return pneumonia.subsample(max_train=48, max_eval=24, seed=1)


def write_npz(path: Path, **arrays: np.ndarray) -> Path:
    np.savez(path, **arrays)
    return path


def write_png(path: Path, value: int, size: int = 20, mode: str = "L") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(value)
    shape = (size, size) if mode == "L" else (size, size, 3)
    Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8), mode).save(path)
