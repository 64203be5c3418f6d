"""The Basic Profile table and the output scan of the de-identification report."""

from __future__ import annotations

from pathlib import Path

import pydicom
from pydicom.data import get_testdata_file
from pydicom.datadict import tag_for_keyword

from protocol import DICOM_PIXEL_TAGS
from site_agent.deid import build_report, profile_entry

SOURCES = [Path(get_testdata_file(name)) for name in ("CT_small.dcm", "MR_small.dcm")]


def _tag(keyword: str) -> int:
    tag = tag_for_keyword(keyword)
    assert tag is not None
    return int(tag)


def test_profile_lists_the_identifying_attributes() -> None:
    for keyword, action in [
        ("PatientName", "Z"),
        ("PatientID", "Z/D"),
        ("PatientBirthDate", "Z"),
        ("AccessionNumber", "Z"),
        ("InstitutionName", "X/Z/D"),
        ("SOPInstanceUID", "U"),
        ("StudyDate", "Z"),
    ]:
        entry = profile_entry(_tag(keyword))
        assert entry is not None, keyword
        assert entry.action == action, keyword
    assert profile_entry(0x60023000) is not None  # Overlay Data, repeating group 60xx
    assert profile_entry(0x00091001) is not None  # private: removed by the profile
    assert profile_entry(_tag("Modality")) is None


def test_the_allow_list_reads_nothing_the_profile_removes() -> None:
    assert [k for k in DICOM_PIXEL_TAGS if profile_entry(_tag(k))] == []


def test_clean_outputs_pass_and_dates_inside_numbers_do_not_count(tmp_path: Path) -> None:
    date = str(pydicom.dcmread(SOURCES[0]).StudyDate)
    clean = tmp_path / "metrics.json"
    clean.write_text(f'{{"loss": 0.5{date}3, "label": "normal"}}')
    report = build_report(SOURCES, {"bundle/metrics.json": clean})
    assert report.passed, report.output_scan.leaks
    assert report.output_scan.values_searched > 0
    assert report.dicom_files == 2


def test_names_dates_and_uids_are_found_in_any_case(tmp_path: Path) -> None:
    source = pydicom.dcmread(SOURCES[0])
    family = str(source.PatientName).split("^")[0]
    leaky = tmp_path / "card.json"
    leaky.write_text(f'{{"note": "{family.lower()}", "d": "{source.StudyDate}"}}')
    binary = tmp_path / "model.onnx"
    binary.write_bytes(b"\x00\x93" + str(source.SOPInstanceUID).encode() + b"\x01")
    report = build_report(SOURCES, {"b/card.json": leaky, "b/model.onnx": binary})
    found = {(leak.attribute, leak.output) for leak in report.output_scan.leaks}
    assert ("(0010,0010) PatientName", "b/card.json") in found
    assert ("(0008,0018) SOPInstanceUID", "b/model.onnx") in found
    assert any(a.endswith("Date") and o == "b/card.json" for a, o in found)
    assert not report.passed
    assert family.lower() not in report.model_dump_json().lower()


def test_non_ascii_names_are_found_raw_and_json_escaped(tmp_path: Path) -> None:
    source = pydicom.dcmread(SOURCES[0])
    source.SpecificCharacterSet = "ISO_IR 192"  # UTF-8
    source.PatientName = "Müller^Jürgen"
    dicom = tmp_path / "umlaut.dcm"
    source.save_as(dicom)
    card = tmp_path / "card.json"
    card.write_text('{"note": "j\\u00fcrgen"}')  # what json.dumps writes by default
    model = tmp_path / "model.onnx"
    model.write_bytes(b"\x00\x01" + "Müller".encode() + b"\xff")
    report = build_report([dicom], {"card.json": card, "model.onnx": model})
    found = {(leak.attribute, leak.output) for leak in report.output_scan.leaks}
    assert found == {
        ("(0010,0010) PatientName", "card.json"),
        ("(0010,0010) PatientName", "model.onnx"),
    }
    assert report.output_scan.attributes_unreadable == 0
