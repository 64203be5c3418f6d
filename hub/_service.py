"""The hub as a service: configuration, registry sync in the background, admission control."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from generalist import GeneralistBackend, OpenAICompatibleBackend, OpenAIConfig
from hub._access_log import AccessLog
from hub._auth import KeyFile
from hub._catalog import Catalog
from hub._engine import DiagnosisEngine, EngineOptions
from hub._metrics import HubMetrics
from hub._policy import load_policies
from hub._runtime import RuntimeOptions
from hub._sync import RegistrySync, SyncReport
from hub.errors import HubConfigError, OverloadedError
from protocol import ArbitrationPolicy, DecodeLimits

if TYPE_CHECKING:
    from registry import RegistryClient

__all__ = ["Admission", "Hub", "HubConfig"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class HubConfig:
    """Everything ``gsco hub serve`` is told. Sizes in bytes, times in seconds."""

    registry: str  # host:port of the registry's gRPC API
    trusted_root: Path  # the registry's TUF root (1.root.json), obtained out of band
    state_dir: Path  # TUF metadata cache and the access log
    api_keys: Path | None = None  # key file; None only with allow_anonymous
    allow_anonymous: bool = False  # serve without API keys (loopback demos only)
    registry_ca: Path | None = None  # CA certificate of the registry's TLS
    generalist: OpenAIConfig | None = None  # None: every generalist mode degrades to ensemble
    sync_interval_s: float = 30.0
    max_body_bytes: int = 20 * 1024 * 1024
    max_image_pixels: int = 16 * 1024 * 1024  # width x height (x frames, for DICOM)
    max_pixel_data_bytes: int = 64 * 1024 * 1024  # decoded: rows x cols x samples x frames x bits
    max_dicom_header_bytes: int = 1024 * 1024  # DICOM elements before the pixels, inflated
    max_in_flight: int = 4  # diagnoses processed at once
    max_queue: int = 32  # admitted diagnoses waiting for a slot; more get 503
    retry_after_s: int = 2
    workers: int = 4  # threads for decoding, onnxruntime and faiss
    generalist_timeout_s: float = 30.0
    runtime: RuntimeOptions = field(default_factory=RuntimeOptions)
    access_log_fsync: bool = True
    body_timeout_s: float = 30.0  # a request body must arrive within this
    policies: Path | None = (
        None  # arbitration policies (JSON; see hub._policy), fitted on validation
    )

    def check(self) -> None:
        """Raises :class:`HubConfigError` for an unusable configuration."""
        if not self.trusted_root.is_file():
            raise HubConfigError(
                f"trusted root {self.trusted_root} not found (get it with gsco registry trust-root)"
            )
        if self.api_keys is None and not self.allow_anonymous:
            raise HubConfigError(
                "no API key file: pass --api-keys FILE (create keys with gsco hub add-client), "
                "or --allow-anonymous for a loopback demo"
            )
        if self.api_keys is not None and not self.api_keys.is_file():
            raise HubConfigError(f"API key file {self.api_keys} not found")
        if self.policies is not None and not self.policies.is_file():
            raise HubConfigError(f"policy file {self.policies} not found")
        for name in (
            "max_body_bytes",
            "max_image_pixels",
            "max_pixel_data_bytes",
            "max_dicom_header_bytes",
            "max_in_flight",
            "workers",
        ):
            if getattr(self, name) < 1:
                raise HubConfigError(f"{name} must be at least 1")
        if self.max_queue < 0:
            raise HubConfigError("max_queue must be at least 0")


class Admission:
    """A bounded queue in front of the engine: at most ``slots`` run, ``queue`` wait."""

    def __init__(self, slots: int, queue: int, retry_after_s: int) -> None:
        self._slots = asyncio.Semaphore(slots)
        self._capacity = slots + queue
        self._retry_after_s = retry_after_s
        self.admitted = 0

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Waits for a slot, or raises :class:`OverloadedError` when the queue is full."""
        if self.admitted >= self._capacity:
            raise OverloadedError(
                f"the hub is at capacity ({self._capacity} requests admitted); retry later",
                self._retry_after_s,
            )
        self.admitted += 1
        try:
            async with self._slots:
                yield
        finally:
            self.admitted -= 1


