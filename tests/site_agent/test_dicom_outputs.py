"""DICOM ingestion end to end: no identifying attribute reaches any output, and the
de-identification report says which were dropped (real pydicom files, real training)."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file

from protocol import IndexMode
from site_agent.data import default_catalog, load_csv_manifest
from site_agent.deid import DeidentificationReport
from site_agent.errors import DeidentificationError
from site_agent.index import IndexSettings
from site_agent.pipeline import deidentification_report_path, write_bundle
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


def _train(tmp_path: Path, sources: dict[str, str]) -> Path:
    rows = ["path,label"]
    for label, path in sources.items():
        rows += [f"{path},{label}"] * 8
    (tmp_path / "manifest.csv").write_text("\n".join(rows))
    task = default_catalog().get("pneumonia-cxr").task
    dataset = load_csv_manifest(tmp_path / "manifest.csv", task, image_size=32)
    assert dataset.source == "csv"
    assert len(dataset.dicom_files) == len(set(sources.values()))
    out = tmp_path / "out" / "bundle"
    write_bundle(
        dataset,
        out,
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
    return out


@pytest.mark.slow
def test_no_identifying_value_in_any_output(tmp_path: Path) -> None:
    secrets = _identifying_values()
    assert secrets  # the sources do carry names, ids and dates
    out = _train(tmp_path, {k: get_testdata_file(v) for k, v in SOURCES.items()})
    outputs = [p for p in (tmp_path / "out").rglob("*") if p.is_file()]
    assert {p.name for p in outputs} >= {
        "model.onnx",
        "card.json",
        "index.npz",
        "metrics.json",
        "best.safetensors",
        "bundle.deidentification.json",
    }
    for path in outputs:
        data = path.read_bytes()
        leaked = [s.decode() for s in secrets if s in data]
        assert not leaked, f"{path.name} holds {leaked}"

    report_path = deidentification_report_path(out)
    report = DeidentificationReport.model_validate_json(report_path.read_text())
    assert report.passed
    assert report.dicom_files == 2
    assert report.allow_list_in_profile == []
    dropped = {d.keyword: d for d in report.dropped}
    assert {"PatientName", "PatientID", "StudyDate", "InstitutionName"} <= set(dropped)
    assert dropped["PatientName"].files == 2
    assert dropped["PatientName"].basic_profile_action == "Z"
    assert "Rows" not in dropped
    assert "PixelData" not in dropped
    assert report.output_scan.values_searched > 10
    assert set(report.output_scan.outputs) >= {
        "bundle/model.onnx",
        "bundle.checkpoints/best.safetensors",
    }
    assert any("burned" in line.lower() for line in report.limitations)


@pytest.mark.slow
def test_a_leaked_identifying_value_stops_the_bundle(tmp_path: Path) -> None:
    # An institution named like the task: its value reaches card.json, so the
    # check must refuse the bundle and name the attribute, not the value.
    dataset = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    dataset.InstitutionName = "Pneumonia-CXR"
    leaky = tmp_path / "leaky.dcm"
    dataset.save_as(leaky)
    with pytest.raises(DeidentificationError, match=r"InstitutionName in bundle/card.json"):
        _train(tmp_path, {"normal": str(leaky), "pneumonia": get_testdata_file("MR_small.dcm")})
    out = tmp_path / "out" / "bundle"
    assert not out.exists()
    assert not any(p.name.endswith(".partial") for p in out.parent.iterdir())
    text = deidentification_report_path(out).read_text()
    report = DeidentificationReport.model_validate_json(text)
    assert not report.passed
    assert {(leak.attribute, leak.output) for leak in report.output_scan.leaks} == {
        ("(0008,0080) InstitutionName", "bundle/card.json"),
        ("(0008,0080) InstitutionName", "bundle/metrics.json"),
    }
    assert "CompressedSamples" not in text
    assert "pneumonia-cxr" not in text.lower()
