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


def _policy(
    modes: tuple[str, ...] = ("gsco",),
    *,
    weight: float = 1.0,
    bias: tuple[float, float] = (0.5, -0.5),
    gate: float | None = 0.01,
    agreeing: int | None = 2,
    sites: tuple[str, ...] = ("site-a", "site-b", "site-c"),
    n: int = 120,
) -> ArbitrationPolicy:
    fitted = ModePolicy(
        generalist_weight=weight,
        base="voting",
        validation_accuracy={"voting": 0.85, "policy": 0.9},
        weights_tried={"0": 0.85, "1": 0.9},
        gate_p_value=gate,
        label_bias=bias,
        sites_agreeing=agreeing,
    )
    return ArbitrationPolicy(
        task_id="pneumonia-cxr",
        labels=("normal", "pneumonia"),
        model="pneumonia-cxr-lora-0123456789ab",
        n_examples=n,
        modes={Mode(m): fitted for m in modes},
        sites=sites,
    )


def _with_policy(bundle: Path, site: SiteKeys, policy: ArbitrationPolicy) -> None:
    document = json.loads((bundle / "adapter_card.json").read_text())
    document["policy"] = json.loads(policy.model_dump_json())
    (bundle / "adapter_card.json").write_text(json.dumps(document))
    resign(bundle, site)


def test_a_policy_within_its_bounds_passes_and_is_signed(
    bundle: Path, ring_a: KeyRing, site_a: SiteKeys
) -> None:
    _with_policy(bundle, site_a, _policy())
    accepted = verify_adapter(_files(bundle), ring_a)
    assert accepted.card.policy is not None
    document = json.loads((bundle / "adapter_card.json").read_text())
    document["policy"]["modes"]["gsco"]["generalist_weight"] = 4.0
    (bundle / "adapter_card.json").write_text(json.dumps(document))
    assert _refused(bundle, ring_a) is RejectCode.FILE_CHANGED  # edited after signing


@pytest.mark.parametrize(
    "policy",
    [
        _policy(weight=100.0),  # the rogue's full trust
        _policy(bias=(20.0, -20.0)),  # more than 120 cases can justify (log 120 = 4.8)
        _policy(bias=(3.0, -3.0), n=10),  # log 10 = 2.3
        _policy(bias=(0.5, 0.5)),  # not centred
        _policy(gate=None),  # a weight without a gate
        _policy(gate=0.2),  # a gate that did not pass
        _policy(agreeing=1),  # one site of three
        _policy(agreeing=None),  # no record of the sites' agreement
        _policy(agreeing=1, sites=("site-a",)),  # a majority of one is still one site
    ],
    ids=[
        "weight-100",
        "bias-20",
        "bias-small-n",
        "bias-sum",
        "no-gate",
        "failed-gate",
        "minority",
        "no-agreement",
        "one-site",
    ],
)
def test_a_policy_outside_its_bounds_is_refused(
    bundle: Path, ring_a: KeyRing, site_a: SiteKeys, policy: ArbitrationPolicy
) -> None:
    _with_policy(bundle, site_a, policy)
    assert _refused(bundle, ring_a) is RejectCode.INVALID_POLICY


def test_a_policy_that_does_not_fit_the_adapter_is_refused(
    bundle: Path, ring_a: KeyRing, site_a: SiteKeys
) -> None:
    # A policy for a mode the adapter did not learn, or another label set: the schema refuses.
    _with_policy(bundle, site_a, _policy(("gsco", "rad")))
    assert _refused(bundle, ring_a) is RejectCode.INVALID_CARD
    document = json.loads((bundle / "adapter_card.json").read_text())
    policy = json.loads(_policy().model_dump_json())
    policy["labels"] = ["pneumonia", "normal"]
    document["policy"] = policy
    (bundle / "adapter_card.json").write_text(json.dumps(document))
    resign(bundle, site_a)
    assert _refused(bundle, ring_a) is RejectCode.INVALID_CARD


