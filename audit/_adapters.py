"""The audit of the consortium's adapters: who stood behind each one, from the registry alone.

For every adapter the registry holds, the auditor finds the version of its
task's adapter role (``_adapter.<task>``, kept version by version) that lists
it, verifies that version's signatures against the enrolled keys, and applies
the registry's own rule (:func:`registry.check_backing`) with the threshold
the event log says was in force: an adapter without enough of its training
sites' co-signatures (a single site's publication, a role signed by too few)
fails the audit. Its content and policy are checked by
:func:`registry.verify_adapter` with the bundle (``adapter-content``,
``adapter-policy``).
"""

from __future__ import annotations

from collections.abc import Sequence

from tuf.api.metadata import Metadata, Targets

from audit._report import AuditReport, Severity
from audit._sources import RegistrySource
from protocol import AdapterCard, BundleRef, GscoError, SiteKey
from registry import (
    MIN_SIGNERS,
    Event,
    adapter_role,
    check_backing,
    parse_adapter_path,
    role_signers,
)

__all__ = ["check_consortium_adapters"]


def _threshold_at(events: Sequence[Event], digest: str) -> int:
    """The adapter threshold in force when ``digest`` was published (the event log's word)."""
    threshold = MIN_SIGNERS
    for event in events:
        if event.kind == "configure" and event.adapter_threshold is not None:
            threshold = event.adapter_threshold
        if event.kind == "publish" and event.bundle_digest == digest:
            break
    return threshold


def _role_versions(source: RegistrySource, task_id: str) -> dict[str, Metadata[Targets]]:
    """Every stored version of a task's adapter role, by the bundle digest it lists."""
    name = adapter_role(task_id)
    try:
        current = Metadata[Targets].from_bytes(source.fetch_metadata(f"{name}.json"))
    except (GscoError, OSError, ValueError):
        return {}
    found: dict[str, Metadata[Targets]] = {}
    for version in range(1, current.signed.version + 1):
        try:
            role = Metadata[Targets].from_bytes(source.fetch_metadata(f"{version}.{name}.json"))
        except (GscoError, OSError, ValueError):
            continue
        for path in role.signed.targets:
            parsed = parse_adapter_path(path)
            if parsed is not None and parsed[0] == task_id:
                found[parsed[1]] = role
    return found


def check_consortium_adapters(
    report: AuditReport,
    source: RegistrySource,
    sites: Sequence[SiteKey],
    bundles: Sequence[BundleRef],
    events: Sequence[Event],
) -> None:
    """Flags every adapter the registry holds without its consortium's co-signatures."""
    keys: dict[str, list[bytes]] = {}
    for site in sites:  # revoked keys too: what they signed before still counts for the past
        keys.setdefault(site.site_id, []).append(site.public_key_pem.encode())
    roles: dict[str, dict[str, Metadata[Targets]]] = {}
    inventory = []
    for ref in bundles:
        if ref.kind != "adapter":
            continue
        report.ran("consortium-backing")
        subject = f"adapter {ref.task_id} v{ref.version} ({ref.bundle_digest[:12]}…)"
        if ref.task_id not in roles:
            roles[ref.task_id] = _role_versions(source, ref.task_id)
        role = roles[ref.task_id].get(ref.bundle_digest)
        if role is None:
            report.add(
                Severity.FAIL, "consortium-backing", subject,
                "no version of its task's adapter role lists it: one site published it on its "
                "own metadata, without the consortium's threshold of co-signatures",
            )  # fmt: skip
            continue
        try:
            files = source.bundle_files(ref.bundle_digest)
            card = AdapterCard.parse(files["adapter_card.json"])
            counted = check_backing(
                card,
                role_signers(role, keys),
                ref.site_id,
                _threshold_at(events, ref.bundle_digest),
                keys,
            )
        except (GscoError, OSError, KeyError) as exc:
            report.add(Severity.FAIL, "consortium-backing", subject, str(exc)[:1000])
            continue
        if role.signed.version != card.version:
            report.add(
                Severity.FAIL, "consortium-backing", subject,
                f"its card says version {card.version}, the role that lists it "
                f"{role.signed.version}",
            )  # fmt: skip
        inventory.append(
            {
                "task_id": ref.task_id,
                "bundle_digest": ref.bundle_digest,
                "role_version": role.signed.version,
                "co_signed_by": list(counted),
                "trainers": list(card.training.sites),
            }
        )
    if inventory:
        report.inventory["consortium_adapters"] = inventory
