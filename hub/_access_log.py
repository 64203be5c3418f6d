"""The hub's access log: who asked what, and which specialists answered. Never the image.

One canonical JSON :class:`AccessRecord` per line of ``access.jsonl``, each
naming the sha256 of the line before it, so editing, removing or reordering a
line breaks the chain (:func:`verify_access_log` names where). The head of the
chain is kept in memory while the hub runs; the file is locked against a
second hub writing to it. Records are written with group commit: many answers,
one write and one fsync, and each answer is sent only after its record is durable.
"""

from __future__ import annotations

import logging
import os
import threading
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal

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

log = logging.getLogger(__name__)


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
    return _walked(_read(path), path.name)


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise AccessLogError(f"cannot read {path}: {exc.strerror or exc}") from exc


def _walked(data: bytes, name: str) -> tuple[list[AccessRecord], str]:
    if data and not data.endswith(b"\n"):
        raise AccessLogError(f"{name}: the last line is truncated (no newline)")
    try:
        return walk_chain(data.splitlines(keepends=True), AccessRecord)
    except ChainError as exc:
        raise AccessLogError(f"{name}: {exc}") from exc


def _without_unfinished_line(path: Path, data: bytes) -> bytes:
    """``data``, the content of ``path``, without an unterminated last line (cut off both).

    Such a line is a write the hub died in. It was never fsynced as a whole, so no
    answer waited on it: the hub answers only after the write of its record, newline
    included, was made durable.
    """
    if not data or data.endswith(b"\n"):
        return data
    keep = data.rfind(b"\n") + 1
    with path.open("r+b") as handle:
        handle.truncate(keep)
        handle.flush()
        os.fsync(handle.fileno())
    log.warning("%s: cut off an unfinished last line (%d bytes)", path, len(data) - keep)
    return data[:keep]


@dataclass
class _Pending:
    fields: dict[str, Any]
    done: Future[AccessRecord] = field(default_factory=Future)


class AccessLog:
    """Appends to ``path`` with group commit; verifies the existing chain when opened.

    One writer thread takes every record queued while it was writing and appends
    them with one write and one fsync (:meth:`ChainedLog.append_many`); each
    caller returns (or its future resolves) only after its own record is durable,
    so nothing is answered that is not logged, however many answers share a
    write. An unterminated last line, left by a hub killed inside a write, is cut
    off when the log is opened: no answer waited on it.

    Raises:
        AccessLogError: the existing log is broken, or another process holds it.
    """

    def __init__(self, path: Path, *, fsync: bool = True, max_batch: int = 256) -> None:
        self.path = path
        self.max_batch = max_batch
        self._log = ChainedLog(path, AccessRecord, fsync=fsync)
        try:
            self._log.lock(wait=False)
        except OSError as exc:
            self._log.close()
            raise AccessLogError(f"{path} is in use by another hub") from exc
        try:
            data = _without_unfinished_line(path, _read(path))  # read and walked once
            records, last = _walked(data, path.name)
        except AccessLogError:
            self._log.close()
            raise
        self._log.resume((len(records), last))
        self._queue: list[_Pending] = []
        self._wake = threading.Condition()
        self._closed = False
        self._writes = 0  # write+fsync calls so far (group commits)
        self._writer = threading.Thread(target=self._write_loop, name="access-log", daemon=True)
        self._writer.start()

    @property
    def writes(self) -> int:
        """How many writes (each with one fsync) the log has made since it was opened."""
        return self._writes

    def submit(
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
    ) -> Future[AccessRecord]:
        """Queues one record; the future resolves once it is durable (or with the error).

        Raises:
            AccessLogError: the log is closed.
            pydantic.ValidationError: the fields do not make a record (nothing queued).
        """
        fields: dict[str, Any] = {
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
        # Checked here, so that one bad record fails its caller, not a whole group.
        AccessRecord.model_validate({**fields, "seq": 0, "prev_hash": GENESIS})
        pending = _Pending(fields)
        with self._wake:
            if self._closed:
                raise AccessLogError(f"{self.path.name} is closed")
            self._queue.append(pending)
            self._wake.notify()
        return pending.done

    def append(self, **fields: Any) -> AccessRecord:
        """Appends one record and returns it once it is durable (see :meth:`submit`).

        Raises:
            AccessLogError: the log is closed, or the write or fsync failed.
        """
        return self.submit(**fields).result()

    def _write_loop(self) -> None:
        while True:
            with self._wake:
                while not self._queue and not self._closed:
                    self._wake.wait()
                if not self._queue:
                    return  # closed and drained
                batch = self._queue[: self.max_batch]
                del self._queue[: self.max_batch]
            try:
                records = self._log.append_many([p.fields for p in batch])
            except OSError as exc:
                error = AccessLogError(f"cannot write {self.path.name}: {exc.strerror or exc}")
                for pending in batch:
                    pending.done.set_exception(error)
                continue
            self._writes += 1
            for pending, record in zip(batch, records, strict=True):
                pending.done.set_result(record)

    def close(self) -> None:
        """Writes what is queued, stops the writer and releases the file."""
        with self._wake:
            self._closed = True
            self._wake.notify()
        if self._writer.is_alive() and self._writer is not threading.current_thread():
            self._writer.join()
        self._log.close()