class Hub:
    """Registry sync, the engine, the access log and the metrics of one hub."""

    def __init__(self, config: HubConfig, *, generalist: GeneralistBackend | None = None) -> None:
        config.check()
        self.config = config
        self.metrics = HubMetrics()
        self.api_keys = KeyFile(config.api_keys) if config.api_keys else None
        self._generalist = generalist
        self._executor = ThreadPoolExecutor(config.workers, thread_name_prefix="gsco-hub")
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._client: RegistryClient | None = None
        self._sync: RegistrySync | None = None
        self.access_log: AccessLog | None = None
        self.engine: DiagnosisEngine | None = None

    def set_policy(self, policy: ArbitrationPolicy) -> None:
        """Puts a task's arbitration policy in service (replacing the one it had)."""
        assert self.engine is not None, "start() first"
        self.engine.policies[policy.task_id] = policy
        log.info(
            "arbitration policy for %s: %s",
            policy.task_id,
            ", ".join(f"{m.value} w={p.generalist_weight:g}" for m, p in policy.modes.items()),
        )

    @property
    def executor(self) -> ThreadPoolExecutor:
        """The worker pool for CPU work (decoding, onnxruntime, faiss, the access log)."""
        return self._executor

    @property
    def catalog(self) -> Catalog:
        """The specialists in service."""
        return self._sync.catalog if self._sync is not None else Catalog()

    @property
    def last_sync(self) -> SyncReport | None:
        """The last sync's report."""
        return self._sync.last_report if self._sync is not None else None

    def start(self) -> SyncReport:
        """Opens the access log, syncs once (blocking) and starts the periodic sync."""
        from registry import RegistryClient, TrustedRegistry

        config = self.config
        config.state_dir.mkdir(parents=True, exist_ok=True)
        self.access_log = AccessLog(
            config.state_dir / "access.jsonl", fsync=config.access_log_fsync
        )
        client = RegistryClient(
            config.registry,
            root_certificates=config.registry_ca.read_bytes() if config.registry_ca else None,
            timeout_s=60.0,
        )
        self._client = client
        trusted = TrustedRegistry(
            client, config.state_dir / "tuf", config.trusted_root.read_bytes()
        )
        self._sync = RegistrySync(trusted=trusted, client=client, runtime=config.runtime)
        if self._generalist is None and config.generalist is not None:
            self._generalist = OpenAICompatibleBackend(config.generalist)
        self.engine = DiagnosisEngine(
            lambda: self.catalog,
            self._generalist,
            self._executor,
            EngineOptions(
                decode_limits=DecodeLimits(
                    max_image_pixels=config.max_image_pixels,
                    max_pixel_data_bytes=config.max_pixel_data_bytes,
                    max_dicom_header_bytes=config.max_dicom_header_bytes,
                ),
                generalist_timeout_s=config.generalist_timeout_s,
            ),
        )
        if config.policies is not None:
            self.engine.policies.update(load_policies(config.policies))
        report = self.sync_now()
        self._thread = threading.Thread(target=self._loop, name="gsco-hub-sync", daemon=True)
        self._thread.start()
        return report

    def sync_now(self) -> SyncReport:
        """Syncs with the registry now (also what the background thread does)."""
        assert self._sync is not None, "start() first"
        report = self._sync.sync()
        self.metrics.syncs.labels(result="ok" if report.ok else "failed").inc()
        self.metrics.observe_catalog(self.catalog, len(report.rejected))
        if report.loaded or report.unloaded:
            log.info(
                "registry snapshot %s: %d specialists loaded, %d taken out, %d refused",
                report.snapshot_version,
                len(report.loaded),
                len(report.unloaded),
                len(report.rejected),
            )
        return report

    def _loop(self) -> None:
        while not self._stop.wait(self.config.sync_interval_s):
            try:
                self.sync_now()
            except Exception:
                log.exception("registry sync crashed; retrying at the next interval")

    async def aclose(self) -> None:
        """Stops the sync thread and releases everything."""
        self._stop.set()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, 30)
        if self._generalist is not None:
            await self._generalist.aclose()
        if self._client is not None:
            self._client.close()
        self._executor.shutdown(wait=False, cancel_futures=True)
        if self.access_log is not None:
            self.access_log.close()
