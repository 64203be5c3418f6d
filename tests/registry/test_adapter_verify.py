"""The adapter check: a real peft adapter of SmolLM2 passes; every kind of bad bundle is refused.

The bundle is trained for real (seconds); the bad ones are edits of it, signed
again where the point is that a signing site still cannot get them through.
"""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import pytest

from protocol import ArbitrationPolicy, Mode, ModePolicy
from registry import AdapterLimits, RejectCode, RejectedError, verify_adapter
from signing import KeyRing
from tests.adapters import adapter_bundle, edit_json, reranked_bundle, resign
from tests.conftest import SiteKeys

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def signed(tmp_path_factory: pytest.TempPathFactory, site_a: SiteKeys) -> Path:
    return adapter_bundle(tmp_path_factory.mktemp("adapter") / "bundle", site_a)


@pytest.fixture
def bundle(signed: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "bundle"
    shutil.copytree(signed, copy)
    return copy


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir()}


def _refused(folder: Path, ring: KeyRing, **limits: int) -> RejectCode:
    with pytest.raises(RejectedError) as caught:
        verify_adapter(_files(folder), ring, limits=AdapterLimits(**limits))
    return caught.value.code


def test_a_real_adapter_passes(signed: Path, ring_a: KeyRing) -> None:
    accepted = verify_adapter(_files(signed), ring_a)
    assert accepted.card.site_id == "site-a"
    assert accepted.tensors == 2 * 2 * 4  # A and B, 2 layers, 4 projections
    assert len(accepted.digest) == 64
    config = json.loads((signed / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == accepted.card.base_model  # not a site path
    assert sorted(p.name for p in signed.iterdir()) == [
        "adapter_card.json",
        "adapter_config.json",
        "adapter_model.safetensors",
        "model.sig",
    ]


def test_tampered_weights_are_refused(bundle: Path, ring_a: KeyRing) -> None:
    weights = bundle / "adapter_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    assert _refused(bundle, ring_a) is RejectCode.FILE_CHANGED


def test_an_unsigned_or_foreign_bundle_is_refused(
    bundle: Path, ring_a: KeyRing, site_b: SiteKeys
) -> None:
    resign(bundle, site_b)
    assert _refused(bundle, ring_a) is RejectCode.UNKNOWN_KEY
    (bundle / "model.sig").unlink()
    assert _refused(bundle, ring_a) is RejectCode.UNSIGNED


def test_an_added_file_is_refused(bundle: Path, ring_a: KeyRing, site_a: SiteKeys) -> None:
    (bundle / "extra.py").write_text("import os")
    assert _refused(bundle, ring_a) is RejectCode.FILE_ADDED
    resign(bundle, site_a)
    assert _refused(bundle, ring_a) is RejectCode.UNEXPECTED_FILE


@pytest.mark.parametrize(
    "change",
    [
        {"use_dora": True},
        {"modules_to_save": ["lm_head"]},
        {"lora_bias": True},
        {"init_lora_weights": "pissa"},
        {"peft_type": "IA3"},
        {"r": 4},
        {"target_modules": ["q_proj"]},
        {"target_modules": "all-linear"},
    ],
    ids=lambda c: next(iter(c)),
)
def test_configs_vllm_would_not_serve_as_declared_are_refused(
    bundle: Path, ring_a: KeyRing, site_a: SiteKeys, change: dict[str, object]
) -> None:
    edit_json(bundle / "adapter_config.json", **change)
    resign(bundle, site_a)
    assert _refused(bundle, ring_a) is RejectCode.INVALID_ADAPTER


def test_a_card_naming_another_site_or_failing_its_schema_is_refused(
    bundle: Path, ring_a: KeyRing, site_a: SiteKeys
) -> None:
    edit_json(bundle / "adapter_card.json", site_id="site-b")
    resign(bundle, site_a)
    assert _refused(bundle, ring_a) is RejectCode.SITE_MISMATCH
    edit_json(bundle / "adapter_card.json", site_id="site-a", labels=["normal"])
    resign(bundle, site_a)
    assert _refused(bundle, ring_a) is RejectCode.INVALID_CARD


def test_a_rank_over_the_generalists_limit_is_refused(
    signed: Path, tmp_path: Path, ring_a: KeyRing, site_a: SiteKeys
) -> None:
    big = reranked_bundle(tmp_path / "r32", site_a, signed, 32)
    assert _refused(big, ring_a) is RejectCode.INVALID_ADAPTER  # default max_rank 16
    assert (
        verify_adapter(_files(big), ring_a, limits=AdapterLimits(max_rank=32)).card.lora.rank == 32
    )


def _rewrite_weights(bundle: Path, header: dict[str, object], body: bytes) -> None:
    raw = json.dumps(header).encode()
    (bundle / "adapter_model.safetensors").write_bytes(struct.pack("<Q", len(raw)) + raw + body)


def _header(bundle: Path) -> tuple[dict[str, object], bytes]:
    data = (bundle / "adapter_model.safetensors").read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8 : 8 + length]), data[8 + length :]


