"""The audit: every check, in the order an auditor reads them."""

from __future__ import annotations

import hashlib
import json
import tempfile
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path

from audit._adapters import check_consortium_adapters
from audit._phi import PhiHit, scan_card, scan_json_strings, scan_onnx_metadata
from audit._report import AuditReport, Severity
from audit._sources import RegistrySource
from hub import AccessLogError, verify_access_log
from protocol import AdapterCard, BundleRef, GscoError, IndexMode, SiteKey, SpecialistCard
from registry import (
    AcceptedAdapter,
    AcceptedBundle,
    AdapterLimits,
    Event,
    RegistryError,
    RejectCode,
    RejectedError,
    TrustedRegistry,
    keyring_of,
    verify_adapter,
    verify_event_log,
    verify_publication,
)
from site_agent import EgressLedger
from site_agent.errors import LedgerError

__all__ = ["find_logs", "run_audit"]


def find_logs(paths: Iterable[Path], file_name: str) -> list[Path]:
    """Files named ``file_name``: the paths given, or found under given folders."""
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            found += sorted(path.rglob(file_name))
        else:
            found.append(path)
    return found


def run_audit(
    source: RegistrySource,
    *,
    trusted_root: bytes | None = None,
    ledgers: Sequence[Path] = (),
    access_logs: Sequence[Path] = (),
) -> AuditReport:
    """Audits a registry and, when given, sites' egress ledgers and hubs' access logs.

    Never raises for what it finds: every problem becomes a finding.
    """
    report = AuditReport(source=source.description)
    try:
        sites, bundles = source.sites(), source.bundles()
    except (GscoError, OSError) as exc:
        report.add(Severity.FAIL, "registry", source.description, f"cannot be read: {exc}")
        return report
    report.inventory["sites"] = [
        {
            "site_id": s.site_id,
            "key_id": s.key_id,
            "enrolled_at": s.enrolled_at.isoformat(timespec="seconds"),
            "revoked": s.revoked,
        }
        for s in sites
    ]
    _check_listing(report, source)
    events = _check_event_log(report, source, sites, bundles)
    files_by_bundle = _check_bundles(report, source, sites, bundles)
    check_consortium_adapters(report, source, sites, bundles, events)
    _check_tuf(report, source, trusted_root, bundles, files_by_bundle)
    _check_versions(report, bundles)
    for path in ledgers:
        _check_ledger(report, path, bundles, files_by_bundle)
    for path in access_logs:
        _check_access_log(report, path, bundles)
    return report


# -- the listing -------------------------------------------------------------------


def _check_listing(report: AuditReport, source: RegistrySource) -> None:
    """Every stored bundle row must fit the schema; one that does not is never served."""
    report.ran("listing")
    try:
        unreadable = source.unreadable_bundles()
    except (GscoError, OSError) as exc:
        report.add(Severity.FAIL, "listing", source.description, f"cannot be read: {exc}")
        return
    for row in unreadable:
        report.add(
            Severity.FAIL, "listing", f"bundle {row.bundle_digest[:16]}…",
            f"a stored row that does not fit the schema, so hubs skip it: {row.problem}",
        )  # fmt: skip


# -- the event log -------------------------------------------------------------------


def _check_event_log(
    report: AuditReport, source: RegistrySource, sites: list[SiteKey], bundles: list[BundleRef]
) -> list[Event]:
    """The event log against the registry's rows; its events (none if it is broken)."""
    report.ran("event-log")
    try:
        head, lines = source.event_log()
        events, _ = verify_event_log(lines, head)
    except GscoError as exc:
        report.add(Severity.FAIL, "event-log", "events.jsonl", str(exc))
        return []
    report.inventory["event_log"] = {"entries": len(events)}
    enrolled = {(e.site_id, e.key_id) for e in events if e.kind == "enroll"}
    published = {e.bundle_digest for e in events if e.kind == "publish"}
    revoked_bundles = {e.bundle_digest for e in events if e.kind == "revoke-bundle"}
    revoked_keys = {e.key_id for e in events if e.kind == "revoke-key"}
    for site in sites:
        if (site.site_id, site.key_id) not in enrolled:
            report.add(
                Severity.FAIL, "event-log", f"site {site.site_id}",
                f"key {site.key_id[:16]}… is enrolled but the event log has no enrolment",
            )  # fmt: skip
        if site.revoked and site.key_id not in revoked_keys:
            report.add(
                Severity.FAIL, "event-log", f"site {site.site_id}",
                "key is revoked but the event log records no revocation",
            )  # fmt: skip
    for ref in bundles:
        subject = _bundle_name(ref)
        if ref.bundle_digest not in published:
            report.add(
                Severity.FAIL, "event-log", subject, "stored, but the event log has no publication"
            )
        if ref.revoked and not (ref.bundle_digest in revoked_bundles or ref.key_id in revoked_keys):
            report.add(
                Severity.FAIL, "event-log", subject, "revoked, but the event log does not say so"
            )
    held = {ref.bundle_digest for ref in bundles}
    for digest in sorted(d for d in published - held if d):
        report.add(
            Severity.FAIL, "event-log", f"bundle {digest[:16]}…",
            "the event log records its publication but the registry does not hold it",
        )  # fmt: skip
    return events


