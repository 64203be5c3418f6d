"""Hubs fetch through TUF: rollback, swapped files and revocation, against a real registry."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from registry import (
    NotFoundError,
    RegistryClient,
    TrustedRegistry,
    UntrustedMetadataError,
    keyring_of,
    verify_publication,
)
from tests.bundles import read_files, write_bundle_files
from tests.conftest import SiteKeys
from tests.servers import RunningRegistry


@pytest.fixture
def client(running: RunningRegistry) -> Iterator[RegistryClient]:
    with running.client() as connected:
        yield connected


def _hub(running: RunningRegistry, client: RegistryClient, cache: Path) -> TrustedRegistry:
    trusted_root = (running.root / "tuf" / "metadata" / "1.root.json").read_bytes()  # out of band
    return TrustedRegistry(client, cache, trusted_root)


def _publish(
    client: RegistryClient, tmp_path: Path, site: SiteKeys, version: int
) -> tuple[str, dict[str, bytes]]:
    files = read_files(write_bundle_files(tmp_path / f"v{version}", site, version=version))
    return client.publish_files(files, site.private).bundle_digest, files


def test_fetch_through_tuf(
    running: RunningRegistry, client: RegistryClient, tmp_path: Path, site_a: SiteKeys
) -> None:
    digest, files = _publish(client, tmp_path, site_a, 1)
    hub = _hub(running, client, tmp_path / "hub")
    assert hub.refresh() >= 1
    fetched = hub.bundle_files("site-a", digest)
    assert fetched == files
    assert verify_publication(fetched, keyring_of(client.sites())).digest == digest


def test_revocation_takes_effect_through_the_metadata(
    running: RunningRegistry, client: RegistryClient, tmp_path: Path, site_a: SiteKeys
) -> None:
    first, _ = _publish(client, tmp_path, site_a, 1)
    second, _ = _publish(client, tmp_path, site_a, 2)
    hub = _hub(running, client, tmp_path / "hub")
    hub.refresh()
    assert hub.bundle_files("site-a", first)
    client.revoke_bundle(first, "miscalibrated")
    hub.refresh()
    with pytest.raises(NotFoundError, match="not in the trusted metadata"):
        hub.bundle_files("site-a", first)
    assert hub.bundle_files("site-a", second)
    client.revoke_key(site_a.public.key_id, "key compromised")
    hub.refresh()
    with pytest.raises(NotFoundError):
        hub.bundle_files("site-a", second)


def _metadata(running: RunningRegistry, name: str) -> Path:
    return running.root / "tuf" / "metadata" / name


@pytest.mark.parametrize("replayed", ["timestamp.json", "snapshot.json"])
def test_replayed_older_metadata_is_refused(
    running: RunningRegistry,
    client: RegistryClient,
    tmp_path: Path,
    site_a: SiteKeys,
    replayed: str,
) -> None:
    _publish(client, tmp_path, site_a, 1)
    old = _metadata(running, replayed).read_bytes()
    _publish(client, tmp_path, site_a, 2)
    hub = _hub(running, client, tmp_path / "hub")
    hub.refresh()  # the hub has now seen the newer state
    if replayed == "snapshot.json":
        # A new, validly signed timestamp names snapshot N; storage serves an old one as N.
        _publish(client, tmp_path, site_a, 3)
        current = json.loads(_metadata(running, replayed).read_bytes())["signed"]["version"]
        _metadata(running, f"{current}.snapshot.json").write_bytes(old)
    _metadata(running, replayed).write_bytes(old)  # the registry's storage is rolled back
    with pytest.raises(UntrustedMetadataError, match="TUF refused"):
        hub.refresh()


def test_swapped_target_file_is_refused(
    running: RunningRegistry, client: RegistryClient, tmp_path: Path, site_a: SiteKeys
) -> None:
    digest, _ = _publish(client, tmp_path, site_a, 1)
    with sqlite3.connect(running.root / "registry.sqlite3") as db:
        files = json.loads(
            db.execute("SELECT files FROM bundles WHERE digest = ?", (digest,)).fetchone()[0]
        )
        files["model.onnx"] = files["card.json"]  # storage now serves another (intact) blob
        db.execute("UPDATE bundles SET files = ? WHERE digest = ?", (json.dumps(files), digest))
    hub = _hub(running, client, tmp_path / "hub")
    hub.refresh()
    with pytest.raises(UntrustedMetadataError, match="model.onnx"):
        hub.bundle_files("site-a", digest)


def test_wrong_site_metadata_is_rejected(
    running: RunningRegistry,
    client: RegistryClient,
    tmp_path: Path,
    site_a: SiteKeys,
    site_b: SiteKeys,
) -> None:
    from registry import RejectCode, RejectedError

    files = read_files(write_bundle_files(tmp_path / "b", site_a))
    with pytest.raises(RejectedError) as caught:
        client.publish_files(files, site_b.private)  # TUF metadata signed with another key
    # The header is what the site signed: signed by another key, it authenticates nobody.
    assert caught.value.code is RejectCode.UNAUTHENTICATED
    assert running.row_count() == 0


def test_an_unreachable_registry_is_not_reported_as_untrusted_metadata(
    running: RunningRegistry, tmp_path: Path, site_a: SiteKeys
) -> None:
    """Transport failure and bad metadata stay apart, as registry/errors.py promises."""
    from registry import RegistryUnavailableError

    with running.client() as client:
        digest, _ = _publish(client, tmp_path, site_a, 1)
    client = RegistryClient(running.address, timeout_s=3)
    try:
        hub = _hub(running, client, tmp_path / "hub")
        hub.refresh()
        running.stop()  # the registry goes away
        with pytest.raises(RegistryUnavailableError) as caught:
            hub.refresh()
        assert not isinstance(caught.value, UntrustedMetadataError)
        fresh = _hub(running, client, tmp_path / "hub-2")
        with pytest.raises(RegistryUnavailableError):
            fresh.bundle_files("site-a", digest)
    finally:
        client.close()


def test_only_canonical_target_paths_are_served(
    running: RunningRegistry, client: RegistryClient, tmp_path: Path, site_a: SiteKeys
) -> None:
    digest, files = _publish(client, tmp_path, site_a, 1)
    assert client.fetch_target(f"site-a/{digest}/model.sig") == files["model.sig"]
    for path in (
        f"site-a/{digest}/model.sig/../../x",
        f"site-a/{digest}/model.sig/..",
        f"site-a/{digest}/./model.sig",
        f"site-a//{digest}/model.sig",
        f"site-a/{digest}/model.sig/",
        f"/site-a/{digest}/model.sig",
        f"site-a/{digest}/model.sig/extra",
        f"site-a/{digest}",
    ):
        with pytest.raises(NotFoundError):
            client.fetch_target(path)
