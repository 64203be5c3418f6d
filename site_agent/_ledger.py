"""The egress ledger: an append-only, hash-chained record of every bundle that left the site.

One JSON document per line in ``HOME/egress.jsonl``. Each record names the
sha256 of the previous line, so editing, deleting or reordering any line but
the last breaks the chain. The last line is anchored from outside: the auditor
cross-checks every record against what the registry holds.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AwareDatetime, Field

from protocol import (
    GENESIS,
    BundleRef,
    ChainedLog,
    ChainError,
    Identifier,
    Sha256Hex,
    StrictModel,
    walk_chain,
)
from site_agent.errors import LedgerError

__all__ = ["GENESIS", "EgressLedger", "EgressRecord"]


class EgressRecord(StrictModel):
    """One bundle that left the site."""

    schema_version: Literal[1] = 1
    seq: Annotated[int, Field(ge=0)]
    time: AwareDatetime
    action: Literal["publish"]
    destination: Annotated[str, Field(max_length=500)]
    bundle_digest: Sha256Hex
    task_id: Identifier
    site_id: Identifier
    backbone: Identifier
    version: Annotated[int, Field(ge=1)]
    files: dict[str, Sha256Hex]
    prev_hash: Sha256Hex


class EgressLedger:
    """``HOME/egress.jsonl``."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def records(self) -> list[EgressRecord]:
        """All records, after verifying every line and the hash chain.

        Raises:
            LedgerError: a line does not parse, or the chain is broken (names the line).
        """
        if not self.path.exists():
            return []
        try:
            records, _ = walk_chain(self.path.read_bytes().splitlines(keepends=True), EgressRecord)
        except ChainError as exc:
            raise LedgerError(f"{self.path.name}: {exc}") from exc
        return records

    def append(
        self,
        *,
        destination: str,
        bundle_digest: str,
        task_id: str,
        site_id: str,
        backbone: str,
        version: int,
        files: dict[str, str],
    ) -> EgressRecord:
        """Appends one record (under an exclusive lock, fsynced).

        Raises:
            LedgerError: the ledger's chain is broken (nothing is appended).
        """
        with ChainedLog(self.path, EgressRecord) as log:
            log.lock(wait=True)  # another process of this site may be appending
            try:
                log.resume()
            except ChainError as exc:
                raise LedgerError(f"{self.path.name}: {exc}") from exc
            return log.append(
                {
                    "time": datetime.now(UTC),
                    "action": "publish",
                    "destination": destination,
                    "bundle_digest": bundle_digest,
                    "task_id": task_id,
                    "site_id": site_id,
                    "backbone": backbone,
                    "version": version,
                    "files": files,
                }
            )

    def record_publication(
        self, destination: str, ref: BundleRef, files: dict[str, str]
    ) -> EgressRecord:
        """Appends what a publication sent: the registry's :class:`BundleRef` and the files."""
        return self.append(
            destination=destination,
            bundle_digest=ref.bundle_digest,
            task_id=ref.task_id,
            site_id=ref.site_id,
            backbone=ref.backbone,
            version=ref.version,
            files=files,
        )

    def last_version(self, task_id: str, backbone: str) -> int:
        """The highest version that left the site for this task and backbone (0 if none)."""
        return max(
            (r.version for r in self.records() if r.task_id == task_id and r.backbone == backbone),
            default=0,
        )
