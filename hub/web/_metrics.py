"""Prometheus metrics of one hub (their own registry, so two hubs in one process never mix)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from hub._catalog import Catalog

__all__ = ["HubMetrics"]

_STAGE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class HubMetrics:
    """Requests, latency per stage, errors by type, specialists loaded, syncs."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "gsco_hub_requests",
            "Diagnosis requests by requested mode, mode used and outcome.",
            ["mode_requested", "mode_used", "outcome"],
            registry=self.registry,
        )
        self.stage_seconds = Histogram(
            "gsco_hub_stage_seconds",
            "Seconds per stage of a diagnosis (decode, specialists, retrieval, generalist, total).",
            ["stage"],
            buckets=_STAGE_BUCKETS,
            registry=self.registry,
        )
        self.errors = Counter(
            "gsco_hub_errors",
            "Refused or failed requests by error type.",
            ["type"],
            registry=self.registry,
        )
        self.auth_failures = Counter(
            "gsco_hub_auth_failures",
            "Requests refused for a missing or unknown API key, by endpoint.",
            ["endpoint"],
            registry=self.registry,
        )
        self.adapter_refusals = Counter(
            "gsco_hub_adapter_refusals",
            "Verified LoRA adapters the generalist would not load (the base model answered).",
            registry=self.registry,
        )
        self.degraded = Counter(
            "gsco_hub_degraded",
            "Answers that fell back to the ensemble because the generalist failed.",
            registry=self.registry,
        )
        self.in_flight = Gauge(
            "gsco_hub_requests_in_flight",
            "Diagnosis requests admitted and not yet answered (running or queued).",
            registry=self.registry,
        )
        self.specialists = Gauge(
            "gsco_hub_specialists_loaded",
            "Verified specialists in service, by task.",
            ["task"],
            registry=self.registry,
        )
        self.syncs = Counter(
            "gsco_hub_registry_syncs",
            "Registry syncs by result.",
            ["result"],
            registry=self.registry,
        )
        self.rejected = Gauge(
            "gsco_hub_bundles_refused",
            "Bundles the last sync refused (failed verification or loading).",
            registry=self.registry,
        )
        self.snapshot = Gauge(
            "gsco_hub_registry_snapshot_version",
            "TUF snapshot version of the catalog in service.",
            registry=self.registry,
        )

    def observe_catalog(self, catalog: Catalog, refused: int) -> None:
        """Updates the gauges after a sync."""
        self.specialists.clear()
        for task, group in catalog.specialists.items():
            self.specialists.labels(task=task).set(len(group))
        self.rejected.set(refused)
        if catalog.snapshot_version is not None:
            self.snapshot.set(catalog.snapshot_version)

    def render(self) -> bytes:
        """The text exposition format."""
        return generate_latest(self.registry)
