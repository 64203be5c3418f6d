"""Protobuf conversions of the registry's domain models."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from protocol import BundleRef, SchemaError, SiteKey
from protocol._pb import registry_pb2 as pb
from protocol.serde import (
    bundle_ref_from_pb,
    bundle_ref_to_pb,
    site_key_from_pb,
    site_key_to_pb,
)

WHEN = datetime(2026, 11, 22, 6, 30, 15, 123000, tzinfo=UTC)


def test_site_key_round_trip() -> None:
    key = SiteKey(
        site_id="site-a",
        key_id="c" * 64,
        public_key_pem="-----BEGIN PUBLIC KEY-----",
        enrolled_at=WHEN,
    )
    message = site_key_to_pb(key)
    assert site_key_from_pb(pb.SiteKeyMessage.FromString(message.SerializeToString())) == key


def test_bundle_ref_round_trip() -> None:
    ref = BundleRef(
        task_id="pneumonia-cxr",
        site_id="site-a",
        backbone="resnet18",
        version=4,
        bundle_digest="a" * 64,
        key_id="b" * 64,
        published_at=WHEN,
        size_bytes=52_000_000,
        revoked=True,
    )
    wire = bundle_ref_to_pb(ref).SerializeToString()
    assert bundle_ref_from_pb(pb.BundleRefMessage.FromString(wire)) == ref


def test_invalid_message_is_a_schema_error() -> None:
    message = pb.BundleRefMessage(task_id="BAD ID", site_id="site-a", backbone="x", version=0)
    with pytest.raises(SchemaError) as caught:
        bundle_ref_from_pb(message)
    text = str(caught.value)
    assert "task_id" in text
    assert "version" in text
    assert "bundle_digest" in text