# -- bundles -------------------------------------------------------------------------


def _bundle_name(ref: BundleRef) -> str:
    return f"{ref.site_id}/{ref.task_id}/{ref.backbone} v{ref.version} ({ref.bundle_digest[:12]}…)"


def _check_bundles(
    report: AuditReport, source: RegistrySource, sites: list[SiteKey], bundles: list[BundleRef]
) -> dict[str, dict[str, str]]:
    """Verifies every bundle; returns ``{digest: {file: sha256}}`` of those that could be read."""
    keys = {s.key_id: s for s in sites}
    inventory = []
    hashes: dict[str, dict[str, str]] = {}
    for ref in bundles:
        subject = _bundle_name(ref)
        entry: dict[str, object] = {
            "site_id": ref.site_id,
            "task_id": ref.task_id,
            "backbone": ref.backbone,
            "version": ref.version,
            "bundle_digest": ref.bundle_digest,
            "status": "revoked" if ref.revoked else "active",
            "kind": ref.kind,
            "published_at": ref.published_at.isoformat(timespec="seconds"),
        }
        inventory.append(entry)
        report.ran("bundle-signature")
        try:
            files = source.bundle_files(ref.bundle_digest)
        except (GscoError, OSError) as exc:
            report.add(Severity.FAIL, "bundle-files", subject, f"cannot be read: {exc}")
            continue
        hashes[ref.bundle_digest] = {n: hashlib.sha256(d).hexdigest() for n, d in files.items()}
        key = keys.get(ref.key_id)
        if key is None:
            report.add(Severity.FAIL, "bundle-signature", subject, "signed by a key never enrolled")
        else:
            # Revoked keys still verify what they signed before; revocation is
            # shown in the status column, not as a broken signature.
            try:
                accepted: AcceptedBundle | AcceptedAdapter = (
                    verify_adapter(files, keyring_of([key]), limits=AdapterLimits(max_rank=256))
                    if ref.kind == "adapter"
                    else verify_publication(files, keyring_of([key]))
                )
                if accepted.digest != ref.bundle_digest:
                    report.add(
                        Severity.FAIL, "bundle-signature", subject,
                        f"its files hash to bundle {accepted.digest[:16]}…, not the digest "
                        "the registry lists",
                    )  # fmt: skip
            except RejectedError as exc:
                check = {
                    RejectCode.INVALID_ADAPTER: "adapter-content",
                    RejectCode.INVALID_POLICY: "adapter-policy",
                    RejectCode.INVALID_CARD: "card-schema",
                }.get(exc.code, "bundle-signature")
                report.add(Severity.FAIL, check, subject, str(exc))
        _check_contents(report, subject, files, entry)
    report.inventory["bundles"] = inventory
    return hashes


