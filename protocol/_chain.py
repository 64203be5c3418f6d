"""Hash-chained JSON-lines logs: one walker for the event log, egress ledgers and access log.

Each line is a canonical JSON document with ``seq`` (its 0-based position)
and ``prev_hash`` (the sha256 of the line before it, :data:`GENESIS` for the
first), so editing, removing or reordering any line but the last breaks the
chain. The last line is anchored by whoever keeps the head (the registry's
database, the auditor's cross-checks).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import Protocol, TypeVar

from protocol._base import StrictModel
from protocol.errors import GscoError, ProtocolError

__all__ = ["GENESIS", "ChainError", "line_hash", "walk_chain"]

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
