"""One bad stored row can never stop the consortium: listing, sync, a restarted hub, the audit.

The row is what the registry stored before its schema bounded a card's version
(2**40 against the ``uint32`` of the listing): made here by editing the SQLite
database of a stopped registry, as the old code left it.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import httpx
import pytest

from audit import LocalRegistry, RemoteRegistry, Severity, run_audit
from tests.conftest import SiteKeys
from tests.hub.conftest import png, post_image, publish
from tests.servers import start_hub, start_registry

pytestmark = pytest.mark.slow


def test_a_row_the_wire_cannot_carry_is_skipped_everywhere(
    tmp_path: Path, site_a: SiteKeys, site_b: SiteKeys
) -> None:
    root = tmp_path / "registry"
    registry = start_registry(root)
    with registry.client() as client:
        client.enroll("site-a", site_a.public.pem)
        client.enroll("site-b", site_b.public.pem)
    good = publish(registry, site_a, tmp_path)
    bad = publish(registry, site_b, tmp_path)
    registry.stop()
    with sqlite3.connect(root / "registry.sqlite3") as db:
        db.execute("UPDATE bundles SET version = ? WHERE digest = ?", (2**40, bad))
    registry = start_registry(root)  # it starts, and lists the rest
    hub = None
    try:
        with registry.client() as client:
            listing = client.listing(include_revoked=True)
            assert [b.bundle_digest for b in listing.bundles] == [good]
            assert [u.bundle_digest for u in listing.unreadable] == [bad]
            assert "version" in listing.unreadable[0].problem
            # Revocations still work and still reach the listing.
            assert [b.bundle_digest for b in client.bundles()] == [good]
            # The site can go on publishing: the unservable row does not hold its version.
            newer = publish(registry, site_b, tmp_path, version=2)
            assert {b.bundle_digest for b in client.bundles()} == {good, newer}
        # A hub that starts now (a restarted hub has nothing cached) serves the good ones.
        hub = start_hub(registry, tmp_path / "hub", "--allow-anonymous", "--no-generalist")
        ready = httpx.get(hub.url + "/readyz", timeout=10)
        assert ready.status_code == 200, ready.text
        body = ready.json()
        assert body["tasks"] == {"pneumonia-cxr": 2}
        assert body["last_sync"]["ok"] is True
        assert list(body["last_sync"]["unreadable"]) == [bad]
        answer = post_image(hub.url, png())
        assert answer.status_code == 200, answer.text
        assert bad not in {s["bundle_digest"] for s in answer.json()["specialists"]}
        # The audit flags the row, from the running registry ...
        remote = RemoteRegistry(registry.address)
        try:
            report = run_audit(remote)
        finally:
            remote.close()
        flagged = [f for f in report.findings if f.check == "listing"]
        assert len(flagged) == 1
        assert flagged[0].severity is Severity.FAIL
        assert bad[:16] in flagged[0].subject
    finally:
        if hub is not None:
            hub.stop()
        registry.stop()
    # ... and from its storage folder.
    local = LocalRegistry(root)
    try:
        report = run_audit(local)
    finally:
        local.close()
    assert [f.subject for f in report.findings if f.check == "listing"] == [f"bundle {bad[:16]}…"]