def _set_values(bundle: Path, change: str) -> None:
    """Rewrites the adapter's tensors with ``change`` applied (same names, shapes, dtypes)."""
    import numpy as np
    from safetensors.numpy import load_file, save_file

    tensors = load_file(str(bundle / "adapter_model.safetensors"))
    first = sorted(tensors)[0]
    if change == "nan":
        tensors = {k: np.full_like(v, np.nan) for k, v in tensors.items()}
    elif change == "one-inf":
        tensors[first] = tensors[first].copy()
        tensors[first].flat[3] = np.inf
    elif change == "1e30":
        tensors = {k: np.full_like(v, 1e30) for k, v in tensors.items()}
    elif change == "scaled-1e6":
        tensors = {k: v * 1e6 for k, v in tensors.items()}
    elif change == "update-too-large":  # entries within bounds, their product not
        tensors = {k: np.full_like(v, 1.0) for k, v in tensors.items()}
    save_file(tensors, str(bundle / "adapter_model.safetensors"))


@pytest.mark.parametrize("change", ["nan", "one-inf", "1e30", "scaled-1e6", "update-too-large"])
def test_non_finite_or_out_of_bound_weights_are_refused(
    bundle: Path, ring_a: KeyRing, site_a: SiteKeys, change: str
) -> None:
    _set_values(bundle, change)
    resign(bundle, site_a)
    with pytest.raises(RejectedError) as caught:
        verify_adapter(_files(bundle), ring_a)
    assert caught.value.code is RejectCode.INVALID_ADAPTER
    assert any(
        word in str(caught.value) for word in ("NaN or infinite", "above the", "fine-tune")
    ), caught.value


def test_a_declared_module_without_its_tensors_is_refused(
    bundle: Path, ring_a: KeyRing, site_a: SiteKeys
) -> None:
    from safetensors.numpy import load_file, save_file

    tensors = load_file(str(bundle / "adapter_model.safetensors"))
    dropped = {k: v for k, v in tensors.items() if ".v_proj.lora_B." not in k}
    save_file(dropped, str(bundle / "adapter_model.safetensors"))
    resign(bundle, site_a)
    with pytest.raises(RejectedError, match="target_modules must equal the tensors present"):
        verify_adapter(_files(bundle), ring_a)


@pytest.mark.parametrize(
    "change",
    [
        {"base_model_name_or_path": "/etc/passwd"},
        {"base_model_name_or_path": "../../../models/other"},
        {"base_model_name_or_path": "https://example.org/model"},
        {"auto_mapping": {"base_model_class": "os.system", "parent_library": "os"}},
        {"revision": "../../x"},
        {"surprise": 1},
        {"target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "lm_head"]},
        {"target_modules": ["q_proj", "k_proj", "v_proj", "embed_tokens"]},
        {"layers_to_transform": [0, 1]},
        {"layers_to_transform": None},
        {"lora_dropout": "0.1"},
        {"r": True},
        {"use_rslora": True},
        {"rank_pattern": {"q_proj": 64}},
    ],
    ids=[
        "abs-path",
        "dotdot",
        "url",
        "auto_mapping",
        "revision",
        "unknown-key",
        "lm_head",
        "embed_tokens",
        "layers-contradict",
        "layers-all",
        "dropout-string",
        "rank-bool",
        "rslora",
        "rank_pattern",
    ],
)
def test_config_outside_the_allow_list_is_refused(
    bundle: Path, ring_a: KeyRing, site_a: SiteKeys, change: dict[str, object]
) -> None:
    edit_json(bundle / "adapter_config.json", **change)
    resign(bundle, site_a)
    assert _refused(bundle, ring_a) is RejectCode.INVALID_ADAPTER


@pytest.mark.parametrize(
    "base_model", ["/etc/passwd", "../models/x", "https://example.org/m", "a/b/c", "x..y"]
)
def test_a_card_naming_a_path_or_url_as_its_base_model_fails_its_schema(
    bundle: Path, ring_a: KeyRing, site_a: SiteKeys, base_model: str
) -> None:
    edit_json(bundle / "adapter_card.json", base_model=base_model)
    edit_json(bundle / "adapter_config.json", base_model_name_or_path=base_model)
    resign(bundle, site_a)
    assert _refused(bundle, ring_a) is RejectCode.INVALID_CARD
