"""The registry's gRPC service, started for real on loopback."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from protocol._pb import registry_pb2 as pb
from protocol._pb import registry_pb2_grpc as pb_grpc
from registry import (
    PermissionDeniedError,
    Registry,
    RegistryClient,
    RejectCode,
    RejectedError,
    keyring_of,
    verify_publication,
)
from signing import sign_bundle
from tests.bundles import external_data_onnx, read_files, tiny_onnx, write_bundle_files
from tests.conftest import SiteKeys
from tests.servers import RunningRegistry, start_registry


def test_publish_fetch_and_verify(
    running: RunningRegistry, tmp_path: Path, site_a: SiteKeys
) -> None:
    files = read_files(write_bundle_files(tmp_path / "b", site_a))
    with running.client() as client:
        ref = client.publish_files(files, site_a.private)
        assert [b.bundle_digest for b in client.bundles(task_id="pneumonia-cxr")] == [
            ref.bundle_digest
        ]
        fetched = client.fetch(ref.bundle_digest)
        assert fetched == files
        accepted = verify_publication(fetched, keyring_of(client.sites()))
    assert accepted.digest == ref.bundle_digest
    assert accepted.card.site_id == "site-a"


def _extra_signed_file(directory: Path, site: SiteKeys) -> dict[str, bytes]:
    (directory / "notes.txt").write_text("x")
    sign_bundle(directory, site.private)
    return read_files(directory)


Scenario = Callable[[Path, SiteKeys, SiteKeys, RegistryClient], dict[str, bytes]]


def _unsigned(d: Path, a: SiteKeys, b: SiteKeys, c: RegistryClient) -> dict[str, bytes]:
    return read_files(write_bundle_files(d, a, sign=False))


def _unenrolled(d: Path, a: SiteKeys, b: SiteKeys, c: RegistryClient) -> dict[str, bytes]:
    return read_files(write_bundle_files(d, b))


def _revoked(d: Path, a: SiteKeys, b: SiteKeys, c: RegistryClient) -> dict[str, bytes]:
    c.enroll("site-b", b.public.pem)
    c.revoke_key(b.public.key_id, "compromised")
    return read_files(write_bundle_files(d, b))


def _a_naming_b(d: Path, a: SiteKeys, b: SiteKeys, c: RegistryClient) -> dict[str, bytes]:
    c.enroll("site-b", b.public.pem)
    return read_files(write_bundle_files(d, a, card_overrides={"site_id": "site-b"}))


def _tampered(d: Path, a: SiteKeys, b: SiteKeys, c: RegistryClient) -> dict[str, bytes]:
    files = read_files(write_bundle_files(d, a))
    files["model.onnx"] = tiny_onnx(seed=7)
    return files


def _extra_file(d: Path, a: SiteKeys, b: SiteKeys, c: RegistryClient) -> dict[str, bytes]:
    return {**read_files(write_bundle_files(d, a)), "index.npy": b"\x93NUMPY"}


def _replayed(d: Path, a: SiteKeys, b: SiteKeys, c: RegistryClient) -> dict[str, bytes]:
    old = read_files(write_bundle_files(d / "v1", a, version=1))
    c.publish_files(read_files(write_bundle_files(d / "v2", a, version=2)), a.private)
    return old


def _oversized(d: Path, a: SiteKeys, b: SiteKeys, c: RegistryClient) -> dict[str, bytes]:
    return read_files(write_bundle_files(d, a, padding_bytes=1_500_000))


def _unknown_card_field(d: Path, a: SiteKeys, b: SiteKeys, c: RegistryClient) -> dict[str, bytes]:
    return read_files(write_bundle_files(d, a, card_overrides={"mrn": "12345678"}))


def _external_data(d: Path, a: SiteKeys, b: SiteKeys, c: RegistryClient) -> dict[str, bytes]:
    return read_files(write_bundle_files(d, a, model=external_data_onnx("/etc/shadow")))


def _dotdot(d: Path, a: SiteKeys, b: SiteKeys, c: RegistryClient) -> dict[str, bytes]:
    return {**read_files(write_bundle_files(d, a)), "../evil.onnx": b"x"}


def _absolute(d: Path, a: SiteKeys, b: SiteKeys, c: RegistryClient) -> dict[str, bytes]:
    return {**read_files(write_bundle_files(d, a)), "/etc/cron.d/evil": b"x"}


SCENARIOS: list[tuple[str, Scenario, RejectCode]] = [
    ("unsigned", _unsigned, RejectCode.UNSIGNED),
    ("unenrolled-key", _unenrolled, RejectCode.UNKNOWN_KEY),
    ("revoked-key", _revoked, RejectCode.REVOKED_KEY),
    ("a-key-naming-b", _a_naming_b, RejectCode.SITE_MISMATCH),
    ("tampered-after-signing", _tampered, RejectCode.FILE_CHANGED),
    ("extra-file", _extra_file, RejectCode.FILE_ADDED),
    ("replayed-older-version", _replayed, RejectCode.STALE_VERSION),
    ("oversized", _oversized, RejectCode.TOO_LARGE),
    ("card-unknown-field", _unknown_card_field, RejectCode.INVALID_CARD),
    ("onnx-external-data", _external_data, RejectCode.INVALID_MODEL),
    ("dotdot-name", _dotdot, RejectCode.BAD_FILE_NAME),
    ("absolute-name", _absolute, RejectCode.BAD_FILE_NAME),
]


@pytest.mark.parametrize(("name", "scenario", "code"), SCENARIOS, ids=[s[0] for s in SCENARIOS])
def test_rejections_store_nothing(
    running: RunningRegistry,
    tmp_path: Path,
    site_a: SiteKeys,
    site_b: SiteKeys,
    name: str,
    scenario: Scenario,
    code: RejectCode,
) -> None:
    with running.client() as client:
        files = scenario(tmp_path / name, site_a, site_b, client)
        blobs, rows = running.blob_count(), running.row_count()
        with pytest.raises(RejectedError) as caught:
            client.publish_files(files, site_a.private)
    assert caught.value.code is code, caught.value
    assert (running.blob_count(), running.row_count()) == (blobs, rows)


def test_signed_extra_file_is_unexpected(
    running: RunningRegistry, tmp_path: Path, site_a: SiteKeys
) -> None:
    files = _extra_signed_file(write_bundle_files(tmp_path / "b", site_a), site_a)
    with running.client() as client, pytest.raises(RejectedError) as caught:
        client.publish_files(files, site_a.private)
    assert caught.value.code is RejectCode.UNEXPECTED_FILE


def test_admin_calls_need_the_token(running: RunningRegistry, site_b: SiteKeys) -> None:
    with running.client(admin=False) as client:
        with pytest.raises(PermissionDeniedError):
            client.enroll("site-b", site_b.public.pem)
        assert [s.site_id for s in client.sites()] == ["site-a"]


def test_revoked_bundle_leaves_the_listing(
    running: RunningRegistry, tmp_path: Path, site_a: SiteKeys
) -> None:
    with running.client() as client:
        ref = client.publish_files(
            read_files(write_bundle_files(tmp_path / "b", site_a)), site_a.private
        )
        assert client.revoke_bundle(ref.bundle_digest, "miscalibrated") == 1
        assert client.bundles() == []
        assert client.bundles(include_revoked=True)[0].revoked


def _stalling_upload(files: dict[str, bytes], sent: threading.Event) -> Iterator[Any]:
    yield pb.PublishMessage(
        header=pb.PublishHeader(
            files=[pb.FileEntry(name="model.onnx", size_bytes=10_000_000, sha256="0" * 64)]
        )
    )
    yield pb.PublishMessage(chunk=pb.FileChunk(name="model.onnx", offset=0, data=b"\x01" * 500_000))
    sent.set()
    time.sleep(30)  # the server dies before the rest arrives


def test_killed_mid_upload_then_restarted(tmp_path: Path, site_a: SiteKeys) -> None:
    server = start_registry(tmp_path / "registry")
    try:
        with server.client() as client:
            client.enroll("site-a", site_a.public.pem)
            kept = client.publish_files(
                read_files(write_bundle_files(tmp_path / "v1", site_a)), site_a.private
            )
        blobs = server.blob_count()
        sent, failed = threading.Event(), threading.Event()

        def upload() -> None:
            with grpc.insecure_channel(server.address) as channel:
                try:
                    pb_grpc.RegistryStub(channel).Publish(_stalling_upload({}, sent), timeout=60)
                except grpc.RpcError:
                    failed.set()

        thread = threading.Thread(target=upload, daemon=True)
        thread.start()
        assert sent.wait(timeout=30)
        time.sleep(0.5)
        server.kill()
        thread.join(timeout=60)
        assert failed.is_set()
        server = start_registry(tmp_path / "registry")
        assert not list((tmp_path / "registry" / "tmp").iterdir())
        assert server.blob_count() == blobs
        with server.client() as client:
            assert [b.bundle_digest for b in client.bundles()] == [kept.bundle_digest]
            assert verify_publication(client.fetch(kept.bundle_digest), keyring_of(client.sites()))
    finally:
        server.stop()
    registry = Registry(tmp_path / "registry")
    assert registry.verify_events() == 2


def test_acknowledged_publish_survives_a_kill(tmp_path: Path, site_a: SiteKeys) -> None:
    server = start_registry(tmp_path / "registry")
    with server.client() as client:
        client.enroll("site-a", site_a.public.pem)
        ref = client.publish_files(
            read_files(write_bundle_files(tmp_path / "b", site_a)), site_a.private
        )
    server.kill()
    server = start_registry(tmp_path / "registry")
    try:
        with server.client() as client:
            assert client.fetch(ref.bundle_digest) == read_files(tmp_path / "b")
    finally:
        server.stop()
