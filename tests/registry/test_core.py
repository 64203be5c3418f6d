"""The registry's storage and trust decisions, without the network."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from protocol import canonical_json
from registry import Limits, RejectCode, RejectedError, verify_publication
from registry._core import Registry
from registry.errors import EventLogError, NotFoundError, StoreError
from signing import SIGNATURE_FILE, sign_bundle
from tests.bundles import (
    external_data_onnx,
    publish_to,
    read_files,
    tiny_onnx,
    write_bundle_files,
)
from tests.conftest import SiteKeys


@pytest.fixture
def registry(tmp_path: Path, site_a: SiteKeys) -> Registry:
    store = Registry(tmp_path / "store", Limits(max_bundle_bytes=2_000_000))
    store.enroll("site-a", site_a.public.pem)
    return store


def _blob_count(registry: Registry) -> int:
    return len(list(registry.blobs.digests()))


def _bundle(tmp_path: Path, site: SiteKeys, name: str = "b", **kwargs: object) -> Path:
    return write_bundle_files(tmp_path / name, site, **kwargs)  # type: ignore[arg-type]


def test_publish_and_read_back(registry: Registry, tmp_path: Path, site_a: SiteKeys) -> None:
    files = read_files(_bundle(tmp_path, site_a))
    ref = publish_to(registry, files, site_a)
    assert ref.site_id == "site-a"
    assert ref.version == 1
    assert not ref.revoked
    stored = {
        name: registry.blobs.get(d) for name, d in registry.bundle_files(ref.bundle_digest).items()
    }
    assert stored == files
    accepted = verify_publication(stored, registry.keyring())  # what a hub re-checks
    assert accepted.digest == ref.bundle_digest
    assert registry.verify_events() == 2  # enroll, publish


def _rejected(registry: Registry, files: dict[str, bytes], code: RejectCode) -> None:
    rows, blobs = len(registry.bundles(include_revoked=True)), _blob_count(registry)
    with pytest.raises(RejectedError) as caught:
        registry.publish(files, b"")  # rejected before its TUF metadata is read
    assert caught.value.code is code, caught.value
    assert len(registry.bundles(include_revoked=True)) == rows
    assert _blob_count(registry) == blobs
    last = json.loads(registry.events.lines()[-1])
    assert last["kind"] == "reject"
    assert last["code"] == code.value


def test_unsigned(registry: Registry, tmp_path: Path, site_a: SiteKeys) -> None:
    _rejected(registry, read_files(_bundle(tmp_path, site_a, sign=False)), RejectCode.UNSIGNED)


def test_unenrolled_key(registry: Registry, tmp_path: Path, site_b: SiteKeys) -> None:
    _rejected(registry, read_files(_bundle(tmp_path, site_b)), RejectCode.UNKNOWN_KEY)


def test_revoked_key(registry: Registry, tmp_path: Path, site_a: SiteKeys) -> None:
    registry.revoke_key(site_a.public.key_id, "key lost")
    _rejected(registry, read_files(_bundle(tmp_path, site_a)), RejectCode.REVOKED_KEY)


def test_signed_by_a_naming_b(
    registry: Registry, tmp_path: Path, site_a: SiteKeys, site_b: SiteKeys
) -> None:
    registry.enroll("site-b", site_b.public.pem)
    files = read_files(_bundle(tmp_path, site_a, card_overrides={"site_id": "site-b"}))
    _rejected(registry, files, RejectCode.SITE_MISMATCH)


def test_tampered_after_signing(registry: Registry, tmp_path: Path, site_a: SiteKeys) -> None:
    files = read_files(_bundle(tmp_path, site_a))
    files["model.onnx"] = tiny_onnx(seed=99)
    _rejected(registry, files, RejectCode.FILE_CHANGED)


def test_extra_file(registry: Registry, tmp_path: Path, site_a: SiteKeys) -> None:
    files = read_files(_bundle(tmp_path, site_a))
    files["notes.txt"] = b"hello"
    _rejected(registry, files, RejectCode.FILE_ADDED)


def test_signed_extra_file(registry: Registry, tmp_path: Path, site_a: SiteKeys) -> None:
    directory = _bundle(tmp_path, site_a)
    (directory / "notes.txt").write_text("hello")
    sign_bundle(directory, site_a.private)
    _rejected(registry, read_files(directory), RejectCode.UNEXPECTED_FILE)


def test_replayed_older_version(registry: Registry, tmp_path: Path, site_a: SiteKeys) -> None:
    old = read_files(_bundle(tmp_path, site_a, "v1", version=1))
    publish_to(registry, read_files(_bundle(tmp_path, site_a, "v2", version=2)), site_a)
    _rejected(registry, old, RejectCode.STALE_VERSION)


def test_oversized(registry: Registry, tmp_path: Path, site_a: SiteKeys) -> None:
    files = read_files(_bundle(tmp_path, site_a, padding_bytes=2_500_000))
    _rejected(registry, files, RejectCode.TOO_LARGE)


def test_card_with_unknown_fields(registry: Registry, tmp_path: Path, site_a: SiteKeys) -> None:
    files = read_files(_bundle(tmp_path, site_a, card_overrides={"patient_name": "Jane Doe"}))
    _rejected(registry, files, RejectCode.INVALID_CARD)


def test_onnx_with_external_data(registry: Registry, tmp_path: Path, site_a: SiteKeys) -> None:
    files = read_files(_bundle(tmp_path, site_a, model=external_data_onnx()))
    _rejected(registry, files, RejectCode.INVALID_MODEL)


@pytest.mark.parametrize("name", ["../model.onnx", "/etc/passwd", "sub/../../x", "a/b"])
def test_file_name_escaping_the_bundle(
    registry: Registry, tmp_path: Path, site_a: SiteKeys, name: str
) -> None:
    files = read_files(_bundle(tmp_path, site_a))
    files[name] = b"x"
    _rejected(registry, files, RejectCode.BAD_FILE_NAME)


def test_revocation_hides_bundles(registry: Registry, tmp_path: Path, site_a: SiteKeys) -> None:
    ref = publish_to(registry, read_files(_bundle(tmp_path, site_a)), site_a)
    assert registry.revoke_bundle(ref.bundle_digest, "bad calibration") == 1
    assert registry.bundles() == []
    assert registry.bundles(include_revoked=True)[0].revoked
    assert registry.revoke_bundle(ref.bundle_digest, "again") == 0


def test_event_log_detects_any_edited_line(
    registry: Registry, tmp_path: Path, site_a: SiteKeys
) -> None:
    publish_to(registry, read_files(_bundle(tmp_path, site_a)), site_a)
    registry.revoke_key(site_a.public.key_id, "rotation")
    lines = registry.events.lines()
    assert registry.verify_events() == len(lines) == 3
    for number in range(len(lines)):
        edited = list(lines)
        event = json.loads(edited[number])
        event["reason"] = "edited"
        edited[number] = canonical_json(event) + b"\n"
        registry.events.path.write_bytes(b"".join(edited))
        with pytest.raises(EventLogError):
            registry.verify_events()
    registry.events.path.write_bytes(b"".join(lines[:-1]))  # the last line deleted
    with pytest.raises(EventLogError, match="truncated or its last entry edited"):
        registry.verify_events()


def test_reopen_recovers_from_an_interrupted_publish(
    registry: Registry, tmp_path: Path, site_a: SiteKeys
) -> None:
    ref = publish_to(registry, read_files(_bundle(tmp_path, site_a, "v1")), site_a)
    root = registry.root
    # What a crash mid-publish leaves: a temporary file, a blob no row names,
    # and an event line the database never committed.
    (root / "tmp" / "blob-partial").write_bytes(b"half a model")
    orphan = registry.blobs.put(b"a blob of a publication that never committed")
    count, head = registry.event_head()
    registry.events.append(count, head, "publish", site_id="site-a", version=2)
    registry.close()
    reopened = Registry(root)
    assert reopened.recovered == {
        "reverted_site_targets": 0,
        "temporary_files": 1,
        "unreferenced_blobs": 1,
        "unacknowledged_events": 1,
    }
    assert orphan not in set(reopened.blobs.digests())
    assert [r.bundle_digest for r in reopened.bundles()] == [ref.bundle_digest]
    assert reopened.verify_events() == 2


def test_recovery_reverts_site_targets_of_an_uncommitted_publish(
    registry: Registry, tmp_path: Path, site_a: SiteKeys
) -> None:
    from registry import build_site_targets
    from signing import bundle_digest, digest_files

    first = publish_to(registry, read_files(_bundle(tmp_path, site_a, "v1")), site_a)
    v1_metadata = registry.tuf.metadata_bytes("site-a.json")
    # A crash after the site's new targets were stored but before the database
    # commit: the metadata lists a bundle that the registry never recorded.
    files = read_files(_bundle(tmp_path, site_a, "v2", version=2))
    digest = bundle_digest(digest_files(files))
    registry.tuf.store_site_targets(
        "site-a", build_site_targets(v1_metadata, "site-a", digest, files, site_a.private)
    )
    assert digest in registry.tuf.site_target_digests("site-a")
    registry.close()
    reopened = Registry(registry.root)
    assert reopened.recovered["reverted_site_targets"] == 1
    assert reopened.tuf.metadata_bytes("site-a.json") == v1_metadata
    assert reopened.tuf.site_target_digests("site-a") == {first.bundle_digest}
    # The site can publish that version again: nothing of the failed attempt remains.
    again = publish_to(reopened, files, site_a)
    assert again.bundle_digest == digest
    assert reopened.tuf.site_target_digests("site-a") == {first.bundle_digest, digest}


def test_recovery_removes_the_first_site_targets_of_an_uncommitted_publish(
    tmp_path: Path, site_a: SiteKeys
) -> None:
    from registry import build_site_targets
    from signing import bundle_digest, digest_files

    store = Registry(tmp_path / "store")
    store.enroll("site-a", site_a.public.pem)
    files = read_files(_bundle(tmp_path, site_a))
    digest = bundle_digest(digest_files(files))
    store.tuf.store_site_targets(
        "site-a", build_site_targets(None, "site-a", digest, files, site_a.private)
    )
    store.close()
    reopened = Registry(store.root)
    assert reopened.recovered["reverted_site_targets"] == 1
    with pytest.raises(NotFoundError):
        reopened.tuf.metadata_bytes("site-a.json")
    assert publish_to(reopened, files, site_a).bundle_digest == digest


def test_reopen_refuses_a_tampered_log(registry: Registry) -> None:
    registry.events.path.write_bytes(
        registry.events.path.read_bytes().replace(b"site-a", b"site-x")
    )
    registry.close()
    with pytest.raises(EventLogError):
        Registry(registry.root)


def test_corrupt_blob_is_detected(registry: Registry, tmp_path: Path, site_a: SiteKeys) -> None:
    ref = publish_to(registry, read_files(_bundle(tmp_path, site_a)), site_a)
    digest = registry.bundle_files(ref.bundle_digest)["model.onnx"]
    registry.blobs.path(digest).write_bytes(b"swapped")
    with pytest.raises(StoreError, match="corrupt"):
        registry.blobs.get(digest)
    with pytest.raises(NotFoundError):
        registry.bundle("f" * 64)
    assert SIGNATURE_FILE in registry.bundle_files(ref.bundle_digest)


def test_reads_see_only_committed_rows(
    registry: Registry, tmp_path: Path, site_b: SiteKeys
) -> None:
    """The writer's open transaction is invisible to every query, and to a reader."""
    import threading

    from registry import RegistryReader

    inside, done = threading.Event(), threading.Event()

    def enrol_slowly() -> None:
        with registry._transaction() as db:  # what enroll() does, held open
            db.execute(
                "INSERT INTO sites VALUES (?, ?, ?, ?, NULL)",
                (
                    site_b.public.key_id,
                    "site-b",
                    site_b.public.pem.decode(),
                    "2026-12-02T00:00:00+00:00",
                ),
            )
            inside.set()
            done.wait(10)

    writer = threading.Thread(target=enrol_slowly)
    writer.start()
    inside.wait(10)
    reader = RegistryReader(registry.root)  # another process's view: its own connection
    assert [s.site_id for s in reader.sites()] == ["site-a"]
    # The registry's own queries read through their own connection too (and, besides, wait
    # for the writer's lock): that connection does not see the uncommitted row.
    assert registry._read_db.execute("SELECT site_id FROM sites").fetchall() == [("site-a",)]
    done.set()
    writer.join(10)
    assert {s.site_id for s in reader.sites()} == {"site-a", "site-b"}
    assert {s.site_id for s in registry.sites()} == {"site-a", "site-b"}
    reader.close()


def test_a_reader_opens_only_a_registry_and_never_writes(
    registry: Registry, tmp_path: Path
) -> None:
    from registry import RegistryReader

    with pytest.raises(StoreError, match="not a registry storage folder"):
        RegistryReader(tmp_path / "nothing")
    before = {p: p.stat().st_mtime_ns for p in registry.root.rglob("*") if p.is_file()}
    reader = RegistryReader(registry.root)
    assert reader.verify_events() == 1  # the enrolment
    assert not hasattr(reader, "publish")
    assert not hasattr(reader, "enroll")
    reader.close()
    after = {p: p.stat().st_mtime_ns for p in registry.root.rglob("*") if p.is_file()}
    kept = (".sqlite3-shm", ".sqlite3-wal")  # SQLite's own index of the WAL, not data
    assert {p: t for p, t in after.items() if p.suffix not in kept} == {
        p: t for p, t in before.items() if p.suffix not in kept
    }
