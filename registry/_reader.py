"""Reading a registry's state: its keys, bundles and event log, from committed rows only.

:class:`RegistryReader` answers every query the registry serves and the
auditor asks. It reads through a connection of its own, so it never sees the
rows of a transaction the writer (:class:`registry.Registry`) has not
committed; opened on its own it is read-only (``mode=ro``): no recovery, no
re-signing, no writes, so a tampered event log or a corrupt blob is reported
by the audit instead of being repaired.
"""

from __future__ import annotations

import json
import logging
import posixpath
import sqlite3
import threading
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path

from pydantic import ValidationError

from protocol import UINT32_MAX, BundleRef, SiteKey, UnreadableBundle
from registry._blobs import BlobStore
from registry._events import GENESIS, EventLog, verify_event_log
from registry._tuf import ADAPTER_TARGETS, TufRepository
from registry._verify import Limits
from registry.errors import NotFoundError, StoreError
from signing import KeyRing, PublicKey, TrustedKey

__all__ = ["RegistryReader", "event_head_in", "has_kind_column", "keyring_of"]

log = logging.getLogger(__name__)

DATABASE = "registry.sqlite3"


def keyring_of(sites: Iterable[SiteKey]) -> KeyRing:
    """A verifier's key ring from enrolled keys (as the registry lists them)."""
    return KeyRing(
        TrustedKey(s.site_id, PublicKey.from_pem(s.public_key_pem.encode())) for s in sites
    )


def has_kind_column(db: sqlite3.Connection) -> bool:
    """Whether the bundles table has the ``kind`` column (databases from before adapters do not)."""
    return any(row[1] == "kind" for row in db.execute("PRAGMA table_info(bundles)"))


def event_head_in(db: sqlite3.Connection) -> tuple[int, str]:
    """(count, hash of the last line) of the event log, as ``db`` records it."""
    row = db.execute("SELECT v FROM meta WHERE k = 'event_head'").fetchone()
    if row is None:
        return 0, GENESIS
    count, digest = json.loads(row[0])
    return int(count), str(digest)


def read_connection(database: Path) -> sqlite3.Connection:
    """A read-only connection to ``database``: it sees committed rows only.

    Raises:
        sqlite3.Error: the file is not a readable registry database.
    """
    db = sqlite3.connect(
        f"{database.resolve().as_uri()}?mode=ro",
        uri=True,
        isolation_level=None,
        check_same_thread=False,
    )
    db.execute("SELECT 1 FROM sites LIMIT 1")
    return db


