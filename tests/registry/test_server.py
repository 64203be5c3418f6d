"""The registry's gRPC service, started for real on loopback."""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
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
    build_site_targets,
    keyring_of,
    verify_publication,
)
from signing import bundle_digest, digest_files, sign_bundle
from tests.bundles import external_data_onnx, read_files, tiny_onnx, write_bundle_files
from tests.conftest import SiteKeys
from tests.servers import RunningRegistry, peak_rss_bytes, start_registry


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


def _version_2_40(d: Path, a: SiteKeys, b: SiteKeys, c: RegistryClient) -> dict[str, bytes]:
    return read_files(write_bundle_files(d, a, card_overrides={"version": 2**40}))


def _version_true(d: Path, a: SiteKeys, b: SiteKeys, c: RegistryClient) -> dict[str, bytes]:
    return read_files(write_bundle_files(d, a, card_overrides={"version": True}))


def _external_data(d: Path, a: SiteKeys, b: SiteKeys, c: RegistryClient) -> dict[str, bytes]:
    return read_files(write_bundle_files(d, a, model=external_data_onnx("/etc/shadow")))


def _dotdot(d: Path, a: SiteKeys, b: SiteKeys, c: RegistryClient) -> dict[str, bytes]:
    return {**read_files(write_bundle_files(d, a)), "../evil.onnx": b"x"}


def _absolute(d: Path, a: SiteKeys, b: SiteKeys, c: RegistryClient) -> dict[str, bytes]:
    return {**read_files(write_bundle_files(d, a)), "/etc/cron.d/evil": b"x"}


def _hostile_labels(d: Path, a: SiteKeys, b: SiteKeys, c: RegistryClient) -> dict[str, bytes]:
    """A new task whose labels hold a terminal escape, markup and a bidirectional override."""
    labels = ["normal\x1b[31m\r\n", "<script>alert(1)</script>\u202e"]
    counts = dict.fromkeys(labels, 2)
    return read_files(
        write_bundle_files(
            d,
            a,
            card_overrides={
                "task_id": "new-task",
                "labels": labels,
                "index": {
                    "mode": "prototype", "min_group_size": 10, "noise_std": 0.0,
                    "embedding_dim": 64, "entries_per_class": counts,
                },
            },
        )
    )  # fmt: skip


