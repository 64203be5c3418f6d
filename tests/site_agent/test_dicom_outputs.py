"""DICOM ingestion end to end: no identifying attribute reaches any output."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file

from protocol import IndexMode
from site_agent.data import default_catalog, load_csv_manifest
from site_agent.index import IndexSettings
from site_agent.pipeline import write_bundle
from site_agent.train import TrainConfig, WeightsPolicy

SOURCES = {"normal": "CT_small.dcm", "pneumonia": "MR_small.dcm"}
IDENTIFYING = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "StudyDate",
    "SeriesDate",
    "AcquisitionDate",
    "ContentDate",
    "InstitutionName",
    "ReferringPhysicianName",
    "AccessionNumber",
    "StudyInstanceUID",
)


def _identifying_values() -> set[bytes]:
    values = set()
    for name in SOURCES.values():
        dataset = pydicom.dcmread(get_testdata_file(name))
        for keyword in IDENTIFYING:
            value = str(dataset.get(keyword, "") or "").strip()
            if len(value) >= 4:
                values.add(value.encode())
                values.update(part.encode() for part in value.split("^") if len(part) >= 4)
    return values


@pytest.mark.slow
def test_no_identifying_value_in_any_output(tmp_path: Path) -> None:
    secrets = _identifying_values()
    assert secrets  # the sources do carry names, ids and dates
    rows = ["path,label"]
    for label, name in SOURCES.items():
        rows += [f"{get_testdata_file(name)},{label}"] * 8
    (tmp_path / "manifest.csv").write_text("\n".join(rows))
    task = default_catalog().get("pneumonia-cxr").task
    dataset = load_csv_manifest(tmp_path / "manifest.csv", task, image_size=32)
    assert dataset.source == "csv"
    write_bundle(
        dataset,
        tmp_path / "out" / "bundle",
        site_id="st-marys",
        version=1,
        license_id="CC-BY-4.0",
        config=TrainConfig(
            backbone="resnet18",
            weights=WeightsPolicy.SCRATCH,
            input_size=32,
            epochs=1,
            batch_size=4,
        ),
        index=IndexSettings(IndexMode.PROTOTYPE, k=2),
    )
    outputs = [p for p in (tmp_path / "out").rglob("*") if p.is_file()]
    assert {p.name for p in outputs} >= {
        "model.onnx",
        "card.json",
        "index.npz",
        "metrics.json",
        "best.safetensors",
    }
    for path in outputs:
        data = path.read_bytes()
        leaked = [s.decode() for s in secrets if s in data]
        assert not leaked, f"{path.name} holds {leaked}"
