"""The adapter check: a pure function, like :func:`registry.verify_publication`, for LoRA adapters.

Bytes in (the adapter bundle's files), an :class:`AcceptedAdapter` out, or a
:class:`RejectedError` naming the rule that failed. It checks what vLLM will
read before vLLM reads it: the signature over every file, the card's schema,
``adapter_config.json`` against an allow-list (a plain LoRA of the card's base
model, shape, modules and layers: no DoRA, no ``modules_to_save``, no
``auto_mapping`` or ``revision``, no path or URL, no key it does not know),
the safetensors header (exactly the LoRA A/B matrices of the declared modules
and layers, float dtypes, shapes of the declared rank, data offsets inside the
file) and the tensors' values (every one finite, each update ``scale * B A``
and each entry within bounds derived from the rank and the base model's
dimensions), and the policy in the card against :func:`protocol.policy_problems`.
Nothing is unpickled; the tensors are read with NumPy from the checked offsets.

Who stands behind an adapter (the consortium's co-signatures) is checked by
:mod:`registry._consortium`; this check is the content.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import numpy as np
from numpy.typing import NDArray

from protocol import AdapterCard, GscoError, SchemaError, policy_problems
from registry._verify import Limits, verify_signed_digests
from registry.errors import RejectCode, RejectedError
from signing import SIGNATURE_FILE, KeyRing, VerifiedManifest, digest_files

__all__ = [
    "ADAPTER_BUNDLE_FILES",
    "AcceptedAdapter",
    "AdapterLimits",
    "WeightsChecked",
    "check_adapter_config",
    "check_adapter_policy",
    "check_adapter_weights",
    "verify_adapter",
]

WEIGHTS_FILE = "adapter_model.safetensors"
CONFIG_FILE = "adapter_config.json"
CARD_FILE = "adapter_card.json"
#: Every file an adapter bundle holds (all required).
ADAPTER_BUNDLE_FILES = frozenset({WEIGHTS_FILE, CONFIG_FILE, CARD_FILE, SIGNATURE_FILE})

#: peft's tensor names for a LoRA matrix of one projection of one decoder layer. The
#: decoder's path is ``model`` in a causal language model and ``language_model.model``
#: in a vision-language one (InternVL-Chat, MedDr): vLLM loads an adapter whose names
#: match no module of the served model and then ignores it, so the path is recorded
#: (:attr:`AcceptedAdapter.module_root`) for the hub to hold against its generalist.
_TENSOR = re.compile(
    r"base_model\.model\.((?:language_model\.)?model)\.layers\.(\d{1,4})\.(self_attn|mlp)"
    r"\.([a-z_]{1,20})\.lora_([AB])\.weight"
)
_DTYPE_BYTES = {"F32": 4, "F16": 2, "BF16": 2}
#: ``adapter_config.json``: every key an adapter may hold, and the values it may take
#: (checked against the card below where the card says more). What vLLM's PEFTHelper and
#: peft need for a plain LoRA; anything else (``auto_mapping``, ``revision``, ``rank_pattern``,
#: DoRA, ``modules_to_save``, a key a newer peft invents) is refused.
_CONFIG_VALUES: dict[str, tuple[object, ...] | None] = {
    "peft_type": ("LORA",),
    "task_type": ("CAUSAL_LM", None),
    "base_model_name_or_path": None,  # the card's base model
    "r": None,  # the card's rank
    "lora_alpha": None,  # the card's alpha
    "target_modules": None,  # the card's modules
    "layers_to_transform": None,  # the card's layers
    "layers_pattern": (None,),
    "bias": ("none",),
    "lora_dropout": None,  # a number in [0, 1)
    "fan_in_fan_out": (False,),
    "use_rslora": (False,),
    "use_dora": (False,),
    "modules_to_save": (None,),
    "init_lora_weights": (True, False, "gaussian"),
    "inference_mode": (True, False),
}
_REQUIRED_KEYS = frozenset(
    {"peft_type", "base_model_name_or_path", "r", "lora_alpha", "target_modules"}
)


@dataclass(frozen=True)
class AdapterLimits:
    """What an adapter may be: sizes in bytes, the largest rank the generalist serves."""

    max_weights_bytes: int = 512 * 1024 * 1024
    max_header_bytes: int = 4 * 1024 * 1024
    max_config_bytes: int = 64 * 1024
    max_card_bytes: int = 256 * 1024
    max_signature_bytes: int = 1024 * 1024
    max_rank: int = 16
    # The values a trained LoRA holds: every entry of A and B at most this in magnitude
    # (A starts within 1/sqrt(in), B at 0; measured: below 0.1 after 15 epochs on 16 cases),
    # and each update scale * B A at most this root-mean-square entry (measured: 0.014; a
    # Llama-family weight's entries are about 0.02 to 0.05, so an update of 0.5 would be
    # ten times the weight it adapts: not a fine-tune).
    max_abs_weight: float = 4.0
    max_update_rms: float = 0.5

    def for_file(self, name: str) -> int:
        """The limit for one file of an adapter bundle (0 for a name no bundle holds)."""
        return {
            WEIGHTS_FILE: self.max_weights_bytes,
            CONFIG_FILE: self.max_config_bytes,
            CARD_FILE: self.max_card_bytes,
            SIGNATURE_FILE: self.max_signature_bytes,
        }.get(name, 0)

    def file_limits(self) -> Limits:
        """The per-file limits in the form the signature stage takes."""
        return Limits(
            max_bundle_bytes=self.max_weights_bytes
            + self.max_config_bytes
            + self.max_card_bytes
            + self.max_signature_bytes,
            max_card_bytes=self.max_card_bytes,
            max_signature_bytes=self.max_signature_bytes,
        )


@dataclass(frozen=True)
class AcceptedAdapter:
    """An adapter bundle that passed every check."""

    card: AdapterCard
    manifest: VerifiedManifest
    size_bytes: int
    tensors: int
    files: Mapping[str, str] = field(repr=False)  # name -> sha256, model.sig included
    module_root: str  # where the adapted decoder layers live (see _TENSOR)

    @property
    def digest(self) -> str:
        """The bundle's content id (see :func:`signing.bundle_digest`)."""
        return self.manifest.digest


