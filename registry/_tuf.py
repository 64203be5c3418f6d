"""TUF metadata: what lets hubs detect rollback, freeze and mix-and-match without trusting storage.

Top-level roles (root, targets, snapshot, timestamp) are signed with the
registry's keys, created on first start in ``ROOT/tuf/keys``. The top-level
targets role delegates each site's published bundles, by path
``<site>/<bundle digest>/*``, to that site's own key; the site signs its
delegated-targets metadata (``<site>.json``) when it publishes. Revoking a
bundle or a key re-signs the top-level targets without that path or
delegation, so a hub updating through ``tuf.ngclient`` stops resolving it.

A task's consortium adapter has a role of its own, ``_adapter.<task>``
(``_`` cannot begin a site id), delegated paths
``_adapters/<task>/<digest>/*`` of its one current bundle, with every
enrolled site key and a *threshold*: its metadata takes effect only with that
many sites' signatures (see :mod:`registry._consortium`). Its version orders
the task's adapters across the consortium.
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

from registry.errors import ConflictError, NotFoundError, RejectCode, RejectedError
from signing import PublicKey, load_private_key

__all__ = [
    "ADAPTER_ROLE_PREFIX",
    "ADAPTER_TARGETS",
    "EXPIRY",
    "TufRepository",
    "adapter_role",
    "adapter_target_path",
    "build_site_targets",
    "parse_targets",
    "site_tuf_key",
    "target_path",
]

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
    r"^(?:timestamp|(?:\d+\.)?(?:root|snapshot|targets|_adapter\.[a-z0-9][a-z0-9._-]{0,62}"
    r"|[a-z0-9][a-z0-9._-]{0,62}))\.json$"
)
#: A task's consortium adapter role is ``_adapter.<task>``; its targets ``_adapters/<task>/...``.
ADAPTER_ROLE_PREFIX = "_adapter."
ADAPTER_TARGETS = "_adapters"


def adapter_role(task_id: str) -> str:
    """The name of a task's consortium adapter role."""
    return f"{ADAPTER_ROLE_PREFIX}{task_id}"


def adapter_target_path(task_id: str, bundle_digest: str, name: str) -> str:
    """The TUF target path of one file of a task's consortium adapter."""
    return f"{ADAPTER_TARGETS}/{task_id}/{bundle_digest}/{name}"


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


