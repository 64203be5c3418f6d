"""Domain models of the registry service (their protobuf twins live in ``proto/``)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AwareDatetime, StringConstraints

from protocol._base import Count, Identifier, Sha256Hex, StrictModel, Version

__all__ = ["ADAPTER_BACKBONE", "BundleKind", "BundleRef", "SiteKey", "UnreadableBundle"]

#: Upper bound on an encoded P-256 public key (PEM is about 180 bytes).
MAX_PUBLIC_KEY_PEM = 4096


class SiteKey(StrictModel):
    """A site's enrolled signing key. ``key_id`` is the sha256 of the PEM bytes."""

    site_id: Identifier
    key_id: Sha256Hex
    public_key_pem: Annotated[str, StringConstraints(min_length=1, max_length=MAX_PUBLIC_KEY_PEM)]
    enrolled_at: AwareDatetime
    revoked: bool = False


#: What a registry bundle holds.
BundleKind = Literal["specialist", "adapter"]
#: The ``backbone`` of adapter bundles: their version line per (site, task).
ADAPTER_BACKBONE = "generalist-lora"


class BundleRef(StrictModel):
    """One published bundle as the registry lists it."""

    task_id: Identifier
    site_id: Identifier
    backbone: Identifier
    version: Version
    bundle_digest: Sha256Hex
    key_id: Sha256Hex
    published_at: AwareDatetime
    size_bytes: Count
    revoked: bool = False
    # What the bundle holds: a specialist (backbone: its architecture) or a LoRA adapter of
    # the generalist (backbone: ADAPTER_BACKBONE; see registry.verify_adapter).
    kind: BundleKind = "specialist"


class UnreadableBundle(StrictModel):
    """A stored bundle row that no longer fits :class:`BundleRef`: listed apart, never served."""

    bundle_digest: Annotated[str, StringConstraints(max_length=200)]
    problem: Annotated[str, StringConstraints(max_length=2000)]
