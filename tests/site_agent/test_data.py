"""Ingestion: MedMNIST files, folders, CSV manifests, DICOM, the catalog, task files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from site_agent.data import (
    DICOM_PIXEL_TAGS,
    LocalDataset,
    decode_image,
    default_catalog,
    find_medmnist,
    load_csv_manifest,
    load_image_folder,
    load_local_data,
    load_medmnist,
    load_task_file,
)
from site_agent.errors import (
    DataFormatError,
    DataNotFoundError,
    EmptyClassError,
    ImageDecodeError,
    TaskNotFoundError,
)
from tests.site_agent.conftest import write_npz, write_png

PNEUMONIA = default_catalog().get("pneumonia-cxr").task


def _splits(n: int = 12, labels: np.ndarray | None = None) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    arrays = {}
    for split in ("train", "val", "test"):
        arrays[f"{split}_images"] = rng.integers(0, 255, (n, 28, 28), dtype=np.uint8)
        arrays[f"{split}_labels"] = (np.arange(n) % 2).reshape(-1, 1) if labels is None else labels
    return arrays


def test_official_file_loads_with_its_split_sizes(pneumonia: LocalDataset) -> None:
    assert (len(pneumonia.train), len(pneumonia.val), len(pneumonia.test)) == (4708, 524, 624)
    assert pneumonia.channels == 1
    assert pneumonia.image_size == (28, 28)
    summary = pneumonia.summary()
    assert summary.source == "medmnist:pneumoniamnist"
    assert summary.train_class_counts == {"normal": 1214, "pneumonia": 3494}


def test_found_through_gsco_data_dir(pneumonia_npz: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GSCO_DATA_DIR", str(pneumonia_npz.parent))
    assert find_medmnist("pneumoniamnist") == pneumonia_npz


def test_no_network_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GSCO_DATA_DIR", str(tmp_path / "empty"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    with pytest.raises(
        DataNotFoundError, match="downloading it through the medmnist package failed"
    ):
        find_medmnist("breastmnist")
    with pytest.raises(DataNotFoundError, match="not found"):
        find_medmnist("breastmnist", download=False)


def test_subsample_is_seeded(pneumonia: LocalDataset) -> None:
    a = pneumonia.subsample(100, 50, seed=3)
    b = pneumonia.subsample(100, 50, seed=3)
    assert len(a.train) == 100
    assert len(a.test) == 50
    assert np.array_equal(a.train.images, b.train.images)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataNotFoundError, match="no such file"):
        load_medmnist(tmp_path / "nope.npz", PNEUMONIA)


def test_wrong_keys(tmp_path: Path) -> None:
    path = write_npz(tmp_path / "x.npz", images=np.zeros((2, 28, 28), np.uint8))
    with pytest.raises(DataFormatError, match="missing keys train_images"):
        load_medmnist(path, PNEUMONIA)


def test_not_an_npz(tmp_path: Path) -> None:
    path = tmp_path / "x.npz"
    path.write_bytes(b"PK\x03\x04 definitely not a zip")
    with pytest.raises(DataFormatError, match="not a readable .npz"):
        load_medmnist(path, PNEUMONIA)


def test_pickled_arrays_are_refused(tmp_path: Path) -> None:
    arrays = _splits()
    arrays["train_labels"] = np.array([{"x": 1}] * 12, dtype=object)
    path = write_npz(tmp_path / "x.npz", **arrays)
    with pytest.raises(DataFormatError):
        load_medmnist(path, PNEUMONIA)


def test_labels_out_of_range(tmp_path: Path) -> None:
    path = write_npz(tmp_path / "x.npz", **_splits(labels=np.full((12, 1), 5)))
    with pytest.raises(DataFormatError, match="labels must lie in 0..1"):
        load_medmnist(path, PNEUMONIA)


def test_empty_class(tmp_path: Path) -> None:
    path = write_npz(tmp_path / "x.npz", **_splits(labels=np.zeros((12, 1), np.int64)))
    with pytest.raises(EmptyClassError, match="no training images for class\\(es\\): pneumonia"):
        load_medmnist(path, PNEUMONIA)


def test_multilabel_files_are_refused_clearly(tmp_path: Path) -> None:
    path = write_npz(tmp_path / "x.npz", **_splits(labels=np.zeros((12, 14), np.int64)))
    with pytest.raises(DataFormatError, match="multi-label"):
        load_medmnist(path, PNEUMONIA)


def test_image_folder_with_random_split(tmp_path: Path) -> None:
    for i in range(10):
        write_png(tmp_path / "Normal" / f"{i}.png", i)
        write_png(tmp_path / "pneumonia" / f"{i}.png", 100 + i, size=30)
    dataset = load_image_folder(tmp_path, PNEUMONIA, image_size=16, seed=0)
    assert dataset.image_size == (16, 16)
    assert dataset.channels == 1
    assert len(dataset.train) + len(dataset.val) + len(dataset.test) == 20
    assert dataset.class_counts(dataset.val) == {"normal": 1, "pneumonia": 1}
    assert dataset.source == "folder"


def test_image_folder_with_split_folders_and_rgb(tmp_path: Path) -> None:
    for split in ("train", "val", "test"):
        for label in ("normal", "pneumonia"):
            write_png(tmp_path / split / label / "a.png", 1, mode="RGB")
    dataset = load_image_folder(tmp_path, PNEUMONIA, image_size=12)
    assert dataset.channels == 3
    assert (len(dataset.train), len(dataset.val), len(dataset.test)) == (2, 2, 2)


def test_unknown_class_folder(tmp_path: Path) -> None:
    write_png(tmp_path / "covid" / "a.png", 1)
    with pytest.raises(DataFormatError, match="'covid' is not a label of task 'pneumonia-cxr'"):
        load_image_folder(tmp_path, PNEUMONIA)


def test_corrupt_image(tmp_path: Path) -> None:
    for i in range(3):
        write_png(tmp_path / "normal" / f"{i}.png", i)
        write_png(tmp_path / "pneumonia" / f"{i}.png", i)
    (tmp_path / "normal" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    with pytest.raises(ImageDecodeError, match="broken.png: not a readable image"):
        load_image_folder(tmp_path, PNEUMONIA)


def test_csv_manifest_with_splits(tmp_path: Path) -> None:
    rows = ["path,label,split"]
    for i, split in enumerate(["train", "train", "val", "test"] * 2):
        label = "normal" if i % 2 else "pneumonia"
        write_png(tmp_path / "img" / f"{i}.png", i)
        rows.append(f"img/{i}.png,{label},{split}")
    (tmp_path / "m.csv").write_text("\n".join(rows))
    dataset = load_csv_manifest(tmp_path / "m.csv", PNEUMONIA, image_size=8)
    assert (len(dataset.train), len(dataset.val), len(dataset.test)) == (4, 2, 2)
    assert dataset.source == "csv"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("file,class\na.png,normal", "must name 'path' and 'label'"),
        ("path,label,split\na.png,normal,holdout", "split must be one of"),
        ("path,label\na.png,covid", "'covid' is not a label"),
    ],
)
def test_bad_manifests(tmp_path: Path, content: str, message: str) -> None:
    (tmp_path / "m.csv").write_text(content)
    with pytest.raises(DataFormatError, match=message):
        load_csv_manifest(tmp_path / "m.csv", PNEUMONIA)


def test_dispatch_by_path(tmp_path: Path, pneumonia_npz: Path) -> None:
    entry = default_catalog().get("pneumonia-cxr")
    assert load_local_data(pneumonia_npz, entry).source == "medmnist:pneumoniamnist"
    (tmp_path / "x.txt").write_text("?")
    with pytest.raises(DataFormatError, match="--data takes"):
        load_local_data(tmp_path / "x.txt", entry)
    with pytest.raises(DataNotFoundError):
        load_local_data(tmp_path / "missing.npz", entry)


DICOM_FILES = ["CT_small.dcm", "MR_small.dcm"]


@pytest.mark.parametrize("name", DICOM_FILES)
def test_dicom_pixels_decode(name: str) -> None:
    pixels = decode_image(Path(get_testdata_file(name)), channels=1)
    assert pixels.dtype == np.uint8
    assert pixels.ndim == 3
    assert pixels.shape[-1] == 1
    assert pixels.max() > pixels.min()


@pytest.mark.parametrize("name", DICOM_FILES)
def test_dicom_identifying_tags_are_never_read(name: str) -> None:
    path = get_testdata_file(name)
    full = pydicom.dcmread(path)
    assert "PatientName" in full  # the file does carry identifying attributes
    allow_listed = pydicom.dcmread(path, specific_tags=list(DICOM_PIXEL_TAGS))
    read = {element.keyword for element in allow_listed}
    # pydicom always reads the character set it needs to decode text: not identifying.
    assert read <= set(DICOM_PIXEL_TAGS) | {"SpecificCharacterSet"}
    assert not read & {"PatientName", "PatientID", "PatientBirthDate", "StudyDate"}


def test_corrupt_dicom_is_a_clear_error(tmp_path: Path) -> None:
    source = Path(get_testdata_file("CT_small.dcm")).read_bytes()
    broken = tmp_path / "broken.dcm"
    broken.write_bytes(source[: len(source) // 2])  # the pixel data is cut off
    with pytest.raises(ImageDecodeError, match="DICOM pixel data cannot be decoded"):
        decode_image(broken, channels=1)


def test_catalog_and_task_files(tmp_path: Path) -> None:
    with pytest.raises(TaskNotFoundError, match="known tasks: blood-cell, breast-us"):
        default_catalog().get("covid-ct")
    (tmp_path / "t.yaml").write_text(
        "task_id: knee-xr\nmodality: knee X-ray\nlabels: [healthy, osteoarthritis]\n"
        "task_type: binary\n"
    )
    entry = load_task_file(tmp_path / "t.yaml")
    assert entry.task.labels == ("healthy", "osteoarthritis")
    assert entry.medmnist is None
    assert default_catalog().with_task(entry).get("knee-xr") == entry
    (tmp_path / "bad.json").write_text(json.dumps({"task_id": "x", "labels": ["a"], "owner": "me"}))
    with pytest.raises(DataFormatError, match="owner"):
        load_task_file(tmp_path / "bad.json")
    (tmp_path / "evil.yaml").write_text("!!python/object/apply:os.system ['true']")
    with pytest.raises(DataFormatError, match="not valid"):
        load_task_file(tmp_path / "evil.yaml")
