"""The registry's writer: enrolment, publication, revocation, recovery and TUF.

SQLite (WAL) holds the metadata, :class:`BlobStore` the files, :class:`EventLog`
the history. A publication writes its blobs first, then appends its event and
commits its rows in one transaction; :meth:`Registry.open` recovers from a crash
at any point by removing temporary files, unreferenced blobs and unacknowledged
event lines, so an interrupted publication leaves nothing behind.

:class:`Registry` writes through a connection of its own and inherits every
query from :class:`registry.RegistryReader`, whose connection sees only
committed rows.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from tuf.api.metadata import Metadata, Targets

from protocol import (
    ADAPTER_BACKBONE,
    AdapterCard,
    BundleRef,
    GscoError,
    SiteKey,
)
from registry._adapter import CARD_FILE as ADAPTER_CARD
from registry._adapter import AcceptedAdapter, AdapterLimits, verify_adapter
from registry._blobs import BlobStore
from registry._consortium import (
    MIN_SIGNERS,
    announced_adapter,
    check_adapter_role,
    check_backing,
    parse_adapter_path,
    role_signers,
)
from registry._events import EventLog, verify_event_log
from registry._reader import DATABASE, RegistryReader, event_head_in, has_kind_column
from registry._tuf import TufRepository, adapter_role
from registry._verify import (
    AcceptedBundle,
    Limits,
    check_names_and_sizes,
    verify_publication,
    verify_signed_digests,
)
from registry.errors import ConflictError, NotFoundError, RejectCode, RejectedError, StoreError
from signing import PublicKey

__all__ = ["Registry"]

log = logging.getLogger(__name__)


_SCHEMA = """
CREATE TABLE IF NOT EXISTS sites (
    key_id TEXT PRIMARY KEY,
    site_id TEXT NOT NULL,
    public_key_pem TEXT NOT NULL,
    enrolled_at TEXT NOT NULL,
    revoked_at TEXT
);
CREATE TABLE IF NOT EXISTS bundles (
    digest TEXT PRIMARY KEY,
    task_id TEXT NOT NULL,
    site_id TEXT NOT NULL,
    backbone TEXT NOT NULL,
    version INTEGER NOT NULL,
    key_id TEXT NOT NULL,
    published_at TEXT NOT NULL,
    size_bytes INTEGER NOT NULL,
    files TEXT NOT NULL,
    revoked_at TEXT,
    kind TEXT NOT NULL DEFAULT 'specialist',
    UNIQUE (site_id, task_id, backbone, version)
);
CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v TEXT NOT NULL);
"""


def _now() -> str:
    return datetime.now(UTC).isoformat()


class Registry(RegistryReader):
    """One registry storage folder, open for writing. Thread-safe; one process at a time."""

    def __init__(
        self, root: Path, limits: Limits | None = None, *, adapter_threshold: int | None = None
    ) -> None:
        """Opens (or creates) the registry in ``root``.

        ``adapter_threshold``: how many training sites must co-sign a task's
        consortium adapter (see :mod:`registry._consortium`); never fewer than
        :data:`registry.MIN_SIGNERS`. Kept in the registry's database: None
        keeps the stored value (:data:`MIN_SIGNERS` in a new registry); a new
        value is recorded in the event log.

        Raises:
            StoreError: the storage cannot be opened, or the threshold is below
                :data:`MIN_SIGNERS`.
        """
        # Not RegistryReader.__init__: the writer creates what the reader only opens.
        self.root = root
        self.limits = limits or Limits()
        if adapter_threshold is not None and adapter_threshold < MIN_SIGNERS:
            raise StoreError(f"the adapter threshold is at least {MIN_SIGNERS}")
        root.mkdir(parents=True, exist_ok=True)
        self.blobs = BlobStore(root)
        self.events = EventLog(root / "events.jsonl")
        self._lock = threading.RLock()
        try:
            self._db = sqlite3.connect(
                root / DATABASE, isolation_level=None, check_same_thread=False
            )
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)
            if not has_kind_column(self._db):  # a database from before adapters
                self._db.execute(
                    "ALTER TABLE bundles ADD COLUMN kind TEXT NOT NULL DEFAULT 'specialist'"
                )
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open the registry database in {root}: {exc}") from exc
        self._open_reads(root / DATABASE)
        self.tuf = TufRepository(root / "tuf")
        self.recovered = self._recover()
        self.adapter_threshold = self._threshold(adapter_threshold)
        self._sync_tuf()

    def _threshold(self, wanted: int | None) -> int:
        """The stored adapter threshold, set to ``wanted`` (and logged) when that differs."""
        row = self._db.execute("SELECT v FROM meta WHERE k = 'adapter_threshold'").fetchone()
        stored = int(row[0]) if row else None
        if wanted is None or wanted == stored:
            return stored or MIN_SIGNERS
        with self._transaction() as db:
            db.execute(
                "INSERT OR REPLACE INTO meta (k, v) VALUES ('adapter_threshold', ?)", (str(wanted),)
            )
            self._event(db, "configure", adapter_threshold=wanted)
        log.info("the consortium adapter threshold is now %d training sites", wanted)
        return wanted

    # -- transactions and recovery ------------------------------------------------

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _event(self, db: sqlite3.Connection, kind: str, **fields: object) -> None:
        count, previous = event_head_in(db)  # inside the transaction
        head = self.events.append(count, previous, kind, **fields)  # type: ignore[arg-type]
        db.execute(
            "INSERT OR REPLACE INTO meta (k, v) VALUES ('event_head', ?)", (json.dumps(head),)
        )

    def _recover(self) -> dict[str, int]:
        """Undoes what an interrupted write left; refuses a tampered event log."""
        with self._lock:
            count, digest = self.event_head()
            lines = self.events.lines()
            verify_event_log(lines[:count], (count, digest))
            dropped_events = self.events.truncate(count)
            referenced = set()
            for (files,) in self._db.execute("SELECT files FROM bundles"):
                referenced.update(json.loads(files).values())
            orphans = [d for d in self.blobs.digests() if d not in referenced]
            for orphan in orphans:
                self.blobs.delete(orphan)
            recorded: dict[str, set[str]] = {}
            for site_id, task_id, digest, kind in self._db.execute(
                "SELECT site_id, task_id, digest, kind FROM bundles"
            ):
                recorded.setdefault(site_id, set()).add(digest)
                if kind == "adapter":
                    recorded.setdefault(adapter_role(task_id), set()).add(digest)
            reverted = self.tuf.revert_unrecorded_site_targets(recorded)
            for site_id in reverted:
                log.warning(
                    "recovery: reverted %s's TUF targets of an unfinished publication", site_id
                )
            return {
                "reverted_site_targets": len(reverted),
                "temporary_files": self.blobs.clear_tmp(),
                "unreferenced_blobs": len(orphans),
                "unacknowledged_events": dropped_events,
            }

    # -- sites --------------------------------------------------------------------

    def enroll(self, site_id: str, public_key_pem: bytes) -> SiteKey:
        """Enrols a site's public key (P-256).

        Raises:
            signing.KeyFileError: not a P-256 public key.
            ConflictError: this key is enrolled already.
        """
        key = PublicKey.from_pem(public_key_pem)
        site = SiteKey(
            site_id=site_id,
            key_id=key.key_id,
            public_key_pem=key.pem.decode(),
            enrolled_at=datetime.now(UTC),
        )
        with self._transaction() as db:
            if db.execute("SELECT 1 FROM sites WHERE key_id = ?", (key.key_id,)).fetchone():
                raise ConflictError(f"key {key.key_id[:16]}… is enrolled already")
            db.execute(
                "INSERT INTO sites VALUES (?, ?, ?, ?, NULL)",
                (site.key_id, site.site_id, site.public_key_pem, site.enrolled_at.isoformat()),
            )
            self._event(db, "enroll", site_id=site_id, key_id=key.key_id)
        return site

    # -- bundles ------------------------------------------------------------------

    def _sync_tuf(self) -> None:
        """Brings the TUF top-level roles in line with the database."""
        sites: dict[str, tuple[list[bytes], list[str]]] = {}
        for site in self.sites():
            sites.setdefault(site.site_id, ([], []))[0].append(site.public_key_pem.encode())
        for ref in self.bundles():
            if ref.site_id in sites and ref.bundle_digest in self._site_listed(ref.site_id):
                sites[ref.site_id][1].append(ref.bundle_digest)
        published = {ref.site_id for ref in self.bundles(include_revoked=True)}
        keys_by_site = {site: pems for site, (pems, _) in sites.items()}
        self.tuf.sync(
            sites, published, self._current_adapters(keys_by_site), self.adapter_threshold
        )

    def _site_listed(self, site_id: str) -> set[str]:
        """The bundles a site's own delegated metadata lists (not the consortium's adapters)."""
        if not (self.tuf.metadata_dir / f"{site_id}.json").is_file():
            return set()
        return self.tuf.site_target_digests(site_id)

    def _current_adapters(self, keys_by_site: Mapping[str, list[bytes]]) -> dict[str, str | None]:
        """Each task's consortium adapter in effect (None: revoked, or its backing lost).

        The bundle the task's adapter role lists now, unless it was revoked or
        its co-signers with unrevoked keys no longer meet the threshold.
        """
        current: dict[str, str | None] = {}
        for task_id in self._adapter_tasks():
            data = self.tuf.adapter_role_bytes(task_id)
            if data is None:
                continue
            role = Metadata[Targets].from_bytes(data)
            found = {parse_adapter_path(path) for path in role.signed.targets}
            digests = {entry[1] for entry in found if entry is not None}
            digest = digests.pop() if len(digests) == 1 else None
            current[task_id] = (
                digest if digest and self._still_backed(digest, role, keys_by_site) else None
            )
        return current

    def _adapter_tasks(self) -> list[str]:
        rows = self._db.execute("SELECT DISTINCT task_id FROM bundles WHERE kind = 'adapter'")
        return sorted(task for (task,) in rows)

    def _still_backed(
        self, digest: str, role: Metadata[Targets], keys_by_site: Mapping[str, list[bytes]]
    ) -> bool:
        try:
            ref = self.bundle(digest)
            if ref.revoked:
                return False
            card = AdapterCard.parse(self.blobs.get(self.bundle_files(digest)[ADAPTER_CARD]))
            check_backing(
                card,
                role_signers(role, keys_by_site),
                ref.site_id,
                self.adapter_threshold,
                keys_by_site,
            )
        except GscoError as exc:
            log.warning("the consortium adapter %s is out of effect: %s", digest[:12], exc)
            return False
        return True

    def authenticate_upload(
        self, site_targets: bytes, declared: Mapping[str, tuple[int, str]]
    ) -> str:
        """Checks a publish header before a byte of the body is accepted; returns the site.

        The header's site metadata must be signed by an enrolled, unrevoked key
        of the site whose paths it lists, be that site's next version, and
        announce exactly the files, sizes and hashes the header declares. Pure
        of writes: an unauthenticated sender leaves no trace in the event log.

        Args:
            site_targets: the site's next TUF delegated-targets metadata.
            declared: ``{file name: (size in bytes, sha256)}`` from the header.

        Raises:
            RejectedError: ``BAD_FILE_NAME`` or ``TOO_LARGE`` (the declared
                files), ``UNAUTHENTICATED``, ``UNKNOWN_KEY``, ``REVOKED_KEY`` or
                ``INVALID_TUF_METADATA``.
        """
        check_names_and_sizes({name: size for name, (size, _) in declared.items()}, self.limits)
        if _announces_adapter(site_targets):
            return self._authenticate_adapter(site_targets, declared)
        if ADAPTER_CARD in declared:
            raise _unbacked_adapter()
        with self._lock:
            site_id, digest, announced = self.tuf.announced_bundle(site_targets)
            keys = [s for s in self.sites(include_revoked=True) if s.site_id == site_id]
            active = [s.public_key_pem.encode() for s in keys if not s.revoked]
            if not active:
                code = RejectCode.REVOKED_KEY if keys else RejectCode.UNKNOWN_KEY
                raise RejectedError(code, f"site {site_id!r} has no enrolled, unrevoked key")
            if dict(announced) != dict(declared):
                raise RejectedError(
                    RejectCode.UNAUTHENTICATED,
                    "the header declares other files, sizes or hashes than the site signed",
                )
            self.tuf.check_site_targets(
                site_targets,
                site_id,
                active,
                digest,
                {name: sha256 for name, (_, sha256) in declared.items()},
                {name: size for name, (size, _) in declared.items()},
                unsigned_code=RejectCode.UNAUTHENTICATED,
            )
        return site_id

    def _authenticate_adapter(self, role: bytes, declared: Mapping[str, tuple[int, str]]) -> str:
        """The header of a consortium adapter: its role signed by enough enrolled sites."""
        task_id, _, announced = announced_adapter(role)
        if dict(announced) != dict(declared):
            raise RejectedError(
                RejectCode.UNAUTHENTICATED,
                "the header declares other files, sizes or hashes than the sites signed",
            )
        with self._lock:
            signers = role_signers(Metadata[Targets].from_bytes(role), self._active_keys())
        needed = max(self.adapter_threshold, MIN_SIGNERS)
        if len(signers) < needed:
            raise RejectedError(
                RejectCode.NO_CONSORTIUM_BACKING,
                f"the adapter role for {task_id} is signed by {len(signers)} enrolled sites; "
                f"it needs at least {needed}",
            )
        return adapter_role(task_id)

    def _active_keys(self) -> dict[str, list[bytes]]:
        """Every enrolled, unrevoked key (PEM), by site."""
        keys: dict[str, list[bytes]] = {}
        for site in self.sites():
            keys.setdefault(site.site_id, []).append(site.public_key_pem.encode())
        return keys

    def check_signature(
        self, signature: bytes | None, digests: Mapping[str, str], sizes: Mapping[str, int]
    ) -> None:
        """The signature stage of a publication, from digests alone (logged when refused).

        What a receiver that hashed the body while streaming it to disk calls
        before it reads any file into memory.

        Raises:
            RejectedError: see :func:`registry.verify_signed_digests`.
        """
        with self._lock:
            try:
                verify_signed_digests(
                    signature,
                    digests,
                    sizes,
                    self.keyring(),
                    revoked_key_ids=self.revoked_key_ids(),
                    limits=self.limits,
                )
            except RejectedError as exc:
                with self._transaction() as db:
                    self._event(db, "reject", code=exc.code.value, reason=str(exc)[:1000])
                raise

    def publish(self, files: Mapping[str, bytes], site_targets: bytes) -> BundleRef:
        """Verifies and stores a bundle; a rejection is logged and stores nothing else.

        Args:
            files: the bundle's files, ``model.sig`` included.
            site_targets: the site's next TUF delegated-targets metadata, signed
                by the site (see :func:`registry.build_site_targets`).

        Raises:
            RejectedError: see :func:`registry.verify_publication`; also
                ``INVALID_TUF_METADATA`` for a wrong ``site_targets``.
        """
        with self._lock:
            signers: tuple[str, ...] = ()
            try:
                accepted = self._check(files)
                card = accepted.card
                if isinstance(accepted, AcceptedAdapter):
                    signers = self._check_consortium(accepted, files, site_targets)
                else:
                    self.tuf.check_site_targets(
                        site_targets,
                        card.site_id,
                        [
                            s.public_key_pem.encode()
                            for s in self.sites()
                            if s.site_id == card.site_id
                        ],
                        accepted.digest,
                        accepted.files,
                        {name: len(data) for name, data in files.items()},
                    )
            except RejectedError as exc:
                with self._transaction() as db:
                    self._event(db, "reject", code=exc.code.value, reason=str(exc)[:1000])
                raise
            if isinstance(accepted, AcceptedAdapter):
                kind, backbone = "adapter", ADAPTER_BACKBONE
            else:
                kind, backbone = "specialist", accepted.card.backbone
            stored = {name: self.blobs.put(files[name]) for name in sorted(files)}
            if stored != dict(accepted.files):
                raise StoreError("stored blobs do not match the verified digests")
            if isinstance(accepted, AcceptedAdapter):
                self.tuf.store_adapter_role(card.task_id, site_targets)
            else:
                self.tuf.store_site_targets(card.site_id, site_targets)
            published = datetime.now(UTC)
            with self._transaction() as db:
                db.execute(
                    "INSERT INTO bundles (digest, task_id, site_id, backbone, version, key_id, "
                    "published_at, size_bytes, files, revoked_at, kind) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, NULL, ?)",
                    (
                        accepted.digest,
                        card.task_id,
                        card.site_id,
                        backbone,
                        card.version,
                        accepted.manifest.key_id,
                        published.isoformat(),
                        accepted.size_bytes,
                        json.dumps(dict(accepted.files), sort_keys=True),
                        kind,
                    ),
                )
                self._event(
                    db,
                    "publish",
                    site_id=card.site_id,
                    key_id=accepted.manifest.key_id,
                    bundle_digest=accepted.digest,
                    task_id=card.task_id,
                    backbone=backbone,
                    version=card.version,  # an adapter's backbone is ADAPTER_BACKBONE
                    **({"co_signed_by": list(signers)} if signers else {}),
                )
            self._sync_tuf()
            return self.bundle(accepted.digest)

    def _check(self, files: Mapping[str, bytes]) -> AcceptedBundle | AcceptedAdapter:
        if ADAPTER_CARD in files:
            return self._check_adapter(files)
        card_site = _claimed(files)
        last = self.last_version(*card_site) if card_site else None
        accepted = verify_publication(
            files,
            self.keyring(),
            revoked_key_ids=self.revoked_key_ids(),
            last_version=last,
            limits=self.limits,
        )
        if self._db.execute(
            "SELECT 1 FROM bundles WHERE digest = ?", (accepted.digest,)
        ).fetchone():
            raise ConflictError(f"bundle {accepted.digest[:16]}… is published already")
        return accepted

    def _check_adapter(self, files: Mapping[str, bytes]) -> AcceptedAdapter:
        """The adapter check (any rank a generalist could serve; the hub holds its own limit)."""
        accepted = verify_adapter(
            files,
            self.keyring(),
            revoked_key_ids=self.revoked_key_ids(),
            limits=AdapterLimits(
                max_weights_bytes=min(self.limits.max_bundle_bytes, 2 * 1024**3),
                max_card_bytes=self.limits.max_card_bytes,
                max_signature_bytes=self.limits.max_signature_bytes,
                max_rank=256,
            ),
        )
        if self._db.execute(
            "SELECT 1 FROM bundles WHERE digest = ?", (accepted.digest,)
        ).fetchone():
            raise ConflictError(f"adapter {accepted.digest[:16]}… is published already")
        return accepted

    def _check_consortium(
        self, accepted: AcceptedAdapter, files: Mapping[str, bytes], role: bytes
    ) -> tuple[str, ...]:
        """The consortium's backing of an adapter: its role version, co-signed by its trainers.

        Returns the co-signing training sites.

        Raises:
            RejectedError: ``NO_CONSORTIUM_BACKING`` (a single site's metadata, or
                too few co-signers), ``STALE_VERSION`` (not the role's next
                version, or a card that says another), ``INVALID_TUF_METADATA``.
        """
        if not _announces_adapter(role):
            raise _unbacked_adapter()
        card = accepted.card
        metadata = check_adapter_role(
            role,
            task_id=card.task_id,
            bundle_digest=accepted.digest,
            files=accepted.files,
            sizes={name: len(data) for name, data in files.items()},
            previous=self.tuf.adapter_role_bytes(card.task_id),
        )
        if card.version != metadata.signed.version:
            raise RejectedError(
                RejectCode.STALE_VERSION,
                f"the card says version {card.version}; the consortium's adapter for "
                f"{card.task_id} is at version {metadata.signed.version}",
            )
        keys = self._active_keys()
        return check_backing(
            card,
            role_signers(metadata, keys),
            accepted.manifest.site_id,
            self.adapter_threshold,
            keys,
        )

    def revoke_bundle(self, digest: str, reason: str) -> int:
        """Revokes one bundle; returns 1, or 0 if it was revoked already."""
        self.bundle(digest)
        with self._transaction() as db:
            changed = db.execute(
                "UPDATE bundles SET revoked_at = ? WHERE digest = ? AND revoked_at IS NULL",
                (_now(), digest),
            ).rowcount
            if changed:
                self._event(db, "revoke-bundle", bundle_digest=digest, reason=reason[:1000])
        self._sync_tuf()
        return changed

    def revoke_key(self, key_id: str, reason: str) -> int:
        """Revokes a site key and every bundle it signed; returns how many things changed."""
        with self._transaction() as db:
            row = db.execute("SELECT site_id FROM sites WHERE key_id = ?", (key_id,)).fetchone()
            if row is None:
                raise NotFoundError(f"no enrolled key {key_id}")
            changed = db.execute(
                "UPDATE sites SET revoked_at = ? WHERE key_id = ? AND revoked_at IS NULL",
                (_now(), key_id),
            ).rowcount
            changed += db.execute(
                "UPDATE bundles SET revoked_at = ? WHERE key_id = ? AND revoked_at IS NULL",
                (_now(), key_id),
            ).rowcount
            if changed:
                self._event(db, "revoke-key", site_id=row[0], key_id=key_id, reason=reason[:1000])
        self._sync_tuf()
        return changed

    def close(self) -> None:
        """Closes the database connections and the event log."""
        self.events.close()
        super().close()
        self._db.close()


def _claimed(files: Mapping[str, bytes]) -> tuple[str, str, str] | None:
    """(site, task, backbone) the card claims, for the version check (None if unreadable)."""
    from protocol import SpecialistCard

    try:
        card = SpecialistCard.parse(files.get("card.json", b""))
    except GscoError:
        return None
    return card.site_id, card.task_id, card.backbone


def _announces_adapter(metadata: bytes) -> bool:
    """Whether publish-header metadata is a consortium adapter role (else a site's own)."""
    try:
        announced_adapter(metadata)
    except RejectedError:
        return False
    return True


def _unbacked_adapter() -> RejectedError:
    return RejectedError(
        RejectCode.NO_CONSORTIUM_BACKING,
        "an adapter is published with its task's consortium role, co-signed by its training "
        "sites (gsco federation run --tune-rounds), never on one site's own metadata",
    )