class RegistryReader:
    """The queries over one registry storage folder. Thread-safe.

    Raises:
        StoreError: ``root`` holds no readable registry database.
    """

    def __init__(self, root: Path) -> None:
        database = root / DATABASE
        if not database.is_file():
            raise StoreError(f"{root} is not a registry storage folder (no {DATABASE})")
        self.root = root
        self.limits = Limits()
        self.blobs = BlobStore(root, create=False)
        self.events = EventLog(root / "events.jsonl", create=False)
        self.tuf = TufRepository(root / "tuf", read_only=True)
        self._lock = threading.RLock()
        self._open_reads(database)
        self.recovered: dict[str, int] = {}

    def _open_reads(self, database: Path) -> None:
        try:
            self._read_db = read_connection(database)
            # A database from before adapters holds specialists only.
            self._kind = "kind" if has_kind_column(self._read_db) else "'specialist'"
        except sqlite3.Error as exc:
            raise StoreError(f"cannot read the registry database in {self.root}: {exc}") from exc

    # -- the event log ------------------------------------------------------------

    def event_head(self) -> tuple[int, str]:
        """(count, hash of the last line) of the committed event log."""
        with self._lock:
            return event_head_in(self._read_db)

    def event_log(self) -> tuple[tuple[int, str], list[bytes]]:
        """The committed head and the raw event-log lines, read together."""
        with self._lock:
            return self.event_head(), self.events.lines()

    def verify_events(self) -> int:
        """Verifies the whole event log against the committed head; returns its length."""
        events, _ = verify_event_log(self.events.lines(), self.event_head())
        return len(events)

    # -- sites --------------------------------------------------------------------

    def sites(self, *, include_revoked: bool = False) -> list[SiteKey]:
        """Enrolled keys, oldest first."""
        with self._lock:
            rows = self._read_db.execute(
                "SELECT site_id, key_id, public_key_pem, enrolled_at, revoked_at FROM sites "
                "ORDER BY enrolled_at"
            ).fetchall()
        return [
            SiteKey(
                site_id=r[0],
                key_id=r[1],
                public_key_pem=r[2],
                enrolled_at=datetime.fromisoformat(r[3]),
                revoked=r[4] is not None,
            )
            for r in rows
            if include_revoked or r[4] is None
        ]

    def keyring(self) -> KeyRing:
        """The enrolled, unrevoked keys."""
        return keyring_of(self.sites())

    def revoked_key_ids(self) -> frozenset[str]:
        """Keys that were enrolled and then revoked."""
        return frozenset(s.key_id for s in self.sites(include_revoked=True) if s.revoked)

    # -- bundles ------------------------------------------------------------------

    def last_version(self, site_id: str, task_id: str, backbone: str) -> int | None:
        """The site's highest version for the task and backbone (revoked ones included).

        A row whose version the wire cannot carry (stored before the schema
        bounded it) is never served, so it does not block the site's next version.
        """
        with self._lock:
            row = self._read_db.execute(
                "SELECT MAX(version) FROM bundles WHERE site_id = ? AND task_id = ? "
                "AND backbone = ? AND version BETWEEN 1 AND ?",
                (site_id, task_id, backbone, UINT32_MAX),
            ).fetchone()
        return None if row[0] is None else int(row[0])

    def bundle(self, digest: str) -> BundleRef:
        """One bundle by digest."""
        found = self.bundles(digest=digest, include_revoked=True)
        if not found:
            raise NotFoundError(f"no bundle {digest}")
        return found[0]

    def bundles(
        self,
        *,
        task_id: str | None = None,
        site_id: str | None = None,
        digest: str | None = None,
        include_revoked: bool = False,
    ) -> list[BundleRef]:
        """Published bundles (specialists and adapters), oldest first, filtered."""
        query = self._select() + " WHERE 1=1"
        args: list[str] = []
        for column, value in (("task_id", task_id), ("site_id", site_id), ("digest", digest)):
            if value:
                query += f" AND {column} = ?"
                args.append(value)
        if not include_revoked:
            query += " AND revoked_at IS NULL"
        return self._bundle_rows(query, args)[0]

    def unreadable_bundles(self) -> list[UnreadableBundle]:
        """Stored rows that do not fit :class:`BundleRef`; :meth:`bundles` leaves them out.

        Only a registry older than its schema's bounds (or an edited database)
        holds such rows. They are never served, and ``gsco audit`` flags them.
        """
        return self._bundle_rows(self._select(), [])[1]

    def _select(self) -> str:
        # self._kind is the column name or a constant, never input.
        return (
            "SELECT task_id, site_id, backbone, version, digest, key_id, published_at, "  # noqa: S608
            f"size_bytes, revoked_at, {self._kind} FROM bundles"
        )

    def _bundle_rows(
        self, query: str, args: list[str]
    ) -> tuple[list[BundleRef], list[UnreadableBundle]]:
        with self._lock:
            rows = self._read_db.execute(query + " ORDER BY published_at", args).fetchall()
        good: list[BundleRef] = []
        bad: list[UnreadableBundle] = []
        for r in rows:
            try:
                good.append(
                    BundleRef(
                        task_id=r[0],
                        site_id=r[1],
                        backbone=r[2],
                        version=r[3],
                        bundle_digest=r[4],
                        key_id=r[5],
                        published_at=datetime.fromisoformat(r[6]),
                        size_bytes=r[7],
                        revoked=r[8] is not None,
                        kind=r[9],
                    )
                )
            except (ValidationError, ValueError, TypeError) as exc:
                problem = "; ".join(
                    f"{'.'.join(map(str, e['loc']))}: {e['msg']}"
                    for e in (exc.errors() if isinstance(exc, ValidationError) else [])
                ) or str(exc)
                log.warning("stored bundle %s is unreadable and not served: %s", r[4], problem)
                bad.append(UnreadableBundle(bundle_digest=str(r[4])[:200], problem=problem[:2000]))
        return good, bad

    def bundle_files(self, digest: str) -> dict[str, str]:
        """``{file name: blob sha256}`` of a bundle."""
        with self._lock:
            row = self._read_db.execute(
                "SELECT files FROM bundles WHERE digest = ?", (digest,)
            ).fetchone()
        if row is None:
            raise NotFoundError(f"no bundle {digest}")
        files: dict[str, str] = json.loads(row[0])
        return files

    def target_blob(self, path: str) -> str:
        """The blob digest behind a TUF target path.

        ``<site>/<bundle digest>/<file>``, or a consortium adapter's
        ``_adapters/<task>/<bundle digest>/<file>``.

        Raises:
            NotFoundError: no such bundle, site or file.
        """
        parts = path.split("/")
        # Only the canonical form: plain components, no '..', '.', or empty ones.
        if (
            len(parts) not in (3, 4)
            or posixpath.normpath(path) != path
            or any(part in ("", ".", "..") or "\\" in part for part in parts)
            or (len(parts) == 4 and parts[0] != ADAPTER_TARGETS)
        ):
            raise NotFoundError(f"not a target path: {path[:200]!r}")
        owner, digest, name = parts[-3:]
        files = self.bundle_files(digest)
        ref = self.bundle(digest)
        matches = (
            ref.kind == "adapter" and ref.task_id == owner
            if len(parts) == 4
            else ref.site_id == owner
        )
        if not matches or name not in files:
            raise NotFoundError(f"no target {path!r}")
        return files[name]

    def close(self) -> None:
        """Closes the reading connection."""
        self._read_db.close()
