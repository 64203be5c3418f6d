"""Conversion between the registry's protobuf messages and the domain models.

This is the only module that knows both sides. Messages coming in are
validated into strict models (``SchemaError`` when they do not fit), so the
rest of the code never touches generated types.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from protocol._base import _problems
from protocol._pb import registry_pb2 as pb
from protocol._registry import BundleRef, SiteKey, UnreadableBundle
from protocol.errors import SchemaError

__all__ = [
    "bundle_ref_from_pb",
    "bundle_ref_to_pb",
    "site_key_from_pb",
    "site_key_to_pb",
    "unreadable_from_pb",
    "unreadable_to_pb",
]


def _to_ms(moment: datetime) -> int:
    return round(moment.timestamp() * 1000)


def _from_ms(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


def _validate(
    model: type[SiteKey] | type[BundleRef] | type[UnreadableBundle], fields: dict[str, Any]
) -> Any:
    try:
        return model.model_validate(fields)
    except ValidationError as exc:
        raise SchemaError(model.__name__, _problems(exc)) from exc


def site_key_to_pb(key: SiteKey) -> pb.SiteKeyMessage:
    """Encodes a :class:`SiteKey`."""
    return pb.SiteKeyMessage(
        site_id=key.site_id,
        key_id=key.key_id,
        public_key_pem=key.public_key_pem,
        enrolled_at_unix_ms=_to_ms(key.enrolled_at),
        revoked=key.revoked,
    )


def site_key_from_pb(message: pb.SiteKeyMessage) -> SiteKey:
    """Decodes and validates a :class:`SiteKey`."""
    key: SiteKey = _validate(
        SiteKey,
        {
            "site_id": message.site_id,
            "key_id": message.key_id,
            "public_key_pem": message.public_key_pem,
            "enrolled_at": _from_ms(message.enrolled_at_unix_ms),
            "revoked": message.revoked,
        },
    )
    return key


def bundle_ref_to_pb(ref: BundleRef) -> pb.BundleRefMessage:
    """Encodes a :class:`BundleRef`."""
    return pb.BundleRefMessage(
        task_id=ref.task_id,
        site_id=ref.site_id,
        backbone=ref.backbone,
        version=ref.version,
        bundle_digest=ref.bundle_digest,
        key_id=ref.key_id,
        published_at_unix_ms=_to_ms(ref.published_at),
        size_bytes=ref.size_bytes,
        revoked=ref.revoked,
        kind=ref.kind,
    )


def bundle_ref_from_pb(message: pb.BundleRefMessage) -> BundleRef:
    """Decodes and validates a :class:`BundleRef`."""
    ref: BundleRef = _validate(
        BundleRef,
        {
            "task_id": message.task_id,
            "site_id": message.site_id,
            "backbone": message.backbone,
            "version": message.version,
            "bundle_digest": message.bundle_digest,
            "key_id": message.key_id,
            "published_at": _from_ms(message.published_at_unix_ms),
            "size_bytes": message.size_bytes,
            "revoked": message.revoked,
            "kind": message.kind or "specialist",
        },
    )
    return ref


def unreadable_to_pb(row: UnreadableBundle) -> pb.UnreadableBundleMessage:
    """Encodes an :class:`UnreadableBundle`."""
    return pb.UnreadableBundleMessage(bundle_digest=row.bundle_digest, problem=row.problem)


def unreadable_from_pb(message: pb.UnreadableBundleMessage) -> UnreadableBundle:
    """Decodes an :class:`UnreadableBundle` (over-long texts are cut, not refused)."""
    row: UnreadableBundle = _validate(
        UnreadableBundle,
        {"bundle_digest": message.bundle_digest[:200], "problem": message.problem[:2000]},
    )
    return row
