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


def graded_arrays(
    grades: int = 4, per_grade: int = 60, size: int = 28, channels: int = 1, seed: int = 0
) -> dict[str, np.ndarray]:
    """A MedMNIST-layout ordinal set: a bright disc whose radius grows with the grade, in noise.

    Neighbouring grades overlap (radius jitter), so a model confuses them
    before it confuses distant ones, as graders do.
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    arrays: dict[str, np.ndarray] = {}
    for split, share in (("train", 1.0), ("val", 0.3), ("test", 0.3)):
        n = max(grades, int(per_grade * share)) * grades
        labels = np.repeat(np.arange(grades), n // grades)
        rng.shuffle(labels)
        radius = size * (0.12 + 0.28 * (labels + rng.uniform(-0.45, 0.45, len(labels))) / grades)
        cy, cx = rng.uniform(size * 0.4, size * 0.6, (2, len(labels)))
        dist = np.hypot(yy[None] - cy[:, None, None], xx[None] - cx[:, None, None])
        disc = (dist <= radius[:, None, None]) * 150.0
        noisy = np.clip(disc + 50 + rng.normal(0, 25, disc.shape), 0, 255).astype(np.uint8)
        images = noisy if channels == 1 else np.repeat(noisy[..., None], channels, axis=-1)
        arrays[f"{split}_images"] = images
        arrays[f"{split}_labels"] = labels[:, None]
    return arrays


GRADED_TASK = (
    "task_id: knee-oa-grade\n"
    "modality: knee X-ray\n"
    "labels: [none, doubtful, moderate, severe]\n"
    "task_type: ordinal\n"
)
