"""The adapter check: a pure function, like :func:`registry.verify_publication`, for LoRA adapters.

Bytes in (the adapter bundle's files), an :class:`AcceptedAdapter` out, or a
:class:`RejectedError` naming the rule that failed. It checks what vLLM will
read before vLLM reads it: the signature over every file, the card's schema,
``adapter_config.json`` (a plain LoRA vLLM serves: no DoRA, no
``modules_to_save``, no LoRA bias, rank within the server's limit, the card's
shape), and the safetensors header (only LoRA A/B matrices of the declared
modules and layers, float dtypes, shapes of the declared rank, data offsets
inside the file). Nothing is unpickled; the tensors' data is never parsed.
"""

from __future__ import annotations

import hashlib
import json
import re
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from protocol import AdapterCard, GscoError, SchemaError
from registry._verify import Limits, verify_signed_digests
from registry.errors import RejectCode, RejectedError
from signing import SIGNATURE_FILE, KeyRing, VerifiedManifest, digest_files

__all__ = [
    "ADAPTER_BUNDLE_FILES",
    "AcceptedAdapter",
    "AdapterLimits",
    "check_adapter_config",
    "check_adapter_weights",
    "verify_adapter",
]

WEIGHTS_FILE = "adapter_model.safetensors"
CONFIG_FILE = "adapter_config.json"
CARD_FILE = "adapter_card.json"
#: Every file an adapter bundle holds (all required).
ADAPTER_BUNDLE_FILES = frozenset({WEIGHTS_FILE, CONFIG_FILE, CARD_FILE, SIGNATURE_FILE})

#: peft's tensor names for a LoRA matrix of one projection of one decoder layer.
_TENSOR = re.compile(
    r"base_model\.model\.model\.layers\.(\d{1,4})\.(self_attn|mlp)\.([a-z_]{1,20})"
    r"\.lora_([AB])\.weight"
)
_DTYPE_BYTES = {"F32": 4, "F16": 2, "BF16": 2}
#: adapter_config.json keys that change what a LoRA computes, and the only values accepted.
_MUST_BE: dict[str, tuple[object, ...]] = {
    "use_dora": (False, None),
    "lora_bias": (False, None),
    "modules_to_save": (None, ()),
    "layer_replication": (None, ()),
    "alora_invocation_tokens": (None, ()),
    "use_qalora": (False, None),
    "use_bdlora": (None,),
    "rank_pattern": (None, {}),
    "alpha_pattern": (None, {}),
    "bias": ("none", None),
}


@dataclass(frozen=True)
class AdapterLimits:
    """What an adapter may be: sizes in bytes, the largest rank the generalist serves."""

    max_weights_bytes: int = 512 * 1024 * 1024
    max_header_bytes: int = 4 * 1024 * 1024
    max_config_bytes: int = 64 * 1024
    max_card_bytes: int = 256 * 1024
    max_signature_bytes: int = 1024 * 1024
    max_rank: int = 16

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

    @property
    def digest(self) -> str:
        """The bundle's content id (see :func:`signing.bundle_digest`)."""
        return self.manifest.digest


def check_adapter_config(data: bytes, card: AdapterCard, limits: AdapterLimits) -> dict[str, Any]:
    """Checks ``adapter_config.json`` against what vLLM serves and what the card says.

    Raises:
        RejectedError: ``INVALID_ADAPTER``.
    """
    if len(data) > limits.max_config_bytes:
        raise RejectedError(
            RejectCode.TOO_LARGE, f"{CONFIG_FILE} is over {limits.max_config_bytes}"
        )
    try:
        config = json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise RejectedError(RejectCode.INVALID_ADAPTER, f"{CONFIG_FILE} is not JSON") from exc
    if not isinstance(config, dict):
        raise RejectedError(RejectCode.INVALID_ADAPTER, f"{CONFIG_FILE} is not a JSON object")
    if config.get("peft_type") != "LORA":
        raise RejectedError(
            RejectCode.INVALID_ADAPTER, f"peft_type is {config.get('peft_type')!r}, not 'LORA'"
        )
    for key, allowed in _MUST_BE.items():
        if key in config and not any(config[key] == value for value in allowed):
            raise RejectedError(
                RejectCode.INVALID_ADAPTER, f"{key}={config[key]!r} is not served by vLLM"
            )
    init = config.get("init_lora_weights", True)
    if init not in (True, False, "gaussian"):
        raise RejectedError(
            RejectCode.INVALID_ADAPTER, f"init_lora_weights={init!r} changes the base weights"
        )
    rank, alpha = config.get("r"), config.get("lora_alpha")
    if type(rank) is not int or not 1 <= rank <= limits.max_rank:
        raise RejectedError(
            RejectCode.INVALID_ADAPTER, f"rank r={rank!r} is outside 1..{limits.max_rank}"
        )
    if rank != card.lora.rank or alpha != card.lora.alpha:
        raise RejectedError(
            RejectCode.INVALID_ADAPTER,
            f"{CONFIG_FILE} says r={rank}, alpha={alpha}; the card says "
            f"r={card.lora.rank}, alpha={card.lora.alpha}",
        )
    targets = config.get("target_modules")
    if isinstance(targets, str) or not isinstance(targets, list):
        raise RejectedError(
            RejectCode.INVALID_ADAPTER, "target_modules must be a list of module names"
        )
    if sorted(targets) != sorted(card.lora.target_modules):
        raise RejectedError(
            RejectCode.INVALID_ADAPTER,
            f"target_modules {sorted(targets)} differ from the card's "
            f"{sorted(card.lora.target_modules)}",
        )
    return config