def parse_targets(
    data: bytes, code: RejectCode, what: str = "the site's targets metadata"
) -> Metadata[Targets]:
    """Delegated-targets metadata (a site's, an adapter role's), parsed but not verified.

    Raises:
        RejectedError: ``code``, when it does not parse or is not targets metadata.
    """
    try:
        metadata = Metadata[Targets].from_bytes(data)
    except (DeserializationError, ValueError, TypeError) as exc:
        raise RejectedError(code, f"{what} does not parse: {exc}") from exc
    if not isinstance(metadata.signed, Targets):
        raise RejectedError(code, f"{what} is not targets metadata")
    return metadata


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
        *,
        unsigned_code: RejectCode = RejectCode.INVALID_TUF_METADATA,
    ) -> None:
        """Checks a site's new delegated metadata before the bundle is accepted (pure of writes).

        It must be signed by one of the site's keys, be the next version, list
        exactly the previous targets plus this bundle's files, and not expire.

        Raises:
            RejectedError: code ``INVALID_TUF_METADATA`` (``unsigned_code`` when
                no key of the site signed it).
        """

        def reject(message: str) -> RejectedError:
            return RejectedError(RejectCode.INVALID_TUF_METADATA, message)

        metadata = parse_targets(data, RejectCode.INVALID_TUF_METADATA)
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
            raise RejectedError(
                unsigned_code, "the site's targets metadata is not signed by the site's key"
            ) from exc
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

    def announced_bundle(self, data: bytes) -> tuple[str, str, Mapping[str, tuple[int, str]]]:
        """Which bundle a site's new delegated metadata announces (unverified; pure of writes).

        Returns ``(site, bundle digest, {file name: (length, sha256)})`` of the
        targets that the stored metadata of that site does not list yet. The
        caller verifies the signature with :meth:`check_site_targets`.

        Raises:
            RejectedError: ``UNAUTHENTICATED`` when the metadata is absent, does
                not parse, or does not announce exactly one bundle of one site.
            ConflictError: it announces no new bundle (a repeated publication).
        """

        def reject(message: str) -> RejectedError:
            return RejectedError(RejectCode.UNAUTHENTICATED, message)

        if not data:
            raise reject("the publish header carries no signed site metadata")
        metadata = parse_targets(data, RejectCode.UNAUTHENTICATED)
        parts = [path.split("/") for path in metadata.signed.targets]
        sites = {p[0] for p in parts}
        if len(sites) != 1 or any(len(p) != 3 for p in parts):
            raise reject("the site's targets metadata must list paths <site>/<digest>/<file>")
        (site_id,) = sites
        if not _METADATA_NAME.match(f"{site_id}.json") or site_id in TOP_ROLES:
            raise reject(f"not a site id: {site_id[:80]!r}")
        stored = self.metadata_dir / f"{site_id}.json"
        previous = (
            set(Metadata[Targets].from_file(str(stored)).signed.targets)
            if stored.exists()
            else set()
        )
        new = {
            path: target for path, target in metadata.signed.targets.items() if path not in previous
        }
        digests = {path.split("/")[1] for path in new}
        if not digests:
            raise ConflictError(f"site {site_id} has published this bundle already")
        if len(digests) != 1:
            raise reject("the site's targets metadata must add exactly one bundle")
        (digest,) = digests
        files = {}
        for path, target in new.items():
            sha256 = target.hashes.get("sha256")
            if sha256 is None:
                raise reject(f"target {path} has no sha256")
            files[path.split("/")[2]] = (target.length, sha256)
        return site_id, digest, files

    def store_site_targets(self, site_id: str, data: bytes) -> None:
        """Stores a checked site's delegated metadata."""
        self._write(f"{site_id}.json", Metadata[Targets].from_bytes(data))

    def store_adapter_role(self, task_id: str, data: bytes) -> None:
        """Stores a checked version of a task's consortium adapter role."""
        self._write(f"{adapter_role(task_id)}.json", Metadata[Targets].from_bytes(data))

    def adapter_role_bytes(self, task_id: str) -> bytes | None:
        """The current version of a task's consortium adapter role (None: never published)."""
        path = self.metadata_dir / f"{adapter_role(task_id)}.json"
        return path.read_bytes() if path.is_file() else None

    def site_target_digests(self, site_id: str, version: int | None = None) -> set[str]:
        """The bundle digests a role's stored metadata lists (that version, or now).

        ``site_id``: a site's role, or a task's consortium adapter role.
        """
        name = f"{site_id}.json" if version is None else f"{version}.{site_id}.json"
        signed = self._load(name).signed
        assert isinstance(signed, Targets)
        return {path.split("/")[-2] for path in signed.targets if path.count("/") >= 2}

    def revert_unrecorded_site_targets(self, recorded: Mapping[str, set[str]]) -> list[str]:
        """Recovery: rolls back site metadata stored by a publication that never committed.

        A publication writes the site's metadata just before its database
        commit; a crash in between leaves metadata that lists a bundle the
        database does not hold. Each such file goes back to the newest earlier
        version whose bundles are all recorded (or away, if there is none).

        Args:
            recorded: ``{site: digests the database holds for it}``.

        Returns:
            The sites whose metadata was reverted.
        """
        reverted = []
        for current in sorted(self.metadata_dir.glob("*.json")):
            site_id = current.stem
            if site_id in TOP_ROLES or re.match(r"^\d+\.", site_id):
                continue  # a top-level role, or a versioned copy
            known = recorded.get(site_id, set())
            version = self._load(current.name).signed.version
            if self.site_target_digests(site_id) <= known:
                continue
            while version >= 1:
                newer = self.metadata_dir / f"{version}.{site_id}.json"
                if newer.exists() and self.site_target_digests(site_id, version) <= known:
                    break
                newer.unlink(missing_ok=True)
                version -= 1
            if version >= 1:
                self._write_bytes(
                    current.name, (self.metadata_dir / f"{version}.{site_id}.json").read_bytes()
                )
            else:
                current.unlink()
            reverted.append(site_id)
        return reverted

    # -- top-level roles ----------------------------------------------------------

    def sync(
        self,
        sites: Mapping[str, tuple[list[bytes], list[str]]],
        published: set[str],
        adapters: Mapping[str, str | None] | None = None,
        adapter_threshold: int = 2,
    ) -> None:
        """Re-signs the top-level roles to match ``{site: (key PEMs, active bundle digests)}``.

        Only sites with an unrevoked key and an active bundle get a delegation,
        and only for those bundles' paths; ``published`` names every site that
        ever published (its metadata stays in the snapshot). ``adapters`` maps
        each task that ever had a consortium adapter to its current one (None:
        revoked); the task's role is delegated to every unrevoked site key with
        ``adapter_threshold``, for that bundle's paths only. Versions are
        bumped only on change.
        """
        targets = self._load("targets.json")
        keys: dict[str, Key] = {}
        roles: dict[str, DelegatedRole] = {}
        every_key: dict[str, Key] = {}
        for site_id, (pems, digests) in sorted(sites.items()):
            site_keys = [site_tuf_key(pem) for pem in pems]
            every_key.update({key.keyid: key for key in site_keys})
            if not pems or not digests:
                continue
            keys.update({key.keyid: key for key in site_keys})
            roles[site_id] = DelegatedRole(
                site_id,
                sorted(k.keyid for k in site_keys),
                1,
                True,
                sorted(f"{site_id}/{digest}/*" for digest in digests),
            )
        for task_id, digest in sorted((adapters or {}).items()):
            if digest is None or not every_key:
                continue
            keys.update(every_key)
            roles[adapter_role(task_id)] = DelegatedRole(
                adapter_role(task_id),
                sorted(every_key),
                adapter_threshold,
                True,
                [adapter_target_path(task_id, digest, "*")],
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
        for role in sorted(published | {adapter_role(task) for task in adapters or {}}):
            if (self.metadata_dir / f"{role}.json").exists():
                version = self._load(f"{role}.json").signed.version
                meta[f"{role}.json"] = MetaFile(version=version)
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