def _check_contents(
    report: AuditReport, subject: str, files: dict[str, bytes], entry: dict[str, object]
) -> None:
    """Privacy settings and the personal-data scan of one bundle's files."""
    hits: list[PhiHit] = []
    report.ran("phi-scan")
    if "card.json" in files:
        problems, card_hits = scan_card(files["card.json"])
        hits += card_hits
        for problem in problems:
            report.add(Severity.FAIL, "card-schema", subject, problem)
        if not problems:
            card = SpecialistCard.model_validate_json(files["card.json"])
            entry["index"] = card.index.model_dump(mode="json")
            entry["training_privacy"] = (
                card.training_privacy.model_dump(mode="json") if card.training_privacy else None
            )
            entry["federated"] = card.federation is not None
            _check_index_privacy(report, subject, card, files.get("index.npz"))
    if "adapter_card.json" in files:
        try:
            document = json.loads(files["adapter_card.json"])
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            report.add(Severity.FAIL, "card-schema", subject, f"adapter_card.json: {exc}")
        else:
            hits += scan_json_strings(document, "adapter_card.json")
            try:
                adapter = AdapterCard.model_validate(document)
            except ValueError as exc:
                report.add(Severity.FAIL, "card-schema", subject, f"adapter_card.json: {exc}")
            else:
                entry["adapter"] = {
                    "base_model": adapter.base_model,
                    "rank": adapter.lora.rank,
                    "sites": list(adapter.training.sites),
                    "examples": adapter.training.examples,
                    "differential_privacy": (
                        adapter.training.differential_privacy.model_dump(mode="json")
                        if adapter.training.differential_privacy
                        else None
                    ),
                }
    if "metrics.json" in files:
        try:
            hits += scan_json_strings(json.loads(files["metrics.json"]), "metrics.json")
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            report.add(Severity.FAIL, "phi-scan", subject, f"metrics.json is not JSON: {exc}")
    if "model.onnx" in files:
        free, onnx_hits = scan_onnx_metadata(files["model.onnx"])
        hits += onnx_hits
        for problem in free:
            report.add(Severity.FAIL, "phi-onnx", subject, f"free text in model.onnx: {problem}")
    for hit in hits:
        report.add(
            Severity.FAIL, "phi-scan", subject,
            f"{hit.where} looks like personal data: {hit.what}",
        )  # fmt: skip


def _check_index_privacy(
    report: AuditReport, subject: str, card: SpecialistCard, index: bytes | None
) -> None:
    from protocol import ArtifactError, check_index, load_index

    report.ran("index-privacy")
    settings = card.index
    if settings.mode is IndexMode.RAW:
        report.add(
            Severity.FLAG, "index-privacy", subject,
            f"raw index: {sum(settings.entries_per_class.values())} per-image embeddings "
            "(an explicit opt-in; re-identifying for chest X-rays)",
        )  # fmt: skip
    elif settings.mode is IndexMode.PROTOTYPE and (settings.min_group_size or 0) < 5:
        report.add(
            Severity.FLAG, "index-privacy", subject,
            f"prototype groups of only k={settings.min_group_size} images",
        )  # fmt: skip
    if index is None:
        return
    try:
        check_index(load_index(index), card)
    except ArtifactError as exc:
        report.add(Severity.FAIL, "index-privacy", subject, f"index.npz: {exc}")


def _check_versions(report: AuditReport, bundles: list[BundleRef]) -> None:
    report.ran("versions", len(bundles))
    lines: dict[tuple[str, str, str], list[BundleRef]] = defaultdict(list)
    for ref in bundles:
        lines[(ref.site_id, ref.task_id, ref.backbone)].append(ref)
    for (site, task, backbone), refs in lines.items():
        ordered = sorted(refs, key=lambda r: r.published_at)
        versions = [r.version for r in ordered]
        if len(set(versions)) != len(versions) or versions != sorted(versions):
            report.add(
                Severity.FAIL, "versions", f"{site}/{task}/{backbone}",
                f"versions in publication order are {versions}: not strictly increasing",
            )  # fmt: skip


# -- TUF -----------------------------------------------------------------------------


