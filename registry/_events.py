"""The registry's event log: append-only, hash-chained JSON lines in ``ROOT/events.jsonl``.

Every line is a canonical JSON :class:`Event` naming the sha256 of the line
before it. The registry's database keeps the head (count and hash of the last
line), so editing, removing or reordering any line, the last one included, is
detected by :func:`verify_event_log`.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AwareDatetime, Field

from protocol import (
    GENESIS,
    ChainedLog,
    ChainError,
    Identifier,
    Sha256Hex,
    StrictModel,
    line_hash,
    walk_chain,
)
from registry.errors import EventLogError

__all__ = ["GENESIS", "Event", "EventLog", "line_hash", "verify_event_log"]

EventKind = Literal["enroll", "publish", "revoke-bundle", "revoke-key", "reject", "configure"]


class Event(StrictModel):
    """One line of the event log."""

    schema_version: Literal[1] = 1
    seq: Annotated[int, Field(ge=0)]
    time: AwareDatetime
    kind: EventKind
    site_id: Identifier | None = None
    key_id: Sha256Hex | None = None
    bundle_digest: Sha256Hex | None = None
    task_id: Identifier | None = None
    backbone: Identifier | None = None
    version: Annotated[int, Field(ge=1)] | None = None
    code: Annotated[str, Field(max_length=40)] | None = None
    reason: Annotated[str, Field(max_length=1000)] | None = None
    # A consortium adapter's publication: the training sites whose co-signatures put it in
    # effect (see registry._consortium).
    co_signed_by: Annotated[tuple[Identifier, ...], Field(max_length=1000)] | None = None
    # A change of the consortium's settings (``configure``): the adapter co-signing threshold.
    adapter_threshold: Annotated[int, Field(ge=1, le=1000)] | None = None
    prev_hash: Sha256Hex


def verify_event_log(
    lines: Iterable[bytes], head: tuple[int, str] | None = None
) -> tuple[list[Event], str]:
    """Verifies the chain (and, when given, that it ends at ``head = (count, hash)``).

    Returns:
        The events and the hash of the last line (``GENESIS`` when empty).

    Raises:
        EventLogError: names the first line that breaks the chain.
    """
    try:
        events, previous = walk_chain(lines, Event)
    except ChainError as exc:
        if exc.broken:
            raise EventLogError(
                f"event log line {exc.line} does not follow line {exc.line - 1}: "
                "an entry was edited, removed or reordered"
            ) from exc
        raise EventLogError(f"event log {exc}") from exc
    if head is not None and (len(events), previous) != head:
        raise EventLogError(
            f"event log ends at entry {len(events)} ({previous[:12]}…) but the registry "
            f"recorded entry {head[0]} ({head[1][:12]}…): the log was truncated or its last "
            "entry edited"
        )
    return events, previous


class EventLog:
    """``events.jsonl``: appended and fsynced before the database commit that names it."""

    def __init__(self, path: Path, *, create: bool = True) -> None:
        self.path = path
        self._log: ChainedLog[Event] | None = None
        if create:
            path.touch(exist_ok=True)

    def lines(self) -> list[bytes]:
        """The raw lines (none when the file is missing)."""
        if not self.path.exists():
            return []
        return self.path.read_bytes().splitlines(keepends=True)

    def append(
        self, count: int, previous: str, kind: EventKind, **fields: object
    ) -> tuple[int, str]:
        """Appends the event after entry ``count`` (hash ``previous``); returns the new head.

        The head is the database's, not the file's: the database anchors the log.
        """
        if self._log is None:
            self._log = ChainedLog(self.path, Event)
        self._log.resume((count, previous))
        self._log.append({"time": datetime.now(UTC), "kind": kind, **fields})
        return self._log.head

    def close(self) -> None:
        """Closes the file if it was opened for appending."""
        if self._log is not None:
            self._log.close()
            self._log = None

    def truncate(self, count: int) -> int:
        """Drops lines after the first ``count`` (never acknowledged); returns how many."""
        lines = self.lines()
        if len(lines) <= count:
            return 0
        with self.path.open("r+b") as handle:
            handle.truncate(sum(len(line) for line in lines[:count]))
            os.fsync(handle.fileno())
        return len(lines) - count
