"""Wire schemas: round trips, strictness, and the cross-field rules."""

from __future__ import annotations

import json
from typing import Any

import pytest

from protocol import (
    DiagnoseRequest,
    DiagnoseResponse,
    EncodingError,
    ImagePayload,
    Mode,
    SchemaError,
    SpecialistCard,
    StrictModel,
    TaskSpec,
    canonical_digest,
    canonical_json,
)
from tests.conftest import card_dict

TASK = {
    "task_id": "breast-us",
    "modality": "breast ultrasound",
    "labels": ["malignant", "normal or benign"],
    "task_type": "binary",
    "synonyms": {"malignant": ["cancer", "carcinoma"]},
}


def response_dict(**overrides: Any) -> dict[str, Any]:
    provenance = {
        "bundle_digest": "ab" * 32,
        "site_id": "site-a",
        "backbone": "resnet18",
        "version": 3,
    }
    response: dict[str, Any] = {
        "request_id": "req-1",
        "task_id": "pneumonia-cxr",
        "label": "pneumonia",
        "scores": {"normal": 0.1, "pneumonia": 0.9},
        "mode_requested": "gsco",
        "mode_used": "gsco",
        "generalist_saw_image": False,
        "moed": [
            {
                "specialist": provenance,
                "label": "pneumonia",
                "probability": 0.8,
                "probabilities": {"normal": 0.2, "pneumonia": 0.8},
            }
        ],
        "rad": [
            {
                "label": "pneumonia",
                "similarity": 0.93,
                "site_id": "site-a",
                "bundle_digest": "ab" * 32,
            }
        ],
        "specialists": [provenance],
        "registry_snapshot_version": 7,
        "generalist": {
            "model": "SmolLM2-135M-Instruct",
            "saw_image": False,
            "prompt": "You are a helpful medical assistant.",
            "raw_answer": "pneumonia",
            "latency_ms": 120.5,
        },
        "timings": {"specialists_ms": 4.0, "generalist_ms": 120.5, "total_ms": 130.0},
        "warnings": ["the generalist is text-only: it did not see the image"],
    }
    response.update(overrides)
    return response


ROUND_TRIPS = [
    (SpecialistCard, card_dict()),
    (TaskSpec, TASK),
    (
        DiagnoseRequest,
        {
            "task_id": "pneumonia-cxr",
            "image": {"media_type": "image/png", "data_base64": "iVBORw0KGgo="},
            "mode": "voting",
        },
    ),
    (DiagnoseResponse, response_dict()),
]


@pytest.mark.parametrize(
    ("model", "document"), ROUND_TRIPS, ids=lambda v: getattr(v, "__name__", "")
)
def test_round_trip_through_json(model: type[StrictModel], document: dict[str, Any]) -> None:
    parsed = model.parse(json.dumps(document).encode())
    again = model.parse(canonical_json(parsed))
    assert again == parsed
    assert canonical_json(again) == canonical_json(parsed)
    assert parsed.schema_version == 1  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("model", "document"), ROUND_TRIPS, ids=lambda v: getattr(v, "__name__", "")
)
def test_unknown_top_level_field_is_rejected(
    model: type[StrictModel], document: dict[str, Any]
) -> None:
    with pytest.raises(SchemaError, match="patient_name: Extra inputs are not permitted"):
        model.parse({**document, "patient_name": "Jane Doe"})


def test_unknown_nested_field_is_rejected() -> None:
    card = card_dict()
    card["data_summary"] = {**card["data_summary"], "patient_ids": ["123"]}
    with pytest.raises(SchemaError, match=r"data_summary\.patient_ids"):
        SpecialistCard.parse(card)


def test_unknown_schema_version_is_rejected() -> None:
    with pytest.raises(SchemaError, match="schema_version"):
        SpecialistCard.parse(card_dict(schema_version=2))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"labels": ["normal", "Normal"]}, "unique"),
        ({"labels": ["a", "b", "c"]}, "binary task has exactly 2 labels"),
        ({"task_id": "Pneumonia CXR"}, "task_id"),
        ({"site_id": "../etc"}, "site_id"),
        ({"version": 0}, "version"),
        ({"calibration_temperature": 0}, "calibration_temperature"),
        ({"created_at": "2026-11-22T06:00:00"}, "timezone"),
        (
            {"preprocessing": {"input_size": [28, 28], "channels": 3, "mean": [0.5], "std": [0.5]}},
            "one value per channel",
        ),
        (
            {"metrics": {**card_dict()["metrics"], "per_class_recall": {"covid": 0.5}}},
            "not in the label set",
        ),
        (
            {
                "index": {
                    "mode": "prototype",
                    "embedding_dim": 8,
                    "entries_per_class": {"normal": 1},
                }
            },
            "minimum group size",
        ),
    ],
)
def test_card_rules(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(SchemaError, match=message):
        SpecialistCard.parse(card_dict(**overrides))


def test_raw_index_needs_no_k() -> None:
    card = SpecialistCard.parse(
        card_dict(index={"mode": "raw", "embedding_dim": 8, "entries_per_class": {"normal": 3}})
    )
    assert card.index.min_group_size is None


def test_card_names_its_task() -> None:
    card = SpecialistCard.parse(card_dict())
    assert card.task_spec() == TaskSpec(
        task_id="pneumonia-cxr",
        modality="chest X-ray",
        labels=("normal", "pneumonia"),
        task_type="binary",
    )


def test_task_synonyms_must_name_labels() -> None:
    with pytest.raises(SchemaError, match="synonyms for labels not in the label set"):
        TaskSpec.parse({**TASK, "synonyms": {"benign": ["harmless"]}})


def test_models_are_immutable() -> None:
    card = SpecialistCard.parse(card_dict())
    with pytest.raises(ValueError, match="frozen"):
        card.version = 2  # type: ignore[misc]


def test_bad_bytes_get_typed_errors() -> None:
    with pytest.raises(EncodingError):
        SpecialistCard.parse(b"\xff\xfe not json")
    with pytest.raises(SchemaError, match="expected a JSON object"):
        SpecialistCard.parse(b"[1, 2]")


def test_request_defaults_and_image_decoding() -> None:
    request = DiagnoseRequest.parse(
        {
            "task_id": "pneumonia-cxr",
            "image": {"media_type": "application/x-npy", "data_base64": "AAEC"},
        }
    )
    assert request.mode is Mode.GSCO
    assert request.top_k == 5
    assert request.image.decode() == b"\x00\x01\x02"


def test_request_rejects_bad_base64_and_unknown_media() -> None:
    with pytest.raises(SchemaError, match="not valid base64"):
        ImagePayload.parse({"media_type": "image/png", "data_base64": "not base64!"})
    with pytest.raises(SchemaError, match="media_type"):
        ImagePayload.parse({"media_type": "image/gif", "data_base64": "AAEC"})


def test_response_rejects_probabilities_out_of_range() -> None:
    with pytest.raises(SchemaError, match=r"scores\.normal"):
        DiagnoseResponse.parse(response_dict(scores={"normal": 1.5, "pneumonia": 0.1}))


def test_canonical_encoding_is_order_independent() -> None:
    a = {"b": 1, "a": [1, {"y": 2, "x": "é"}]}
    b = {"a": [1, {"x": "é", "y": 2}], "b": 1}
    assert canonical_json(a) == canonical_json(b) == '{"a":[1,{"x":"é","y":2}],"b":1}'.encode()
    assert canonical_digest(a) == canonical_digest(b)


def test_canonical_encoding_refuses_nan() -> None:
    with pytest.raises(EncodingError):
        canonical_json({"x": float("nan")})