SCENARIOS: list[tuple[str, Scenario, RejectCode]] = [
    ("unsigned", _unsigned, RejectCode.UNSIGNED),
    ("unenrolled-key", _unenrolled, RejectCode.UNKNOWN_KEY),
    ("revoked-key", _revoked, RejectCode.REVOKED_KEY),
    # Site a's key cannot sign the header of site b's publication (the registry
    # core still checks the card against the bundle signature: test_core).
    ("a-key-naming-b", _a_naming_b, RejectCode.UNAUTHENTICATED),
    ("tampered-after-signing", _tampered, RejectCode.FILE_CHANGED),
    ("extra-file", _extra_file, RejectCode.FILE_ADDED),
    ("replayed-older-version", _replayed, RejectCode.STALE_VERSION),
    ("oversized", _oversized, RejectCode.TOO_LARGE),
    ("card-unknown-field", _unknown_card_field, RejectCode.INVALID_CARD),
    # A uint32 on the wire: stored, it once broke listing and every hub's sync.
    ("card-version-2^40", _version_2_40, RejectCode.OUT_OF_RANGE),
    ("card-version-true", _version_true, RejectCode.INVALID_CARD),
    ("onnx-external-data", _external_data, RejectCode.INVALID_MODEL),
    ("dotdot-name", _dotdot, RejectCode.BAD_FILE_NAME),
    ("absolute-name", _absolute, RejectCode.BAD_FILE_NAME),
    ("hostile-labels", _hostile_labels, RejectCode.INVALID_CARD),
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


def _signed_header(
    files: dict[str, bytes], site: SiteKeys, sizes: dict[str, tuple[int, str]] | None = None
) -> Any:
    """A publish header for site a's first publication, authenticated by its key."""
    digest = bundle_digest(digest_files(files))
    return pb.PublishMessage(
        header=pb.PublishHeader(
            files=[
                pb.FileEntry(
                    name=name, size_bytes=len(data), sha256=hashlib.sha256(data).hexdigest()
                )
                for name, data in sorted(files.items())
            ],
            site_targets_metadata=build_site_targets(None, "site-a", digest, files, site.private),
        )
    )


def _stalling_upload(
    site: SiteKeys, sent: threading.Event, previous: bytes | None
) -> Iterator[Any]:
    model = bytes(range(256)) * 40_000  # 10 MB, declared in an authenticated header
    files = {"model.onnx": model}
    digest = bundle_digest(digest_files(files))
    yield pb.PublishMessage(
        header=pb.PublishHeader(
            files=[
                pb.FileEntry(
                    name="model.onnx",
                    size_bytes=len(model),
                    sha256=hashlib.sha256(model).hexdigest(),
                )
            ],
            site_targets_metadata=build_site_targets(
                previous, "site-a", digest, files, site.private
            ),
        )
    )
    yield pb.PublishMessage(chunk=pb.FileChunk(name="model.onnx", offset=0, data=model[:500_000]))
    sent.set()
    time.sleep(30)  # the server dies (or is given up on) before the rest arrives


def test_killed_mid_upload_then_restarted(tmp_path: Path, site_a: SiteKeys) -> None:
    server = start_registry(tmp_path / "registry")
    try:
        with server.client() as client:
            client.enroll("site-a", site_a.public.pem)
            kept = client.publish_files(
                read_files(write_bundle_files(tmp_path / "v1", site_a)), site_a.private
            )
            previous = client.fetch_metadata("site-a.json")
        blobs = server.blob_count()
        sent, failed = threading.Event(), threading.Event()

        def upload() -> None:
            with grpc.insecure_channel(server.address) as channel:
                try:
                    pb_grpc.RegistryStub(channel).Publish(
                        _stalling_upload(site_a, sent, previous), timeout=60
                    )
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


# -- uploads: authenticated before the body, streamed to disk, bounded --------------------


def _site_targets(site: SiteKeys, files: dict[str, tuple[int, str]]) -> bytes:
    """Site a's first delegated metadata for files known only by size and sha256."""
    from securesystemslib.signer import CryptoSigner
    from tuf.api.metadata import Metadata, TargetFile, Targets
    from tuf.api.serialization.json import JSONSerializer

    from registry._tuf import site_tuf_key
    from signing import load_private_key

    expires = datetime.now(UTC).replace(microsecond=0) + timedelta(days=1)
    metadata = Metadata(Targets(version=1, expires=expires))
    for name, (size, sha256) in files.items():
        path = f"site-a/{'ab' * 32}/{name}"
        metadata.signed.targets[path] = TargetFile(size, {"sha256": sha256}, path)
    metadata.sign(CryptoSigner(load_private_key(site.private), site_tuf_key(site.public.pem)))
    return metadata.to_bytes(JSONSerializer(compact=True))


def _flood(header: Any, name: str, total_bytes: int) -> Iterator[Any]:
    """A header, then ``total_bytes`` of chunks for ``name``, made on the fly."""
    yield header
    block = b"\x5a" * CHUNK
    for offset in range(0, total_bytes, CHUNK):
        yield pb.PublishMessage(chunk=pb.FileChunk(name=name, offset=offset, data=block))


CHUNK = 1024 * 1024
BIG = 300 * CHUNK


def _send(address: str, messages: Iterator[Any]) -> grpc.RpcError:
    with grpc.insecure_channel(address) as channel, pytest.raises(grpc.RpcError) as caught:
        pb_grpc.RegistryStub(channel).Publish(messages, timeout=120)
    return caught.value


def test_unauthenticated_300mb_upload_is_refused_at_its_header(
    tmp_path: Path, site_a: SiteKeys
) -> None:
    server = start_registry(tmp_path / "registry")  # the default 1 GB bundle limit
    try:
        with server.client() as client:
            client.enroll("site-a", site_a.public.pem)
        before = peak_rss_bytes(server.process.pid)
        unsigned = pb.PublishMessage(
            header=pb.PublishHeader(
                files=[pb.FileEntry(name="model.onnx", size_bytes=BIG, sha256="0" * 64)]
            )
        )
        error = _send(server.address, _flood(unsigned, "model.onnx", BIG))
        assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert (error.details() or "").startswith("UNAUTHENTICATED")
        # Headers signed by a key the registry does not hold for that site fare no better.
        forged = _signed_header({"model.onnx": b"\x5a" * 1000}, SiteKeys(tmp_path, "forger"))
        error = _send(server.address, _flood(forged, "model.onnx", 50 * CHUNK))
        assert (error.details() or "").startswith("UNAUTHENTICATED")
        grown = peak_rss_bytes(server.process.pid) - before
        assert grown < 64 * 1024 * 1024, f"the registry's peak RSS grew by {grown >> 20} MB"
        assert not list((tmp_path / "registry" / "tmp").iterdir())
        with server.client() as client:
            assert client.bundles() == []
    finally:
        server.stop()


def test_authenticated_unsigned_300mb_body_goes_to_disk_not_memory(
    tmp_path: Path, site_a: SiteKeys
) -> None:
    server = start_registry(tmp_path / "registry")
    try:
        with server.client() as client:
            client.enroll("site-a", site_a.public.pem)
        before = peak_rss_bytes(server.process.pid)
        block = b"\x5a" * CHUNK
        digest = hashlib.sha256()
        for _ in range(BIG // CHUNK):
            digest.update(block)
        files_meta = {"model.onnx": (BIG, digest.hexdigest())}

        metadata = _site_targets(site_a, files_meta)
        header = pb.PublishMessage(
            header=pb.PublishHeader(
                files=[
                    pb.FileEntry(
                        name="model.onnx", size_bytes=BIG, sha256=files_meta["model.onnx"][1]
                    )
                ],
                site_targets_metadata=metadata,
            )
        )
        error = _send(server.address, _flood(header, "model.onnx", BIG))
        assert (error.details() or "").startswith("UNSIGNED"), error.details()
        grown = peak_rss_bytes(server.process.pid) - before
        assert grown < 64 * 1024 * 1024, f"the registry's peak RSS grew by {grown >> 20} MB"
        assert not list((tmp_path / "registry" / "tmp").iterdir())
        assert server.blob_count() == 0
    finally:
        server.stop()


def test_one_upload_at_a_time_per_site(tmp_path: Path, site_a: SiteKeys) -> None:
    server = start_registry(tmp_path / "registry")
    try:
        with server.client() as client:
            client.enroll("site-a", site_a.public.pem)
        sent = threading.Event()
        outcome: list[grpc.RpcError] = []

        def stall() -> None:
            with grpc.insecure_channel(server.address) as channel:
                try:
                    pb_grpc.RegistryStub(channel).Publish(
                        _stalling_upload(site_a, sent, None), timeout=8
                    )
                except grpc.RpcError as exc:
                    outcome.append(exc)

        thread = threading.Thread(target=stall, daemon=True)
        thread.start()
        assert sent.wait(timeout=30)
        time.sleep(0.5)
        files = read_files(write_bundle_files(tmp_path / "b", site_a))
        with server.client() as client:
            with pytest.raises(RejectedError) as caught:
                client.publish_files(files, site_a.private)
            assert caught.value.code is RejectCode.BUSY
            thread.join(timeout=30)
            # Once the stalled upload is gone, the site publishes normally.
            assert client.publish_files(files, site_a.private).site_id == "site-a"
    finally:
        server.stop()
