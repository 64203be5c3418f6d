"""The hub's access log: who asked what, and which specialists answered. Never the image.

One canonical JSON :class:`AccessRecord` per line of ``access.jsonl``, each
naming the sha256 of the line before it, so editing, removing or reordering a
line breaks the chain (:func:`verify_access_log` names where). The head of the
chain is kept in memory while the hub runs; the file is locked against a
second hub writing to it.
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AwareDatetime, Field, StringConstraints

from hub.errors import AccessLogError
from protocol import (
    GENESIS,
    ChainedLog,
    ChainError,
    Label,
    Mode,
    Sha256Hex,
    StrictModel,
    walk_chain,
)

__all__ = ["GENESIS", "AccessLog", "AccessRecord", "verify_access_log"]


class AccessRecord(StrictModel):
    """One diagnosis request, answered or refused."""

    schema_version: Literal[1] = 1
    seq: Annotated[int, Field(ge=0)]
    time: AwareDatetime
    request_id: Annotated[str, StringConstraints(min_length=1, max_length=64)]
    client_id: Annotated[str, StringConstraints(min_length=1, max_length=100)]
    image_sha256: Sha256Hex | None = None  # None when the request carried no readable body
    task_id: Annotated[str, StringConstraints(max_length=200)] | None = None
    mode_requested: Mode | None = None
    mode_used: Mode | None = None
    degraded: bool = False
    label: Label | None = None
    specialist_digests: tuple[Sha256Hex, ...] = ()
    registry_snapshot_version: Annotated[int, Field(ge=0)] | None = None
    outcome: Annotated[str, StringConstraints(min_length=1, max_length=64)]  # "ok" or error type
    prev_hash: Sha256Hex


def verify_access_log(path: Path) -> list[AccessRecord]:
    """Every record of ``path`` after checking each line and the hash chain.

    Raises:
        AccessLogError: unreadable, a malformed line, or a broken chain (names the line).
    """
    return _verified(path)[0]


def _verified(path: Path) -> tuple[list[AccessRecord], str]:
    """The records of ``path`` and the hash of its last line, after checking the chain."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise AccessLogError(f"cannot read {path}: {exc.strerror or exc}") from exc
    if data and not data.endswith(b"\n"):
        raise AccessLogError(f"{path.name}: the last line is truncated (no newline)")
    try:
        return walk_chain(data.splitlines(keepends=True), AccessRecord)
    except ChainError as exc:
        raise AccessLogError(f"{path.name}: {exc}") from exc


class AccessLog:
    """Appends to ``path``; verifies the existing chain when opened.

    Raises:
        AccessLogError: the existing log is broken, or another process holds it.
    """

    def __init__(self, path: Path, *, fsync: bool = True) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._log = ChainedLog(path, AccessRecord, fsync=fsync)
        try:
            self._log.lock(wait=False)
        except OSError as exc:
            self._log.close()
            raise AccessLogError(f"{path} is in use by another hub") from exc
        try:
            records, last = _verified(path)  # read and walked once, a truncated line too
        except AccessLogError:
            self._log.close()
            raise
        self._log.resume((len(records), last))

    def append(
        self,
        *,
        request_id: str,
        client_id: str,
        outcome: str,
        image_sha256: str | None = None,
        task_id: str | None = None,
        mode_requested: Mode | None = None,
        mode_used: Mode | None = None,
        degraded: bool = False,
        label: str | None = None,
        specialist_digests: tuple[str, ...] = (),
        registry_snapshot_version: int | None = None,
    ) -> AccessRecord:
        """Appends one record (flushed, and fsynced unless turned off)."""
        with self._lock:
            return self._log.append(
                {
                    "time": datetime.now(UTC),
                    "request_id": request_id,
                    "client_id": client_id,
                    "image_sha256": image_sha256,
                    "task_id": task_id,
                    "mode_requested": mode_requested,
                    "mode_used": mode_used,
                    "degraded": degraded,
                    "label": label,
                    "specialist_digests": specialist_digests,
                    "registry_snapshot_version": registry_snapshot_version,
                    "outcome": outcome,
                }
            )

    def close(self) -> None:
        """Releases the file."""
        with self._lock:
            self._log.close()