def _invalid(message: str) -> RejectedError:
    return RejectedError(RejectCode.INVALID_ADAPTER, message)


def check_adapter_config(data: bytes, card: AdapterCard, limits: AdapterLimits) -> dict[str, Any]:
    """Checks ``adapter_config.json`` against its allow-list and what the card says.

    Raises:
        RejectedError: ``INVALID_ADAPTER`` (``TOO_LARGE`` over the size limit).
    """
    if len(data) > limits.max_config_bytes:
        raise RejectedError(
            RejectCode.TOO_LARGE, f"{CONFIG_FILE} is over {limits.max_config_bytes}"
        )
    try:
        config = json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise _invalid(f"{CONFIG_FILE} is not JSON") from exc
    if not isinstance(config, dict):
        raise _invalid(f"{CONFIG_FILE} is not a JSON object")
    unknown = sorted(set(config) - set(_CONFIG_VALUES))
    if unknown:
        raise _invalid(
            f"{CONFIG_FILE} holds keys an adapter may not: "
            + ", ".join(repr(k[:40]) for k in unknown[:5])
        )
    missing = sorted(_REQUIRED_KEYS - set(config))
    if missing:
        raise _invalid(f"{CONFIG_FILE} lacks {', '.join(missing)}")
    for key, allowed in _CONFIG_VALUES.items():
        if allowed is not None and key in config:
            value = config[key]
            if not any(type(value) is type(ok) and value == ok for ok in allowed):
                raise _invalid(f"{key}={str(value)[:60]!r} is not served: allowed {allowed}")
    base = config["base_model_name_or_path"]
    if base != card.base_model:
        raise _invalid(
            f"base_model_name_or_path {str(base)[:80]!r} is not the card's base model "
            f"{card.base_model!r} (a model name, never a path or URL)"
        )
    rank, alpha = config["r"], config["lora_alpha"]
    if type(rank) is not int or not 1 <= rank <= limits.max_rank:
        raise _invalid(f"rank r={str(rank)[:20]} is outside 1..{limits.max_rank}")
    if rank != card.lora.rank or type(alpha) is not int or alpha != card.lora.alpha:
        raise _invalid(
            f"{CONFIG_FILE} says r={rank}, alpha={str(alpha)[:20]}; the card says "
            f"r={card.lora.rank}, alpha={card.lora.alpha}"
        )
    dropout = config.get("lora_dropout", 0.0)
    if type(dropout) not in (int, float) or not 0.0 <= dropout < 1.0:
        raise _invalid(f"lora_dropout={str(dropout)[:20]} is not a number in [0, 1)")
    targets = config["target_modules"]
    if not isinstance(targets, list) or not all(isinstance(t, str) for t in targets):
        raise _invalid("target_modules must be a list of module names")
    if sorted(targets) != sorted(card.lora.target_modules) or len(set(targets)) != len(targets):
        raise _invalid(
            f"target_modules {sorted(str(t)[:20] for t in targets)[:8]} differ from the card's "
            f"{sorted(card.lora.target_modules)}"
        )
    layers = config.get("layers_to_transform")
    declared = list(card.lora.layers)
    if layers is None:
        layers = []
    if not isinstance(layers, list) or any(type(x) is not int for x in layers):
        raise _invalid("layers_to_transform must be a list of layer numbers or null")
    if sorted(layers) != declared:
        raise _invalid(
            f"layers_to_transform {sorted(layers)[:8]} differ from the card's layers "
            f"{declared[:8] or '(all)'}"
        )
    return config