def test_weights_beyond_a_lora_are_refused(bundle: Path, ring_a: KeyRing, site_a: SiteKeys) -> None:
    header, body = _header(bundle)
    name = next(k for k in header if k != "__metadata__")
    entry = header.pop(name)
    header["base_model.model.lm_head.weight"] = entry  # the vocabulary projection: never
    _rewrite_weights(bundle, header, body)
    resign(bundle, site_a)
    assert _refused(bundle, ring_a) is RejectCode.INVALID_ADAPTER


def test_a_tensor_of_an_undeclared_layer_is_refused(
    bundle: Path, ring_a: KeyRing, site_a: SiteKeys
) -> None:
    header, body = _header(bundle)
    name = next(k for k in header if k != "__metadata__")
    entry = header.pop(name)
    header[name.replace(name.split(".")[4], "0", 1)] = entry  # layer 0: not in the card
    _rewrite_weights(bundle, header, body)
    resign(bundle, site_a)
    assert _refused(bundle, ring_a) is RejectCode.INVALID_ADAPTER


@pytest.mark.parametrize("attack", ["header-bomb", "overlap", "dtype", "trailing"])
def test_malformed_safetensors_are_refused_from_the_header(
    bundle: Path, ring_a: KeyRing, site_a: SiteKeys, attack: str
) -> None:
    weights = bundle / "adapter_model.safetensors"
    header, body = _header(bundle)
    names = sorted(k for k in header if k != "__metadata__")
    if attack == "header-bomb":  # declares a header larger than the file
        weights.write_bytes(struct.pack("<Q", 1 << 40) + weights.read_bytes()[8:])
    else:
        if attack == "overlap":
            header[names[1]]["data_offsets"] = header[names[0]]["data_offsets"]  # type: ignore[index]
        elif attack == "dtype":
            header[names[0]]["dtype"] = "I64"  # type: ignore[index]
        else:
            body += b"\0" * 64
        _rewrite_weights(bundle, header, body)
    resign(bundle, site_a)
    assert _refused(bundle, ring_a) is RejectCode.INVALID_ADAPTER


def _policy(modes: tuple[str, ...] = ("gsco",)) -> ArbitrationPolicy:
    fitted = ModePolicy(
        generalist_weight=1.0,
        validation_accuracy={"policy": 0.9},
        weights_tried={"0": 0.8, "1": 0.9},
        label_bias=(0.5, -0.5),
    )
    return ArbitrationPolicy(
        task_id="pneumonia-cxr",
        labels=("normal", "pneumonia"),
        model="pneumonia-cxr-lora-0123456789ab",
        n_examples=40,
        modes={Mode(m): fitted for m in modes},
    )


def test_the_policy_version_of_an_adapter_passes_and_its_policy_is_signed(
    signed: Path, ring_a: KeyRing, site_a: SiteKeys, tmp_path: Path
) -> None:
    from site_agent.adapter import write_policy_version

    card, _ = write_policy_version(signed, tmp_path / "v2", _policy(), site_a.private)
    assert card.version == 2
    assert card.policy is not None
    assert all(m.model is None for m in card.policy.modes.values())  # bound to this adapter
    accepted = verify_adapter(_files(tmp_path / "v2"), ring_a)
    assert accepted.card == card
    # The same weights as the first version, under another digest.
    first = verify_adapter(_files(signed), ring_a)
    assert accepted.digest != first.digest
    assert (tmp_path / "v2" / "adapter_model.safetensors").read_bytes() == (
        signed / "adapter_model.safetensors"
    ).read_bytes()
    # A policy edited after signing is refused.
    document = json.loads((tmp_path / "v2" / "adapter_card.json").read_text())
    document["policy"]["modes"]["gsco"]["generalist_weight"] = 100.0
    (tmp_path / "v2" / "adapter_card.json").write_text(json.dumps(document))
    assert _refused(tmp_path / "v2", ring_a) is RejectCode.FILE_CHANGED


def test_a_policy_that_does_not_fit_the_adapter_is_refused(
    signed: Path, bundle: Path, ring_a: KeyRing, site_a: SiteKeys, tmp_path: Path, site_b: SiteKeys
) -> None:
    from site_agent.adapter import write_policy_version
    from site_agent.errors import AdapterTrainingError

    with pytest.raises(AdapterTrainingError, match="did not learn"):
        write_policy_version(signed, tmp_path / "rad", _policy(("gsco", "rad")), site_a.private)
    with pytest.raises(AdapterTrainingError, match="cannot add the policy"):
        write_policy_version(signed, tmp_path / "foreign", _policy(), site_b.private)
    # A card whose policy is for another label set, signed: the schema refuses it.
    document = json.loads((bundle / "adapter_card.json").read_text())
    policy = json.loads(_policy().model_dump_json())
    policy["labels"] = ["pneumonia", "normal"]
    document["policy"] = policy
    (bundle / "adapter_card.json").write_text(json.dumps(document))
    resign(bundle, site_a)
    assert _refused(bundle, ring_a) is RejectCode.INVALID_CARD