def check_adapter_weights(data: bytes, card: AdapterCard, limits: AdapterLimits) -> int:
    """Checks the safetensors header of the adapter's weights; returns the tensor count.

    Reads only the 8-byte length and the JSON header (bounded before parsing);
    every tensor must be a LoRA A or B matrix of a declared module (and layer),
    of a float dtype and the declared rank, its bytes inside the file, the
    data region covered exactly once.

    Raises:
        RejectedError: ``INVALID_ADAPTER`` or ``TOO_LARGE``.
    """
    if len(data) > limits.max_weights_bytes:
        raise RejectedError(
            RejectCode.TOO_LARGE, f"{WEIGHTS_FILE} is larger than {limits.max_weights_bytes}"
        )
    if len(data) < 8:
        raise RejectedError(RejectCode.INVALID_ADAPTER, f"{WEIGHTS_FILE} is too short")
    (header_len,) = struct.unpack("<Q", data[:8])
    if header_len > limits.max_header_bytes or 8 + header_len > len(data):
        raise RejectedError(
            RejectCode.INVALID_ADAPTER,
            f"{WEIGHTS_FILE} declares a {header_len}-byte header (file {len(data)} bytes, "
            f"limit {limits.max_header_bytes})",
        )
    try:
        header = json.loads(data[8 : 8 + header_len])
    except (ValueError, RecursionError) as exc:
        raise RejectedError(RejectCode.INVALID_ADAPTER, f"{WEIGHTS_FILE}: bad header") from exc
    if not isinstance(header, dict):
        raise RejectedError(RejectCode.INVALID_ADAPTER, f"{WEIGHTS_FILE}: bad header")
    header.pop("__metadata__", None)
    body = len(data) - 8 - header_len
    rank = card.lora.rank
    modules = set(card.lora.target_modules)
    layers = set(card.lora.layers)
    spans: list[tuple[int, int]] = []
    for name, entry in header.items():
        match = _TENSOR.fullmatch(name)
        if match is None:
            raise RejectedError(
                RejectCode.INVALID_ADAPTER, f"{WEIGHTS_FILE} holds {name!r}: not a LoRA matrix"
            )
        layer, module, which = int(match.group(1)), match.group(3), match.group(4)
        if module not in modules or (layers and layer not in layers):
            raise RejectedError(
                RejectCode.INVALID_ADAPTER,
                f"{name} adapts layer {layer} {module}, which the card does not declare",
            )
        if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
            raise RejectedError(RejectCode.INVALID_ADAPTER, f"{name}: malformed header entry")
        dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
        if dtype not in _DTYPE_BYTES:
            raise RejectedError(RejectCode.INVALID_ADAPTER, f"{name} has dtype {dtype!r}")
        if (
            not isinstance(shape, list)
            or len(shape) != 2
            or not all(type(d) is int and 1 <= d <= 1_000_000 for d in shape)
        ):
            raise RejectedError(RejectCode.INVALID_ADAPTER, f"{name} has shape {shape!r}")
        if (which == "A" and shape[0] != rank) or (which == "B" and shape[1] != rank):
            raise RejectedError(
                RejectCode.INVALID_ADAPTER, f"{name} has shape {shape}, not of rank {rank}"
            )
        if (
            not isinstance(offsets, list)
            or len(offsets) != 2
            or not all(type(o) is int for o in offsets)
            or not 0 <= offsets[0] <= offsets[1] <= body
            or offsets[1] - offsets[0] != shape[0] * shape[1] * _DTYPE_BYTES[dtype]
        ):
            raise RejectedError(
                RejectCode.INVALID_ADAPTER, f"{name}: data offsets {offsets!r} do not fit"
            )
        spans.append((offsets[0], offsets[1]))
    if not spans:
        raise RejectedError(RejectCode.INVALID_ADAPTER, f"{WEIGHTS_FILE} holds no tensor")
    spans.sort()
    position = 0
    for start, end in spans:
        if start != position:
            raise RejectedError(
                RejectCode.INVALID_ADAPTER, f"{WEIGHTS_FILE}: tensors overlap or leave gaps"
            )
        position = end
    if position != body:
        raise RejectedError(
            RejectCode.INVALID_ADAPTER, f"{WEIGHTS_FILE}: {body - position} bytes after the tensors"
        )
    return len(spans)


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
    tensors = check_adapter_weights(files[WEIGHTS_FILE], card, limits)
    all_files = dict(digests, **{SIGNATURE_FILE: hashlib.sha256(files[SIGNATURE_FILE]).hexdigest()})
    return AcceptedAdapter(card, manifest, size, tensors, MappingProxyType(all_files))
