"""The compliance audit: evidence, not promises, that model exchange leaks no patient data.

:func:`run_audit` verifies a registry (its storage folder, read-only, or its
address) end to end: the hash-chained event log against the committed head and
against what is stored, the TUF metadata from a trusted root (rollback, freeze,
delegations, revocations), every bundle's signature and file hashes, version
order, each index's privacy settings (raw-mode indexes are flagged), every
adapter's content, policy bounds and consortium co-signatures, and a scan of
cards, metrics and ONNX metadata for personal data. Given sites' egress
ledgers and hubs' access logs, it cross-checks them against the registry.
The :class:`AuditReport` writes ``report.json`` and ``report.md``.
"""

from audit._phi import PhiHit, scan_card, scan_json_strings, scan_onnx_metadata
from audit._report import AuditReport, Finding, Severity
from audit._run import find_logs, run_audit
from audit._sources import LocalRegistry, RegistrySource, RemoteRegistry

__all__ = [
    "AuditReport",
    "Finding",
    "LocalRegistry",
    "PhiHit",
    "RegistrySource",
    "RemoteRegistry",
    "Severity",
    "find_logs",
    "run_audit",
    "scan_card",
    "scan_json_strings",
    "scan_onnx_metadata",
]
