"""Hash-chained JSON-lines logs: one walker and one writer for every such log.

The registry's event log, the sites' egress ledgers and the hub's access log
share this format.

Each line is a canonical JSON document with ``seq`` (its 0-based position)
and ``prev_hash`` (the sha256 of the line before it, :data:`GENESIS` for the
first), so editing, removing or reordering any line but the last breaks the
chain. The last line is anchored by whoever keeps the head (the registry's
database, the auditor's cross-checks).

:func:`walk_chain` reads and checks a log; :class:`ChainedLog` appends to one
(each record validated, written as one canonical line, flushed and fsynced),
and its callers decide where the head comes from: the file itself, or an
anchor they keep (the registry's database).
"""

from __future__ import annotations

import fcntl
import hashlib
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Generic, Protocol, TypeVar

from protocol._base import StrictModel
from protocol._canonical import canonical_json
from protocol.errors import GscoError, ProtocolError

__all__ = ["GENESIS", "ChainError", "ChainedLog", "line_hash", "walk_chain"]

GENESIS = "0" * 64


class ChainError(ProtocolError):
    """A hash-chained log has a malformed line or a broken chain.

    Attributes:
        line: the 1-based number of the offending line.
        broken: ``True`` for a broken chain, ``False`` for a malformed line.
    """

    def __init__(self, message: str, line: int, *, broken: bool) -> None:
        super().__init__(message)
        self.line = line
        self.broken = broken


class _Chained(Protocol):
    seq: int
    prev_hash: str


_T = TypeVar("_T", bound=StrictModel)


def line_hash(line: bytes) -> str:
    """sha256 of one line (without its newline)."""
    return hashlib.sha256(line.rstrip(b"\n")).hexdigest()


def walk_chain(lines: Iterable[bytes], model: type[_T]) -> tuple[list[_T], str]:
    """Parses every line as ``model`` and checks ``seq`` and ``prev_hash`` along the chain.

    Returns:
        The records and the hash of the last line (:data:`GENESIS` when empty).

    Raises:
        ChainError: the first malformed line, or the first line that does not
            follow the one before it.
    """
    records: list[_T] = []
    previous = GENESIS
    for number, line in enumerate(lines, start=1):
        try:
            record = model.parse(line)
        except GscoError as exc:
            raise ChainError(f"line {number} is malformed: {exc}", number, broken=False) from exc
        chained: _Chained = record  # type: ignore[assignment]
        if chained.prev_hash != previous or chained.seq != number - 1:
            where = f"lines {number - 1} and {number}" if number > 1 else "line 1"
            raise ChainError(
                f"the hash chain breaks at {where} (a line was edited, removed or reordered)",
                number,
                broken=True,
            )
        previous = line_hash(line)
        records.append(record)
    return records, previous


class ChainedLog(Generic[_T]):
    """Appends ``model`` records to the hash-chained log at ``path``.

    The head (how many records, the hash of the last line) is where the next
    record chains on: :meth:`resume` reads it from the file, verifying every
    line, or takes it from an anchor the caller keeps; :meth:`append` moves
    it. ``fsync=False`` only flushes (for tests and throwaway logs).
    """

    def __init__(self, path: Path, model: type[_T], *, fsync: bool = True) -> None:
        self.path = path
        self.model = model
        self._fsync = fsync
        path.parent.mkdir(parents=True, exist_ok=True)
        self._handle: IO[bytes] = path.open("ab")
        self.head: tuple[int, str] = (0, GENESIS)

    def lock(self, *, wait: bool) -> None:
        """Takes an exclusive lock on the file for as long as this object is open.

        Raises:
            BlockingIOError: ``wait`` is false and another process holds it.
        """
        fcntl.flock(self._handle, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))

    def resume(self, head: tuple[int, str] | None = None) -> list[_T]:
        """Sets the head from ``head``, or from the file after verifying it (its records).

        Raises:
            ChainError: the file's chain is broken or a line is malformed.
        """
        if head is not None:
            self.head = head
            return []
        records, last = walk_chain(self.path.read_bytes().splitlines(keepends=True), self.model)
        self.head = (len(records), last)
        return records

    def append(self, fields: Mapping[str, Any]) -> _T:
        """Appends one record of ``fields`` (``seq`` and ``prev_hash`` from the head).

        Raises:
            pydantic.ValidationError: ``fields`` do not make a record.
            OSError: the write or the fsync failed (the head does not move).
        """
        return self.append_many([fields])[0]

    def append_many(self, batch: Sequence[Mapping[str, Any]]) -> list[_T]:
        """Appends one record per item of ``batch``, in order: one write, one fsync.

        Group commit: the records are durable together when this returns.

        Raises:
            pydantic.ValidationError: an item does not make a record (nothing is written).
            OSError: the write or the fsync failed (the head does not move).
        """
        count, previous = self.head
        records: list[_T] = []
        lines: list[bytes] = []
        for fields in batch:
            record = self.model.model_validate({**fields, "seq": count, "prev_hash": previous})
            line = canonical_json(record)
            records.append(record)
            lines.append(line + b"\n")
            count, previous = count + 1, line_hash(line)
        self._handle.write(b"".join(lines))
        self._handle.flush()
        if self._fsync:
            os.fsync(self._handle.fileno())
        self.head = (count, previous)
        return records

    def close(self) -> None:
        """Closes the file (and so releases the lock)."""
        if not self._handle.closed:
            self._handle.close()

    def __enter__(self) -> ChainedLog[_T]:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()