def _check_tuf(
    report: AuditReport,
    source: RegistrySource,
    trusted_root: bytes | None,
    bundles: list[BundleRef],
    hashes: dict[str, dict[str, str]],
) -> None:
    report.ran("tuf-metadata")
    if trusted_root is None:
        try:
            trusted_root = source.trusted_root()
        except (GscoError, OSError) as exc:
            report.add(Severity.FAIL, "tuf-metadata", "1.root.json", f"cannot be read: {exc}")
            return
        report.add(
            Severity.INFO, "tuf-metadata", "1.root.json",
            "the trust anchor was taken from the registry itself; pass --trusted-root "
            "(the root your hubs were given) for an independent check",
        )  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="gsco-audit-tuf-") as cache:
        trusted = TrustedRegistry(source, Path(cache), trusted_root)
        try:
            snapshot = trusted.refresh()
            delegated = trusted.delegated_key_ids()
        except RegistryError as exc:
            report.add(Severity.FAIL, "tuf-metadata", "root/timestamp/snapshot/targets", str(exc))
            return
        report.inventory["tuf"] = {
            "snapshot_version": snapshot,
            "delegated_sites": len(delegated),
        }
        for ref in bundles:
            subject = _bundle_name(ref)
            report.ran("tuf-targets")
            try:
                resolves = (
                    trusted.adapter_resolves(ref.task_id, ref.bundle_digest)
                    if ref.kind == "adapter"
                    else trusted.resolves(ref.site_id, ref.bundle_digest)
                )
            except RegistryError as exc:
                report.add(Severity.FAIL, "tuf-targets", subject, str(exc))
                continue
            if ref.revoked:
                if resolves:
                    report.add(
                        Severity.FAIL, "tuf-targets", subject,
                        "revoked, but the signed TUF metadata still serves it",
                    )  # fmt: skip
                continue
            if not resolves and ref.kind == "adapter":
                report.add(
                    Severity.INFO, "tuf-targets", subject,
                    "not the consortium's adapter in effect now (superseded, or its "
                    "co-signers' keys revoked below the threshold)",
                )  # fmt: skip
                continue
            if not resolves:
                report.add(
                    Severity.FAIL, "tuf-targets", subject,
                    "active, but the signed TUF metadata does not list it",
                )  # fmt: skip
                continue
            try:
                served = (
                    trusted.adapter_files(ref.task_id, ref.bundle_digest)
                    if ref.kind == "adapter"
                    else trusted.bundle_files(ref.site_id, ref.bundle_digest)
                )
            except RegistryError as exc:
                report.add(Severity.FAIL, "tuf-targets", subject, str(exc))
                continue
            expected = hashes.get(ref.bundle_digest, {})
            for name, data in served.items():
                if expected.get(name) not in (None, hashlib.sha256(data).hexdigest()):
                    report.add(
                        Severity.FAIL, "tuf-targets", subject,
                        f"{name} differs between TUF and the bundle store",
                    )  # fmt: skip


# -- ledgers and access logs ---------------------------------------------------------


def _check_ledger(
    report: AuditReport,
    path: Path,
    bundles: list[BundleRef],
    hashes: dict[str, dict[str, str]],
) -> None:

    report.ran("egress-ledger")
    try:
        records = EgressLedger(path).records() if path.exists() else None
    except LedgerError as exc:
        report.add(Severity.FAIL, "egress-ledger", str(path), str(exc))
        return
    if records is None:
        report.add(Severity.FAIL, "egress-ledger", str(path), "no such file")
        return
    report.inventory.setdefault("ledgers", []).append({"path": str(path), "records": len(records)})
    held = {ref.bundle_digest: ref for ref in bundles}
    ledger_sites = {r.site_id for r in records}
    recorded = set()
    for record in records:
        recorded.add(record.bundle_digest)
        subject = f"{path.name} line {record.seq + 1}"
        ref = held.get(record.bundle_digest)
        if ref is None:
            report.add(
                Severity.FAIL, "egress-ledger", subject,
                f"bundle {record.bundle_digest[:16]}… left site {record.site_id} but the "
                "registry does not hold it",
            )  # fmt: skip
            continue
        claimed = (record.site_id, record.task_id, record.backbone, record.version)
        if claimed != (ref.site_id, ref.task_id, ref.backbone, ref.version):
            report.add(
                Severity.FAIL, "egress-ledger", subject,
                f"records {claimed}, the registry holds {_bundle_name(ref)}",
            )  # fmt: skip
        stored = hashes.get(record.bundle_digest, {})
        for name, digest in record.files.items():
            if name in stored and stored[name] != digest:
                report.add(
                    Severity.FAIL, "egress-ledger", subject,
                    f"{name} left the site with sha256 {digest[:16]}…, the registry holds "
                    f"{stored[name][:16]}…",
                )  # fmt: skip
    for ref in bundles:
        if ref.site_id in ledger_sites and ref.bundle_digest not in recorded:
            report.add(
                Severity.FAIL, "egress-ledger", _bundle_name(ref),
                f"the registry holds it but site {ref.site_id}'s egress ledger ({path}) "
                "never recorded it leaving",
            )  # fmt: skip


def _check_access_log(report: AuditReport, path: Path, bundles: list[BundleRef]) -> None:

    report.ran("access-log")
    try:
        records = verify_access_log(path)
    except AccessLogError as exc:
        report.add(Severity.FAIL, "access-log", str(path), str(exc))
        return
    report.inventory.setdefault("access_logs", []).append(
        {"path": str(path), "records": len(records)}
    )
    known = {ref.bundle_digest: ref for ref in bundles}
    unknown: set[str] = set()
    for record in records:
        for digest in record.specialist_digests:
            if digest not in known and digest not in unknown:
                unknown.add(digest)
                report.add(
                    Severity.FAIL, "access-log", f"{path.name} line {record.seq + 1}",
                    f"request {record.request_id} used specialist {digest[:16]}…, which this "
                    "registry never published",
                )  # fmt: skip
