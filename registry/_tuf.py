"""TUF metadata: what lets hubs detect rollback, freeze and mix-and-match without trusting storage.

Top-level roles (root, targets, snapshot, timestamp) are signed with the
registry's keys, created on first start in ``ROOT/tuf/keys``. The top-level
targets role delegates each site's published bundles, by path
``<site>/<bundle digest>/*``, to that site's own key; the site signs its
delegated-targets metadata (``<site>.json``) when it publishes. Revoking a
bundle or a key re-signs the top-level targets without that path or
delegation, so a hub updating through ``tuf.ngclient`` stops resolving it.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from securesystemslib.signer import CryptoSigner, SSlibKey
from tuf.api.exceptions import UnsignedMetadataError
from tuf.api.metadata import (
    DelegatedRole,
    Delegations,
    Key,
    Metadata,
    MetaFile,
    Root,
    Snapshot,
    TargetFile,
    Targets,
    Timestamp,
)
from tuf.api.serialization import DeserializationError
from tuf.api.serialization.json import JSONSerializer

from registry.errors import NotFoundError, RejectCode, RejectedError
from signing import PublicKey, load_private_key

__all__ = ["EXPIRY", "TufRepository", "build_site_targets", "site_tuf_key", "target_path"]

#: How long each role's metadata stays valid.
EXPIRY = {
    "root": timedelta(days=365),
    "targets": timedelta(days=365),
    "snapshot": timedelta(days=7),
    "timestamp": timedelta(days=1),
    "site": timedelta(days=365),
}
TOP_ROLES = ("root", "targets", "snapshot", "timestamp")
_METADATA_NAME = re.compile(
    r"^(?:timestamp|(?:\d+\.)?(?:root|snapshot|targets|[a-z0-9][a-z0-9._-]{0,62}))\.json$"
)


def target_path(site_id: str, bundle_digest: str, name: str) -> str:
    """The TUF target path of one bundle file."""
    return f"{site_id}/{bundle_digest}/{name}"


def site_tuf_key(public_key_pem: bytes) -> SSlibKey:
    """A site key as a TUF key, its keyid being the registry's key id (sha256 of the PEM)."""
    key = PublicKey.from_pem(public_key_pem)
    loaded = serialization.load_pem_public_key(key.pem)
    return SSlibKey.from_crypto(loaded, keyid=key.key_id)


def _now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def build_site_targets(
    previous: bytes | None,
    site_id: str,
    bundle_digest: str,
    files: Mapping[str, bytes],
    private_key_path: Path,
    password: bytes | None = None,
) -> bytes:
    """The site's next delegated-targets metadata: the previous targets plus this bundle's files.

    Signed with the site key (run at the site, never at the registry).
    """
    if previous is None:
        metadata = Metadata(Targets(version=1, expires=_now()))
    else:
        metadata = Metadata[Targets].from_bytes(previous)
        metadata.signed.version += 1
    signed = metadata.signed
    for name, data in sorted(files.items()):
        path = target_path(site_id, bundle_digest, name)
        signed.targets[path] = TargetFile.from_data(path, data, ["sha256"])
    signed.expires = _now() + EXPIRY["site"]
    private = load_private_key(private_key_path, password)
    public_pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    metadata.signatures.clear()
    metadata.sign(CryptoSigner(private, site_tuf_key(public_pem)))
    return metadata.to_bytes(JSONSerializer(compact=True))