def _decode(data: bytes, dtype: str, shape: list[int], start: int) -> NDArray[np.float32]:
    """One tensor's values as float32 (``start``: its first byte in ``data``)."""
    count = shape[0] * shape[1]
    if dtype == "BF16":
        raw = np.frombuffer(data, dtype="<u2", count=count, offset=start)
        values = (raw.astype(np.uint32) << 16).view(np.float32)
    else:
        values = np.frombuffer(
            data, dtype="<f4" if dtype == "F32" else "<f2", count=count, offset=start
        ).astype(np.float32)
    return values.reshape(shape)


@dataclass(frozen=True)
class WeightsChecked:
    """What :func:`check_adapter_weights` found: the tensor count and the decoder's path."""

    tensors: int
    module_root: str  # "model" or "language_model.model" (see _TENSOR)


def check_adapter_weights(data: bytes, card: AdapterCard, limits: AdapterLimits) -> WeightsChecked:
    """Checks the adapter's weights: the safetensors header, then every tensor's values.

    The 8-byte length and the JSON header are bounded before parsing; every
    tensor must be a LoRA A or B matrix of a declared module and layer, of a
    float dtype and the declared rank, its bytes inside the file, the data
    region covered exactly once; every declared (layer, module) must have
    both matrices, of one shape per module. Then the values: finite, each
    entry within ``limits.max_abs_weight``, each update ``(alpha / r) B A``
    within ``limits.max_update_rms`` per entry. Returns the tensor count and the
    path of the decoder layers the tensors adapt.

    Raises:
        RejectedError: ``INVALID_ADAPTER`` or ``TOO_LARGE``.
    """
    if len(data) > limits.max_weights_bytes:
        raise RejectedError(
            RejectCode.TOO_LARGE, f"{WEIGHTS_FILE} is larger than {limits.max_weights_bytes}"
        )
    if len(data) < 8:
        raise _invalid(f"{WEIGHTS_FILE} is too short")
    (header_len,) = struct.unpack("<Q", data[:8])
    if header_len > limits.max_header_bytes or 8 + header_len > len(data):
        raise _invalid(
            f"{WEIGHTS_FILE} declares a {header_len}-byte header (file {len(data)} bytes, "
            f"limit {limits.max_header_bytes})"
        )
    try:
        header = json.loads(data[8 : 8 + header_len])
    except (ValueError, RecursionError) as exc:
        raise _invalid(f"{WEIGHTS_FILE}: bad header") from exc
    if not isinstance(header, dict):
        raise _invalid(f"{WEIGHTS_FILE}: bad header")
    header.pop("__metadata__", None)
    body = len(data) - 8 - header_len
    rank = card.lora.rank
    modules = set(card.lora.target_modules)
    layers = set(card.lora.layers)
    spans: list[tuple[int, int]] = []
    roots: set[str] = set()
    found: dict[tuple[int, str, str], tuple[str, list[int], int]] = {}
    for name, entry in header.items():
        match = _TENSOR.fullmatch(name)
        if match is None:
            raise _invalid(f"{WEIGHTS_FILE} holds {name[:120]!r}: not a LoRA matrix")
        roots.add(match.group(1))
        layer, module, which = int(match.group(2)), match.group(4), match.group(5)
        if module not in modules or (layers and layer not in layers):
            raise _invalid(f"{name} adapts layer {layer} {module}, which the card does not declare")
        if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
            raise _invalid(f"{name}: malformed header entry")
        dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
        if dtype not in _DTYPE_BYTES:
            raise _invalid(f"{name} has dtype {str(dtype)[:20]!r}")
        if (
            not isinstance(shape, list)
            or len(shape) != 2
            or not all(type(d) is int and 1 <= d <= 1_000_000 for d in shape)
        ):
            raise _invalid(f"{name} has shape {str(shape)[:60]}")
        if (which == "A" and shape[0] != rank) or (which == "B" and shape[1] != rank):
            raise _invalid(f"{name} has shape {shape}, not of rank {rank}")
        if (
            not isinstance(offsets, list)
            or len(offsets) != 2
            or not all(type(o) is int for o in offsets)
            or not 0 <= offsets[0] <= offsets[1] <= body
            or offsets[1] - offsets[0] != shape[0] * shape[1] * _DTYPE_BYTES[dtype]
        ):
            raise _invalid(f"{name}: data offsets {str(offsets)[:60]} do not fit")
        spans.append((offsets[0], offsets[1]))
        found[(layer, module, which)] = (dtype, shape, 8 + header_len + offsets[0])
    if not spans:
        raise _invalid(f"{WEIGHTS_FILE} holds no tensor")
    if len(roots) > 1:
        raise _invalid(f"{WEIGHTS_FILE} adapts layers under {sorted(roots)}: one model's only")
    spans.sort()
    position = 0
    for start, end in spans:
        if start != position:
            raise _invalid(f"{WEIGHTS_FILE}: tensors overlap or leave gaps")
        position = end
    if position != body:
        raise _invalid(f"{WEIGHTS_FILE}: {body - position} bytes after the tensors")
    _check_coverage(found, card)
    _check_values(data, found, card, limits)
    return WeightsChecked(len(spans), roots.pop())


