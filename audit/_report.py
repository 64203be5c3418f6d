"""What an audit found, and the two files it writes: ``report.json`` and ``report.md``."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

__all__ = ["AuditReport", "Finding", "Severity"]


class Severity(StrEnum):
    """How much a finding matters. Any ``fail`` makes the audit fail."""

    FAIL = "fail"  # evidence is broken or something published must not be
    FLAG = "flag"  # allowed, but an auditor must see it (e.g. a raw-mode index)
    INFO = "info"


@dataclass(frozen=True)
class Finding:
    """One result of one check about one subject."""

    severity: Severity
    check: str  # e.g. "event-log", "bundle-signature", "phi-card"
    subject: str  # what it is about: a file, a bundle, a site, a line
    message: str


@dataclass
class AuditReport:
    """Everything one audit established: findings, and the inventory it is about."""

    source: str
    started_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    findings: list[Finding] = field(default_factory=list)
    checks_run: dict[str, int] = field(default_factory=dict)  # check -> subjects examined
    inventory: dict[str, Any] = field(default_factory=dict)

    def add(self, severity: Severity, check: str, subject: str, message: str) -> None:
        """Records one finding."""
        self.findings.append(Finding(severity, check, subject, message))

    def ran(self, check: str, subjects: int = 1) -> None:
        """Counts ``subjects`` examined by ``check`` (what the report says it covered)."""
        self.checks_run[check] = self.checks_run.get(check, 0) + subjects

    @property
    def failures(self) -> list[Finding]:
        """The findings that fail the audit."""
        return [f for f in self.findings if f.severity is Severity.FAIL]

    @property
    def passed(self) -> bool:
        """No finding failed."""
        return not self.failures

    def as_dict(self) -> dict[str, Any]:
        """The JSON form (``report.json``)."""
        return {
            "schema_version": 1,
            "source": self.source,
            "started_at": self.started_at.isoformat(timespec="seconds"),
            "passed": self.passed,
            "counts": {s.value: sum(f.severity is s for f in self.findings) for s in Severity},
            "checks_run": dict(sorted(self.checks_run.items())),
            "findings": [{**asdict(f), "severity": f.severity.value} for f in self.findings],
            "inventory": self.inventory,
        }

    def to_markdown(self) -> str:
        """The human form (``report.md``)."""
        verdict = "PASSED" if self.passed else f"FAILED ({len(self.failures)} failure(s))"
        lines = [
            "# GSCo compliance audit",
            "",
            f"- Source: {self.source}",
            f"- Run at: {self.started_at.isoformat(timespec='seconds')}",
            f"- Verdict: **{verdict}**",
            "",
        ]
        for severity, title in (
            (Severity.FAIL, "Failures"),
            (Severity.FLAG, "Flags (allowed, but review them)"),
        ):
            chosen = [f for f in self.findings if f.severity is severity]
            lines += [f"## {title}", ""]
            if not chosen:
                lines += ["None.", ""]
                continue
            lines += ["| check | subject | finding |", "| --- | --- | --- |"]
            lines += [f"| {f.check} | {_cell(f.subject)} | {_cell(f.message)} |" for f in chosen]
            lines.append("")
        lines += ["## Checks run", "", "| check | subjects |", "| --- | --- |"]
        lines += [f"| {name} | {count} |" for name, count in sorted(self.checks_run.items())]
        lines.append("")
        lines += _inventory_markdown(self.inventory)
        infos = [f for f in self.findings if f.severity is Severity.INFO]
        if infos:
            lines += ["## Notes", ""]
            lines += [f"- {f.check}: {f.subject}: {f.message}" for f in infos]
            lines.append("")
        return "\n".join(lines)

    def write(self, out: Path) -> tuple[Path, Path]:
        """Writes ``report.json`` and ``report.md`` into ``out``."""
        out.mkdir(parents=True, exist_ok=True)
        json_path, md_path = out / "report.json", out / "report.md"
        json_path.write_text(json.dumps(self.as_dict(), indent=2) + "\n")
        md_path.write_text(self.to_markdown())
        return json_path, md_path


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _inventory_markdown(inventory: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    sites = inventory.get("sites", [])
    if sites:
        lines += ["## Sites and keys", "", "| site | key id | enrolled | status |"]
        lines.append("| --- | --- | --- | --- |")
        for s in sites:
            status = "revoked" if s["revoked"] else "active"
            lines.append(
                f"| {s['site_id']} | {s['key_id'][:16]}… | {s['enrolled_at']} | {status} |"
            )
        lines.append("")
    bundles = inventory.get("bundles", [])
    if bundles:
        lines += [
            "## Bundles",
            "",
            "| site | task | backbone | v | digest | status | index | k | noise | entries per "
            "class | training DP | federated |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for b in bundles:
            index = b.get("index") or {}
            entries = ", ".join(f"{k}: {v}" for k, v in index.get("entries_per_class", {}).items())
            dp = b.get("training_privacy")
            dp_text = f"ε={dp['epsilon']:.2f}, δ={dp['delta']:.1e}" if dp else "-"
            lines.append(
                f"| {b['site_id']} | {b['task_id']} | {b['backbone']} | {b['version']} | "
                f"{b['bundle_digest'][:16]}… | {b['status']} | {index.get('mode', '?')} | "
                f"{index.get('min_group_size') or '-'} | {index.get('noise_std', '-')} | "
                f"{entries} | {dp_text} | {'yes' if b.get('federated') else 'no'} |"
            )
        lines.append("")
    for key, title in (("ledgers", "Egress ledgers"), ("access_logs", "Hub access logs")):
        entries = inventory.get(key, [])
        if entries:
            lines += [f"## {title}", "", "| file | records |", "| --- | --- |"]
            lines += [f"| {e['path']} | {e['records']} |" for e in entries]
            lines.append("")
    tuf = inventory.get("tuf")
    if tuf:
        lines += ["## TUF metadata", ""]
        lines += [f"- {k}: {v}" for k, v in tuf.items()]
        lines.append("")
    return lines
