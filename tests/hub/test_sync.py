"""Registry sync against a real registry on loopback: TUF, verification, revocation, hot reload.

The hubs here run in-process (real onnxruntime sessions and faiss indexes over
real signed bundles); the HTTP API has its own tests.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import sqlite3
import threading
from pathlib import Path
from typing import Any

import pytest

from hub import UnknownTaskError
from hub.web import Hub
from protocol import Mode
from tests.conftest import SiteKeys
from tests.hub.conftest import png, publish
from tests.servers import RunningRegistry

pytestmark = pytest.mark.slow


def _digests(hub: Hub, task: str = "pneumonia-cxr") -> set[str]:
    return {s.bundle_digest for s in hub.catalog.specialists.get(task, ())}


def _diagnose(hub: Hub, mode: Mode = Mode.ENSEMBLE, seed: int = 0) -> Any:
    assert hub.engine is not None
    return asyncio.run(
        hub.engine.diagnose(
            request_id="t",
            task_id="pneumonia-cxr",
            image=png(seed),
            media_type=None,
            mode=mode,
        )
    ).response


def test_no_specialist_means_not_ready(registry: RunningRegistry, make_hub: Any) -> None:
    hub = make_hub()
    assert hub.catalog.tasks == ()
    assert hub.last_sync.ok
    with pytest.raises(UnknownTaskError, match="no verified specialist serves task"):
        _diagnose(hub)


def test_two_sites_are_verified_and_loaded(
    registry: RunningRegistry,
    make_hub: Any,
    tmp_path: Path,
    site_a: SiteKeys,
    site_b: SiteKeys,
) -> None:
    a = publish(registry, site_a, tmp_path)
    b = publish(registry, site_b, tmp_path)
    hub = make_hub()
    assert _digests(hub) == {a, b}
    assert hub.catalog.snapshot_version is not None
    for specialist in hub.catalog.all:
        assert specialist.providers[-1] == "CPUExecutionProvider"
        assert specialist.index_size == 4
    response = _diagnose(hub)
    assert {s.site_id for s in response.specialists} == {"site-a", "site-b"}
    assert {s.bundle_digest for s in response.specialists} == {a, b}
    assert response.registry_snapshot_version == hub.catalog.snapshot_version


def test_revocation_takes_a_specialist_out_at_the_next_sync(
    registry: RunningRegistry,
    make_hub: Any,
    tmp_path: Path,
    site_a: SiteKeys,
    site_b: SiteKeys,
) -> None:
    a = publish(registry, site_a, tmp_path)
    b = publish(registry, site_b, tmp_path)
    hub = make_hub()
    with registry.client() as client:
        client.revoke_bundle(a, "miscalibrated on new scanners")
    assert _digests(hub) == {a, b}  # nothing changes until the sync
    report = hub.sync_now()
    assert report.unloaded == (a,)
    assert _digests(hub) == {b}
    assert {s.bundle_digest for s in _diagnose(hub).specialists} == {b}
    with registry.client() as client:
        client.revoke_key(site_b.public.key_id, "key compromised")
    hub.sync_now()
    assert hub.catalog.tasks == ()


def test_a_new_version_replaces_the_old_without_a_restart(
    registry: RunningRegistry, make_hub: Any, tmp_path: Path, site_a: SiteKeys
) -> None:
    v1 = publish(registry, site_a, tmp_path, version=1)
    hub = make_hub()
    assert _digests(hub) == {v1}
    v2 = publish(registry, site_a, tmp_path, version=2)
    report = hub.sync_now()
    assert report.loaded == (v2,)
    assert report.unloaded == (v1,)
    assert [s.card.version for s in hub.catalog.all] == [2]


def test_requests_in_flight_survive_version_swaps(
    registry: RunningRegistry, make_hub: Any, tmp_path: Path, site_a: SiteKeys
) -> None:
    publish(registry, site_a, tmp_path, version=1)
    hub = make_hub()
    failures: list[BaseException] = []
    versions: set[int] = set()
    stop = threading.Event()

    def client() -> None:
        seed = 0
        while not stop.is_set():
            seed += 1
            try:
                versions.update(s.version for s in _diagnose(hub, seed=seed).specialists)
            except BaseException as exc:  # noqa: BLE001 - collected and asserted below
                failures.append(exc)

    thread = threading.Thread(target=client)
    thread.start()
    try:
        for version in (2, 3, 4):
            publish(registry, site_a, tmp_path, version=version)
            hub.sync_now()
    finally:
        stop.set()
        thread.join(timeout=60)
    assert failures == []
    assert [s.card.version for s in hub.catalog.all] == [4]
    assert versions  # requests really ran during the swaps


@pytest.mark.parametrize("tampering", ["blob-bytes", "swapped-blob"])
def test_a_tampered_bundle_in_registry_storage_is_refused(
    registry: RunningRegistry,
    make_hub: Any,
    tmp_path: Path,
    site_a: SiteKeys,
    site_b: SiteKeys,
    tampering: str,
) -> None:
    a = publish(registry, site_a, tmp_path)
    b = publish(registry, site_b, tmp_path)
    # Someone with write access to the registry's disk changes site-b's model.
    onnx_digest = hashlib.sha256((tmp_path / "site-b-v1" / "model.onnx").read_bytes()).hexdigest()
    if tampering == "blob-bytes":
        blob = registry.root / "blobs" / onnx_digest[:2] / onnx_digest
        data = blob.read_bytes()
        blob.write_bytes(data[:-8] + b"\x00" * 8)
    else:  # the registry now serves another intact blob (site-a's model) as site-b's
        with sqlite3.connect(registry.root / "registry.sqlite3") as db:
            row = db.execute("SELECT files FROM bundles WHERE digest = ?", (a,)).fetchone()
            files_a = json.loads(row[0])
            row = db.execute("SELECT files FROM bundles WHERE digest = ?", (b,)).fetchone()
            files_b = json.loads(row[0])
            files_b["model.onnx"] = files_a["model.onnx"]
            db.execute("UPDATE bundles SET files = ? WHERE digest = ?", (json.dumps(files_b), b))
    hub = make_hub()
    assert _digests(hub) == {a}
    report = hub.last_sync
    assert set(report.rejected) == {b}
    assert "model.onnx" in report.rejected[b]


def test_a_specialist_with_another_label_set_is_refused(
    registry: RunningRegistry,
    make_hub: Any,
    tmp_path: Path,
    site_a: SiteKeys,
    site_b: SiteKeys,
) -> None:
    a = publish(registry, site_a, tmp_path)
    b = publish(
        registry,
        site_b,
        tmp_path,
        labels=["pneumonia", "normal"],  # the same words, another order: other outputs
        created_at="2026-11-22T07:00:00Z",
    )
    hub = make_hub()
    assert _digests(hub) == {a}
    assert "differ from the task's" in hub.last_sync.rejected[b]


def test_an_unreachable_registry_keeps_the_specialists_in_service(
    registry: RunningRegistry, make_hub: Any, tmp_path: Path, site_a: SiteKeys
) -> None:
    a = publish(registry, site_a, tmp_path)
    hub = make_hub()
    registry.stop()
    report = hub.sync_now()
    assert not report.ok
    assert report.error
    assert _digests(hub) == {a}
    assert _diagnose(hub).label in ("normal", "pneumonia")


def test_a_federated_specialist_is_served_beside_the_sites_own(
    registry: RunningRegistry, make_hub: Any, tmp_path: Path, site_a: SiteKeys
) -> None:
    own = publish(registry, site_a, tmp_path, version=1)
    shared = publish(
        registry,
        site_a,
        tmp_path,
        version=2,
        federation={"rounds": 3, "sites": 4, "local_epochs": 1},
    )
    hub = make_hub()
    assert _digests(hub) == {own, shared}
    provenance = {s.bundle_digest: s for s in _diagnose(hub).specialists}
    assert provenance[shared].federated
    assert not provenance[own].federated