def _check_coverage(
    found: Mapping[tuple[int, str, str], tuple[str, list[int], int]], card: AdapterCard
) -> None:
    """Every declared module of every adapted layer has A and B, one shape per module."""
    present = {(layer, module) for layer, module, _ in found}
    adapted = sorted({layer for layer, _ in present})
    expected_layers = list(card.lora.layers) or list(range(adapted[-1] + 1))
    if adapted != expected_layers:
        raise _invalid(
            f"{WEIGHTS_FILE} adapts layers {adapted[:8]}; the card declares "
            f"{list(card.lora.layers)[:8] or 'all layers'}"
        )
    shapes: dict[tuple[str, str], list[int]] = {}
    for layer in expected_layers:
        for module in card.lora.target_modules:
            for which in ("A", "B"):
                entry = found.get((layer, module, which))
                if entry is None:
                    raise _invalid(
                        f"{WEIGHTS_FILE} lacks lora_{which} of layer {layer} {module}: "
                        "target_modules must equal the tensors present"
                    )
                first = shapes.setdefault((module, which), entry[1])
                if entry[1] != first:
                    raise _invalid(f"layer {layer} {module} lora_{which} has another shape")
    for module in card.lora.target_modules:
        if shapes[(module, "A")][0] != shapes[(module, "B")][1]:
            raise _invalid(f"{module}: lora_A and lora_B do not share the rank")


