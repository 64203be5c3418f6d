"""Registry sync: TUF update, verification of every bundle, revocations, hot reload.

One :meth:`RegistrySync.sync` call:

1. updates the trusted TUF metadata (rollback, freeze and bad signatures are refused);
2. lists the registry's bundles (an untrusted listing: it only says what to look for;
   an entry that does not decode is skipped and reported, never fatal);
3. keeps a loaded specialist only while the trusted metadata still lists it
   (a revoked bundle, or one signed by a revoked key, drops out of the delegations);
4. fetches each new bundle through TUF (length and sha256 from metadata the
   site signed), verifies it with the shared :func:`registry.verify_publication`
   against keys the registry delegated to the site, and loads it;
5. keeps, per ``(site, task, backbone)``, the highest version, and the label set
   of the task's earliest specialist (a specialist that disagrees is refused);
6. swaps the new :class:`~hub._catalog.Catalog` in whole;
7. notes each task's consortium adapter, the one bundle its adapter role lists
   now (TUF verifies the role's threshold of site signatures); the hub checks
   and loads it (:mod:`hub._adapters`). A role TUF refuses is reported, and
   that task's generalist answers with its base model.

A registry that cannot be reached leaves the current catalog in service.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime

from hub._catalog import Catalog
from hub._runtime import LoadedSpecialist, RuntimeOptions, load_specialist
from protocol import AdapterCard, BundleRef, GscoError, SiteKey
from registry import (
    NotFoundError,
    RegistryReadAPI,
    TrustedRegistry,
    UntrustedMetadataError,
    check_backing,
    keyring_of,
    role_signers,
    verify_publication,
)
from signing import KeyRing

__all__ = ["RegistrySync", "SyncReport"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SyncReport:
    """What one sync did."""

    ok: bool
    snapshot_version: int | None
    loaded: tuple[str, ...] = ()  # bundle digests newly in service
    unloaded: tuple[str, ...] = ()  # digests taken out (revoked or superseded)
    rejected: dict[str, str] = field(default_factory=dict)  # digest -> why
    # Listing entries the registry could not (or would not) describe validly: skipped.
    unreadable: dict[str, str] = field(default_factory=dict)  # digest -> why
    # Tasks whose consortium adapter role TUF refused (e.g. too few valid co-signatures).
    adapter_problems: dict[str, str] = field(default_factory=dict)  # task -> why
    error: str | None = None  # why the sync failed (the catalog is unchanged)
    seconds: float = 0.0


class RegistrySync:
    """Keeps a :class:`Catalog` in step with one registry."""

    def __init__(
        self,
        client: RegistryReadAPI,
        trusted: TrustedRegistry,
        *,
        runtime: RuntimeOptions | None = None,
        on_catalog: Callable[[Catalog], None] | None = None,
    ) -> None:
        self._client = client
        self._trusted = trusted
        self._runtime = runtime or RuntimeOptions()
        self._on_catalog = on_catalog
        self._lock = threading.Lock()  # one sync at a time
        self._catalog = Catalog()
        self._keyring = KeyRing(())
        self._site_keys: dict[str, list[SiteKey]] = {}
        self._adapters: tuple[BundleRef, ...] = ()
        # Refusals are remembered per snapshot: a bundle is retried when the registry changes.
        self._rejected: dict[str, str] = {}
        self._rejected_at: int | None = None
        self.last_report: SyncReport | None = None

    @property
    def catalog(self) -> Catalog:
        """The catalog in service (a snapshot; never mutated)."""
        return self._catalog

    @property
    def adapters(self) -> tuple[BundleRef, ...]:
        """Each task's consortium adapter as its trusted role lists it at the last sync."""
        return self._adapters

    def adapter_files(self, ref: BundleRef) -> dict[str, bytes]:
        """A consortium adapter's files, checked against its role's hashes (not yet verified)."""
        return self._trusted.adapter_files(ref.task_id, ref.bundle_digest)

    def adapter_keyring(self, task_id: str) -> KeyRing:
        """The keys the registry delegates the task's adapter role to (every enrolled site's).

        A consortium adapter's bundle may be signed by any training site, with or
        without a specialist of its own in service.
        """
        delegation = self._trusted.adapter_delegation(task_id)
        keyids = delegation[1] if delegation is not None else frozenset()
        return keyring_of(
            key for keys in self._site_keys.values() for key in keys if key.key_id in keyids
        )

    def adapter_backing(
        self, card: AdapterCard, signed_by: str, min_signers: int
    ) -> tuple[str, ...]:
        """The training sites whose co-signatures of the task's adapter role TUF verified.

        The registry's rule (:func:`registry.check_backing`) with the role's
        delegated threshold, never below ``min_signers``: distinct sites among
        the card's trainers, keys as the registry delegated them.

        Raises:
            RejectedError: ``NO_CONSORTIUM_BACKING``.
            NotFoundError: the role is not delegated (revoked meanwhile).
        """
        delegation = self._trusted.adapter_delegation(card.task_id)
        if delegation is None:
            raise NotFoundError(f"the registry delegates no adapter role for {card.task_id}")
        threshold, keyids = delegation
        keys = {
            site: [k.public_key_pem.encode() for k in listed if k.key_id in keyids]
            for site, listed in self._site_keys.items()
        }
        signers = role_signers(self._trusted.adapter_role_metadata(card.task_id), keys)
        return check_backing(
            card, signers, signed_by, max(threshold, min_signers), [s for s in keys if keys[s]]
        )

    @property
    def keyring(self) -> KeyRing:
        """The keys of the sites enrolled, unrevoked and delegated in TUF at the last sync."""
        return self._keyring

    def sync(self) -> SyncReport:
        """One sync (see the module docstring). Never raises for registry problems."""
        started = datetime.now(UTC)
        with self._lock:
            try:
                report = self._sync(started)
            except GscoError as exc:  # registry, TUF and store errors alike
                report = SyncReport(
                    ok=False,
                    snapshot_version=self._catalog.snapshot_version,
                    error=str(exc),
                )
                log.warning("registry sync failed, keeping the current specialists: %s", exc)
        report = replace(report, seconds=(datetime.now(UTC) - started).total_seconds())
        self.last_report = report
        return report

    def _sync(self, started: datetime) -> SyncReport:
        snapshot = self._trusted.refresh()
        if snapshot != self._rejected_at:
            self._rejected, self._rejected_at = {}, snapshot
        delegated = self._trusted.delegated_key_ids()
        sites = [
            s
            for s in self._client.sites()
            if not s.revoked and s.key_id in delegated.get(s.site_id, frozenset())
        ]
        keyring = keyring_of(sites)
        self._keyring = keyring
        self._site_keys = {}
        for site in self._client.sites():
            if not site.revoked:
                self._site_keys.setdefault(site.site_id, []).append(site)
        current = {s.bundle_digest: s for s in self._catalog.all}
        candidates: dict[str, LoadedSpecialist] = {}
        rejected: dict[str, str] = {}
        listing = self._client.listing()
        unreadable = {u.bundle_digest: u.problem for u in listing.unreadable}
        for digest, problem in unreadable.items():
            log.warning("registry lists bundle %s unreadably, skipped: %s", digest[:16], problem)
        adapters: list[BundleRef] = []
        adapter_problems: dict[str, str] = {}
        for ref in listing.bundles:
            if ref.revoked or ref.bundle_digest in self._rejected:
                continue
            if ref.kind == "adapter":
                if ref.task_id in adapter_problems:
                    continue
                try:
                    if self._trusted.adapter_resolves(ref.task_id, ref.bundle_digest):
                        adapters.append(ref)  # checked and loaded by the hub (hub._adapters)
                except UntrustedMetadataError as exc:
                    adapter_problems[ref.task_id] = str(exc)
                    log.warning("the adapter role of %s is refused: %s", ref.task_id, exc)
                continue
            if not self._trusted.resolves(ref.site_id, ref.bundle_digest):
                continue  # listed by the registry but not in trusted metadata
            loaded = current.get(ref.bundle_digest)
            if loaded is None:
                try:
                    loaded = self._load(ref, keyring)
                except GscoError as exc:
                    rejected[ref.bundle_digest] = str(exc)
                    log.warning("refused bundle %s of %s: %s", ref.bundle_digest, ref.site_id, exc)
                    continue
            candidates[ref.bundle_digest] = loaded
        chosen = _choose(candidates.values(), rejected)
        self._rejected.update(rejected)
        catalog = Catalog.of(chosen, snapshot, started)
        before, after = set(current), {s.bundle_digest for s in chosen}
        self._catalog = catalog
        self._adapters = tuple(adapters)
        if self._on_catalog is not None:
            self._on_catalog(catalog)
        return SyncReport(
            ok=True,
            snapshot_version=snapshot,
            loaded=tuple(sorted(after - before)),
            unloaded=tuple(sorted(before - after)),
            rejected=dict(self._rejected),
            unreadable=unreadable,
            adapter_problems=adapter_problems,
        )

    def _load(self, ref: BundleRef, keyring: KeyRing) -> LoadedSpecialist:
        files = self._trusted.bundle_files(ref.site_id, ref.bundle_digest)
        accepted = verify_publication(files, keyring)
        if accepted.digest != ref.bundle_digest:
            raise UntrustedMetadataError(
                f"the registry lists {ref.bundle_digest[:12]} but the files are "
                f"{accepted.digest[:12]}"
            )
        if accepted.card.site_id != ref.site_id:
            raise UntrustedMetadataError(
                f"bundle {ref.bundle_digest[:12]} is listed for {ref.site_id} "
                f"but its card names {accepted.card.site_id}"
            )
        specialist = load_specialist(accepted.card, accepted.digest, files, self._runtime)
        log.info(
            "loaded specialist %s: site %s, task %s, %s v%d on %s",
            accepted.digest[:12],
            ref.site_id,
            accepted.card.task_id,
            accepted.card.backbone,
            accepted.card.version,
            specialist.providers[0] if specialist.providers else "?",
        )
        return specialist


def _choose(
    candidates: Iterable[LoadedSpecialist], rejected: dict[str, str]
) -> list[LoadedSpecialist]:
    """The newest version per (site, task, backbone); one label set per task."""
    newest: dict[tuple[str, str, str, bool], LoadedSpecialist] = {}
    for specialist in candidates:
        held = newest.get(specialist.key)
        if held is None or specialist.card.version > held.card.version:
            newest[specialist.key] = specialist
    labels: dict[str, tuple[str, ...]] = {}
    chosen = []
    for specialist in sorted(newest.values(), key=lambda s: s.card.created_at):
        expected = labels.setdefault(specialist.card.task_id, specialist.card.labels)
        if specialist.card.labels != expected:
            rejected[specialist.bundle_digest] = (
                f"labels {list(specialist.card.labels)} differ from the task's {list(expected)}"
            )
            continue
        chosen.append(specialist)
    return chosen