class TufRepository:
    """The registry's TUF metadata in ``ROOT/tuf``."""

    def __init__(self, directory: Path, *, read_only: bool = False) -> None:
        self.keys_dir = directory / "keys"
        self.metadata_dir = directory / "metadata"
        self.read_only = read_only
        if read_only:
            self._signers: dict[str, CryptoSigner] = {}
            return
        self.keys_dir.mkdir(parents=True, exist_ok=True)
        self.metadata_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.keys_dir, 0o700)
        self._signers = {role: self._role_signer(role) for role in TOP_ROLES}
        if not (self.metadata_dir / "1.root.json").exists():
            self._initialise()

    # -- keys and files -----------------------------------------------------------

    def _role_signer(self, role: str) -> CryptoSigner:
        path = self.keys_dir / f"{role}.pem"
        if not path.exists():
            key = ec.generate_private_key(ec.SECP256R1())
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as handle:
                handle.write(
                    key.private_bytes(
                        serialization.Encoding.PEM,
                        serialization.PrivateFormat.PKCS8,
                        serialization.NoEncryption(),
                    )
                )
        private = load_private_key(path)
        return CryptoSigner(private, SSlibKey.from_crypto(private.public_key()))

    def _write(self, name: str, metadata: Metadata) -> None:  # type: ignore[type-arg]
        """Writes ``name`` and, but for the timestamp, ``<version>.name`` (consistent snapshots)."""
        data = metadata.to_bytes(JSONSerializer(compact=False))
        names = [name] if name == "timestamp.json" else [f"{metadata.signed.version}.{name}", name]
        for target in names:
            if target == name or not (self.metadata_dir / target).exists():
                self._write_bytes(target, data)

    def _write_bytes(self, name: str, data: bytes) -> None:
        fd, temporary = tempfile.mkstemp(dir=self.metadata_dir, prefix=".tmp-")
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, self.metadata_dir / name)

    def _load(self, name: str) -> Metadata:  # type: ignore[type-arg]
        return Metadata.from_file(str(self.metadata_dir / name))

    def metadata_bytes(self, name: str) -> bytes:
        """A metadata file as served to clients.

        Raises:
            NotFoundError: no such (or an invalid) metadata name.
        """
        if not _METADATA_NAME.match(name) or not (self.metadata_dir / name).is_file():
            raise NotFoundError(f"no metadata file {name!r}")
        if name == "timestamp.json" and not self.read_only:
            self.refresh_timestamp()
        return (self.metadata_dir / name).read_bytes()

    def trusted_root(self) -> bytes:
        """``1.root.json``: the trust anchor a hub is given out of band."""
        return (self.metadata_dir / "1.root.json").read_bytes()

    def _initialise(self) -> None:
        now = _now()
        root = Metadata(Root(expires=now + EXPIRY["root"]))
        for role, signer in self._signers.items():
            root.signed.add_key(signer.public_key, role)
        root.sign(self._signers["root"])
        self._write("root.json", root)  # and 1.root.json
        targets = Metadata(Targets(expires=now + EXPIRY["targets"]))
        targets.sign(self._signers["targets"])
        self._write("targets.json", targets)
        snapshot = Metadata(Snapshot(expires=now + EXPIRY["snapshot"]))
        snapshot.sign(self._signers["snapshot"])
        self._write("snapshot.json", snapshot)
        timestamp = Metadata(Timestamp(expires=now + EXPIRY["timestamp"]))
        timestamp.sign(self._signers["timestamp"])
        self._write("timestamp.json", timestamp)

    # -- site metadata ------------------------------------------------------------

    def check_site_targets(
        self,
        data: bytes,
        site_id: str,
        site_keys: list[bytes],
        bundle_digest: str,
        files: Mapping[str, str],
        sizes: Mapping[str, int],
    ) -> None:
        """Checks a site's new delegated metadata before the bundle is accepted (pure of writes).

        It must be signed by one of the site's keys, be the next version, list
        exactly the previous targets plus this bundle's files, and not expire.

        Raises:
            RejectedError: code ``INVALID_TUF_METADATA``.
        """

        def reject(message: str) -> RejectedError:
            return RejectedError(RejectCode.INVALID_TUF_METADATA, message)

        try:
            metadata = Metadata[Targets].from_bytes(data)
        except (DeserializationError, ValueError, TypeError) as exc:
            raise reject(f"the site's targets metadata does not parse: {exc}") from exc
        if not isinstance(metadata.signed, Targets):
            raise reject("the site's metadata is not targets metadata")
        keys = [site_tuf_key(pem) for pem in site_keys]
        delegator = Targets(
            delegations=Delegations(
                keys={key.keyid: key for key in keys},
                roles={site_id: DelegatedRole(site_id, [k.keyid for k in keys], 1, True, ["*"])},
            )
        )
        try:
            delegator.verify_delegate(site_id, metadata.signed_bytes, metadata.signatures)
        except UnsignedMetadataError as exc:
            raise reject("the site's targets metadata is not signed by the site's key") from exc
        previous_path = self.metadata_dir / f"{site_id}.json"
        previous = (
            Metadata[Targets].from_file(str(previous_path)) if previous_path.exists() else None
        )
        expected_version = previous.signed.version + 1 if previous else 1
        if metadata.signed.version != expected_version:
            raise reject(
                f"the site's targets metadata has version {metadata.signed.version}, "
                f"expected {expected_version}"
            )
        if metadata.signed.expires <= _now():
            raise reject("the site's targets metadata has expired")
        expected = {
            path: (target.length, target.hashes)
            for path, target in (previous.signed.targets if previous else {}).items()
        }
        for name, digest in files.items():
            expected[target_path(site_id, bundle_digest, name)] = (sizes[name], {"sha256": digest})
        listed = {path: (t.length, t.hashes) for path, t in metadata.signed.targets.items()}
        if listed != expected:
            raise reject(
                "the site's targets metadata must list its previous targets plus exactly "
                "this bundle's files"
            )

    def store_site_targets(self, site_id: str, data: bytes) -> None:
        """Stores a checked site's delegated metadata."""
        self._write(f"{site_id}.json", Metadata[Targets].from_bytes(data))

    # -- top-level roles ----------------------------------------------------------

    def sync(self, sites: Mapping[str, tuple[list[bytes], list[str]]], published: set[str]) -> None:
        """Re-signs the top-level roles to match ``{site: (key PEMs, active bundle digests)}``.

        Only sites with an unrevoked key and an active bundle get a delegation,
        and only for those bundles' paths; ``published`` names every site that
        ever published (its metadata stays in the snapshot). Versions are
        bumped only on change.
        """
        targets = self._load("targets.json")
        keys: dict[str, Key] = {}
        roles: dict[str, DelegatedRole] = {}
        for site_id, (pems, digests) in sorted(sites.items()):
            if not pems or not digests:
                continue
            site_keys = [site_tuf_key(pem) for pem in pems]
            keys.update({key.keyid: key for key in site_keys})
            roles[site_id] = DelegatedRole(
                site_id,
                sorted(k.keyid for k in site_keys),
                1,
                True,
                sorted(f"{site_id}/{digest}/*" for digest in digests),
            )
        wanted = Delegations(keys=keys, roles=roles) if roles else None
        if targets.signed.delegations != wanted:
            targets.signed.delegations = wanted
            self._resign("targets", targets)
        snapshot = self._load("snapshot.json")
        # Every site file ever published stays listed: TUF clients refuse a snapshot
        # that drops an entry (deletion is a rollback); revocation acts through the
        # delegations above, never by forgetting metadata.
        meta = {"targets.json": MetaFile(version=targets.signed.version)}
        for site_id in sorted(published):
            if (self.metadata_dir / f"{site_id}.json").exists():
                version = self._load(f"{site_id}.json").signed.version
                meta[f"{site_id}.json"] = MetaFile(version=version)
        if snapshot.signed.meta != meta:
            snapshot.signed.meta = meta
            self._resign("snapshot", snapshot)
        self.refresh_timestamp(snapshot_version=snapshot.signed.version)

    def _resign(self, role: str, metadata: Metadata) -> None:  # type: ignore[type-arg]
        """Bumps the version, renews the expiry, signs with the role's key and writes."""
        metadata.signed.version += 1
        metadata.signed.expires = _now() + EXPIRY[role]
        metadata.signatures.clear()
        metadata.sign(self._signers[role])
        self._write(f"{role}.json", metadata)

    def refresh_timestamp(self, snapshot_version: int | None = None) -> None:
        """Re-signs the timestamp when the snapshot changed or half its validity has passed."""
        now = _now()
        timestamp = self._load("timestamp.json")
        version = snapshot_version or timestamp.signed.snapshot_meta.version
        stale = timestamp.signed.expires - now < EXPIRY["timestamp"] / 2
        if timestamp.signed.snapshot_meta.version == version and not stale:
            return
        timestamp.signed.snapshot_meta = MetaFile(version=version)
        self._resign("timestamp", timestamp)