def _check_values(
    data: bytes,
    found: Mapping[tuple[int, str, str], tuple[str, list[int], int]],
    card: AdapterCard,
    limits: AdapterLimits,
) -> None:
    """Every value finite and bounded; every update ``scale * B A`` bounded per entry."""
    scale = card.lora.alpha / card.lora.rank
    for (layer, module, which), (dtype, shape, start) in sorted(found.items()):
        if which != "A":
            continue
        a = _decode(data, dtype, shape, start)
        b_dtype, b_shape, b_start = found[(layer, module, "B")]
        b = _decode(data, b_dtype, b_shape, b_start)
        for matrix, part in ((a, "A"), (b, "B")):
            if not np.isfinite(matrix).all():
                raise _invalid(f"layer {layer} {module} lora_{part} holds NaN or infinite values")
            largest = float(np.abs(matrix).max())
            if largest > limits.max_abs_weight:
                raise _invalid(
                    f"layer {layer} {module} lora_{part} holds {largest:.3g}, above the "
                    f"{limits.max_abs_weight:g} a trained LoRA entry stays within"
                )
        # ||B A||_F^2 = sum((B^T B) * (A A^T)): two rank x rank products, never B A itself.
        a64, b64 = a.astype(np.float64), b.astype(np.float64)
        squared = float(((b64.T @ b64) * (a64 @ a64.T)).sum())
        rms = scale * math.sqrt(max(squared, 0.0) / (a.shape[1] * b.shape[0]))
        if rms > limits.max_update_rms:
            raise _invalid(
                f"layer {layer} {module}: the update's entries are {rms:.3g} (root mean "
                f"square), above the {limits.max_update_rms:g} a fine-tune stays within"
            )


def check_adapter_policy(card: AdapterCard) -> None:
    """The policy in an adapter's card, against the bounds of :func:`protocol.policy_problems`.

    Raises:
        RejectedError: ``INVALID_POLICY``.
    """
    if card.policy is None:
        return
    problems = policy_problems(card.policy, consortium=True)
    if problems:
        raise RejectedError(RejectCode.INVALID_POLICY, "; ".join(problems)[:1000])


def verify_adapter(
    files: Mapping[str, bytes],
    keyring: KeyRing,
    *,
    revoked_key_ids: frozenset[str] = frozenset(),
    limits: AdapterLimits | None = None,
) -> AcceptedAdapter:
    """Decides whether an adapter bundle may be published, trusted and loaded.

    Args:
        files: every file of the bundle by relative name, ``model.sig`` included.
        keyring: the enrolled, unrevoked site keys.
        revoked_key_ids: keys that were enrolled and then revoked.
        limits: sizes and the largest rank served.

    Raises:
        RejectedError: with the :class:`RejectCode` of the first rule that failed.
    """
    limits = limits or AdapterLimits()
    sizes = {name: len(data) for name, data in files.items()}
    signature = files.get(SIGNATURE_FILE)
    digests = digest_files(files)
    manifest, size = verify_signed_digests(
        signature,
        digests,
        sizes,
        keyring,
        revoked_key_ids=revoked_key_ids,
        limits=limits.file_limits(),
    )
    unexpected = sorted(set(files) - ADAPTER_BUNDLE_FILES)
    if unexpected:
        raise RejectedError(
            RejectCode.UNEXPECTED_FILE, f"an adapter bundle may not hold {', '.join(unexpected)}"
        )
    missing = sorted(ADAPTER_BUNDLE_FILES - set(files))
    if missing:
        raise RejectedError(
            RejectCode.MISSING_FILE, f"the adapter bundle lacks {', '.join(missing)}"
        )
    try:
        card = AdapterCard.parse(files[CARD_FILE])
    except SchemaError as exc:
        code = RejectCode.OUT_OF_RANGE if exc.wire_overflows else RejectCode.INVALID_CARD
        raise RejectedError(code, f"{CARD_FILE}: {exc}") from exc
    except GscoError as exc:
        raise RejectedError(RejectCode.INVALID_CARD, f"{CARD_FILE}: {exc}") from exc
    if card.site_id != manifest.site_id:
        raise RejectedError(
            RejectCode.SITE_MISMATCH,
            f"signed by site {manifest.site_id!r} but the card names site {card.site_id!r}",
        )
    if card.lora.rank > limits.max_rank:
        raise RejectedError(
            RejectCode.INVALID_ADAPTER,
            f"rank {card.lora.rank} is above the generalist's limit {limits.max_rank}",
        )
    check_adapter_config(files[CONFIG_FILE], card, limits)
    weights = check_adapter_weights(files[WEIGHTS_FILE], card, limits)
    check_adapter_policy(card)
    all_files = dict(digests, **{SIGNATURE_FILE: hashlib.sha256(files[SIGNATURE_FILE]).hexdigest()})
    return AcceptedAdapter(
        card, manifest, size, weights.tensors, MappingProxyType(all_files), weights.module_root
    )
