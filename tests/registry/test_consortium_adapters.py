"""A consortium adapter takes effect only with its training sites' co-signatures.

The registry (SQLite, blobs, TUF, the real gRPC server where the header is
checked before the body) accepts an adapter only as the next version of its
task's adapter role, co-signed by enough of the sites its card says trained
it; no single enrolled site can put an adapter, or a version number, in
service on its own key.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from tuf.api.metadata import Metadata, Targets

from registry import (
    Registry,
    RejectCode,
    RejectedError,
    adapter_role,
    role_signers,
)
from tests.adapters import adapter_bundle, co_signed_role, publish_consortium
from tests.conftest import SiteKeys
from tests.servers import RunningRegistry, start_registry

pytestmark = pytest.mark.slow

TASK = "pneumonia-cxr"


@pytest.fixture(scope="module")
def site_c(tmp_path_factory: pytest.TempPathFactory) -> SiteKeys:
    return SiteKeys(tmp_path_factory.mktemp("keys-c"), "site-c")


@pytest.fixture
def store(
    tmp_path: Path, site_a: SiteKeys, site_b: SiteKeys, site_c: SiteKeys
) -> Iterator[Registry]:
    registry = Registry(tmp_path / "registry")
    for site in (site_a, site_b, site_c):
        registry.enroll(site.site_id, site.public.pem)
    yield registry
    registry.close()


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def _bundle(tmp_path: Path, signer: SiteKeys, trainers: list[SiteKeys], **card: object) -> Path:
    name = f"{signer.site_id}-{len(list(tmp_path.iterdir()))}"
    return adapter_bundle(tmp_path / name, signer, trainers=trainers, **card)


def _refusal(store: Registry, files: dict[str, bytes], role: bytes) -> RejectedError:
    with pytest.raises(RejectedError) as caught:
        store.publish(files, role)
    return caught.value


def test_an_adapter_co_signed_by_its_trainers_is_the_consortiums(
    store: Registry, tmp_path: Path, site_a: SiteKeys, site_b: SiteKeys, site_c: SiteKeys
) -> None:
    files = _files(_bundle(tmp_path, site_a, [site_a, site_b, site_c]))
    ref = store.publish(files, co_signed_role(files, [site_a, site_b], None))
    assert ref.kind == "adapter"
    assert ref.version == 1
    stored = Metadata[Targets].from_bytes(store.tuf.adapter_role_bytes(TASK) or b"")
    assert stored.signed.version == 1
    assert role_signers(stored, {s.site_id: [s.public.pem] for s in (site_a, site_b)}) == {
        "site-a",
        "site-b",
    }
    targets = Metadata[Targets].from_file(str(store.tuf.metadata_dir / "targets.json"))
    assert targets.signed.delegations is not None
    role = (targets.signed.delegations.roles or {})[adapter_role(TASK)]
    assert role.threshold == 2  # the consortium's threshold, signed by the registry
    assert len(role.keyids) == 3  # every enrolled site's key may co-sign
    publish_event = json.loads(store.events.lines()[-1])
    assert publish_event["co_signed_by"] == ["site-a", "site-b"]


def test_one_sites_adapter_is_refused_however_it_comes(
    store: Registry, tmp_path: Path, site_a: SiteKeys, site_b: SiteKeys
) -> None:
    from registry import build_site_targets
    from signing import bundle_digest, digest_files

    files = _files(_bundle(tmp_path, site_a, [site_a]))
    # On its own delegated metadata, as specialists are published.
    own = build_site_targets(
        None, "site-a", bundle_digest(digest_files(files)), files, site_a.private
    )
    assert _refusal(store, files, own).code is RejectCode.NO_CONSORTIUM_BACKING
    # As the consortium's role, signed by it alone.
    alone = co_signed_role(files, [site_a], None)
    assert _refusal(store, files, alone).code is RejectCode.NO_CONSORTIUM_BACKING
    # Naming others as trainers who did not sign.
    files = _files(_bundle(tmp_path, site_a, [site_a, site_b]))
    error = _refusal(store, files, co_signed_role(files, [site_a], None))
    assert error.code is RejectCode.NO_CONSORTIUM_BACKING
    assert "co-signed by 1 of its 2 training sites" in str(error)
    assert store.tuf.adapter_role_bytes(TASK) is None
    assert not [r for r in store.bundles() if r.kind == "adapter"]


def test_a_second_key_of_one_site_does_not_make_two_sites(
    store: Registry, tmp_path: Path, site_a: SiteKeys, site_b: SiteKeys
) -> None:
    (tmp_path / "second").mkdir()
    second = SiteKeys(tmp_path / "second", "site-a")
    store.enroll("site-a", second.public.pem)
    files = _files(_bundle(tmp_path, site_a, [site_a, site_b]))
    error = _refusal(store, files, co_signed_role(files, [site_a, second], None))
    assert error.code is RejectCode.NO_CONSORTIUM_BACKING


def test_only_training_sites_count_and_the_bundles_signer_must_be_one_of_them(
    store: Registry, tmp_path: Path, site_a: SiteKeys, site_b: SiteKeys, site_c: SiteKeys
) -> None:
    files = _files(_bundle(tmp_path, site_a, [site_a, site_b]))
    # site-c did not train it: its signature does not count.
    error = _refusal(store, files, co_signed_role(files, [site_a, site_c], None))
    assert error.code is RejectCode.NO_CONSORTIUM_BACKING
    # The trainers signed the role, but not the site that signed the bundle.
    files = _files(_bundle(tmp_path, site_c, [site_a, site_b, site_c]))
    error = _refusal(store, files, co_signed_role(files, [site_a, site_b], None))
    assert "not by site-c, which signed the bundle" in str(error)


def test_a_card_naming_trainers_who_are_not_enrolled_is_refused(
    store: Registry, tmp_path: Path, site_a: SiteKeys, site_b: SiteKeys
) -> None:
    stranger = SiteKeys(tmp_path, "site-z")
    files = _files(_bundle(tmp_path, site_a, [site_a, site_b, stranger]))
    error = _refusal(store, files, co_signed_role(files, [site_a, site_b], None))
    assert "not enrolled: site-z" in str(error)


def test_versions_are_the_consortiums_no_jump_no_replay(
    store: Registry, tmp_path: Path, site_a: SiteKeys, site_b: SiteKeys
) -> None:
    top = 2**32 - 1
    files = _files(_bundle(tmp_path, site_a, [site_a, site_b], version=top))
    error = _refusal(store, files, co_signed_role(files, [site_a, site_b], None, version=top))
    assert error.code is RejectCode.STALE_VERSION  # a jump: the next version is 1
    files = _files(_bundle(tmp_path, site_a, [site_a, site_b], version=top))
    error = _refusal(store, files, co_signed_role(files, [site_a, site_b], None))
    assert error.code is RejectCode.STALE_VERSION  # the card says another version than the role
    first = _files(_bundle(tmp_path, site_a, [site_a, site_b]))
    store.publish(first, co_signed_role(first, [site_a, site_b], None))
    previous = store.tuf.adapter_role_bytes(TASK)
    second = _files(_bundle(tmp_path, site_b, [site_a, site_b], version=2, license="MIT"))
    store.publish(second, co_signed_role(second, [site_a, site_b], previous))
    replay = _files(_bundle(tmp_path, site_a, [site_a, site_b], version=2, license="0BSD"))
    error = _refusal(store, replay, co_signed_role(replay, [site_a, site_b], previous))
    assert error.code is RejectCode.STALE_VERSION  # version 2 again, on the old role
    current = Metadata[Targets].from_bytes(store.tuf.adapter_role_bytes(TASK) or b"")
    assert current.signed.version == 2


def test_the_threshold_is_the_consortiums_setting_kept_and_logged(
    tmp_path: Path, site_a: SiteKeys, site_b: SiteKeys, site_c: SiteKeys
) -> None:
    root = tmp_path / "registry"
    store = Registry(root, adapter_threshold=3)
    for site in (site_a, site_b, site_c):
        store.enroll(site.site_id, site.public.pem)
    files = _files(_bundle(tmp_path, site_a, [site_a, site_b, site_c]))
    error = _refusal(store, files, co_signed_role(files, [site_a, site_b], None))
    assert "it needs 3" in str(error)
    store.close()
    reopened = Registry(root)  # no setting given: the stored one holds
    assert reopened.adapter_threshold == 3
    reopened.publish(files, co_signed_role(files, [site_a, site_b, site_c], None))
    assert any(json.loads(line).get("adapter_threshold") == 3 for line in reopened.events.lines())
    reopened.close()
    from registry import StoreError

    with pytest.raises(StoreError, match="at least 2"):
        Registry(root, adapter_threshold=1)


def test_a_revoked_co_signer_can_take_the_adapter_out_of_effect(
    store: Registry, tmp_path: Path, site_a: SiteKeys, site_b: SiteKeys
) -> None:
    files = _files(_bundle(tmp_path, site_a, [site_a, site_b]))
    store.publish(files, co_signed_role(files, [site_a, site_b], None))

    def delegated() -> bool:
        targets = Metadata[Targets].from_file(str(store.tuf.metadata_dir / "targets.json"))
        roles = targets.signed.delegations.roles if targets.signed.delegations else {}
        return adapter_role(TASK) in (roles or {})

    assert delegated()
    (key,) = [s.key_id for s in store.sites() if s.site_id == "site-b"]
    store.revoke_key(key, "a test revokes it")
    assert not delegated()  # one co-signature left: below the threshold


@pytest.fixture
def server(
    tmp_path: Path, site_a: SiteKeys, site_b: SiteKeys, site_c: SiteKeys
) -> Iterator[RunningRegistry]:
    running = start_registry(tmp_path / "served")
    with running.client() as client:
        for site in (site_a, site_b, site_c):
            client.enroll(site.site_id, site.public.pem)
    yield running
    running.stop()


def test_the_real_server_refuses_an_unbacked_adapter_before_its_body(
    server: RunningRegistry, tmp_path: Path, site_a: SiteKeys, site_b: SiteKeys
) -> None:
    folder = _bundle(tmp_path, site_a, [site_a, site_b])
    with server.client() as client:
        with pytest.raises(RejectedError) as caught:
            client.publish(folder, site_a.private)  # on its own metadata
        assert caught.value.code is RejectCode.NO_CONSORTIUM_BACKING
        with pytest.raises(RejectedError) as caught:
            publish_consortium(client, folder, [site_a])
        assert caught.value.code is RejectCode.NO_CONSORTIUM_BACKING
        assert server.blob_count() == 0  # nothing of the body was kept
        ref = publish_consortium(client, folder, [site_a, site_b])
        assert ref.version == 1
        assert client.adapter_role(TASK) is not None
