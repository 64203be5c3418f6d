"""Specialists that keep failing are suspended for a while (a circuit breaker).

A specialist left out of an answer (see ``DiagnosisEngine``) still cost that
request a run: up to ``--max-run-seconds`` of a worker every task shares, for a
model that stalls on every image. After ``failures`` failed runs in a row it is
suspended: left out without being run, its answers saying so, for ``cool_down_s``,
twice as long each time it fails again once back (up to ``max_cool_down_s``).
The first request after a suspension runs it again; one good run clears it. A
task whose every specialist is suspended still runs them: there is nothing else
to answer with.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from hub._runtime import LoadedSpecialist

__all__ = ["Suspensions"]

log = logging.getLogger(__name__)


@dataclass
class _Record:
    failures: int = 0  # failed runs in a row
    until: float = 0.0  # suspended until (the clock's time)
    cool_down_s: float = 0.0  # the last suspension's length


class Suspensions:
    """Which specialists are suspended. Used from the event loop only."""

    def __init__(
        self,
        failures: int = 3,
        cool_down_s: float = 60.0,
        max_cool_down_s: float = 900.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if failures < 1 or cool_down_s <= 0 or max_cool_down_s < cool_down_s:
            raise ValueError("failures >= 1 and 0 < cool_down_s <= max_cool_down_s")
        self._failures = failures
        self._cool_down_s = cool_down_s
        self._max_cool_down_s = max_cool_down_s
        self._clock = clock
        self._records: dict[str, _Record] = {}

    def admit(
        self, specialists: tuple[LoadedSpecialist, ...]
    ) -> tuple[tuple[LoadedSpecialist, ...], tuple[str, ...]]:
        """The specialists to run, and a warning for each one suspended."""
        now = self._clock()
        suspended = {
            s.bundle_digest
            for s in specialists
            if (record := self._records.get(s.bundle_digest)) is not None and record.until > now
        }
        if not suspended or len(suspended) == len(specialists):
            return specialists, ()
        warnings = tuple(
            f"specialist {s.bundle_digest[:12]} ({s.card.site_id}) is suspended after "
            f"{self._records[s.bundle_digest].failures} failed runs in a row and was left out"
            for s in specialists
            if s.bundle_digest in suspended
        )
        return tuple(s for s in specialists if s.bundle_digest not in suspended), warnings

    def record(self, specialist: LoadedSpecialist, ok: bool) -> None:
        """One run's outcome."""
        digest = specialist.bundle_digest
        if ok:
            if digest in self._records:
                del self._records[digest]
            return
        record = self._records.setdefault(digest, _Record())
        record.failures += 1
        if record.failures >= self._failures:
            record.cool_down_s = min(
                self._max_cool_down_s, 2 * record.cool_down_s or self._cool_down_s
            )
            record.until = self._clock() + record.cool_down_s
            log.warning(
                "specialist %s (%s) suspended for %g s after %d failed runs in a row",
                digest[:12],
                specialist.card.site_id,
                record.cool_down_s,
                record.failures,
            )

    def forget(self, live: set[str]) -> None:
        """Drops the records of specialists no longer served (by bundle digest)."""
        for digest in [d for d in self._records if d not in live]:
            del self._records[digest]
