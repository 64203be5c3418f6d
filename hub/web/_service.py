"""The hub as a service: configuration, registry sync in the background, admission control."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import threading
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from generalist import (
    AdapterLoadError,
    GeneralistBackend,
    OpenAICompatibleBackend,
    OpenAIConfig,
    ReversedOrderAveraging,
)
from hub._access_log import AccessLog
from hub._adapters import (
    ServedAdapter,
    adapter_name,
    read_adapter_bundle,
    verify_for_service,
    write_verified_copy,
)
from hub._batching import BatchingOptions
from hub._catalog import Catalog
from hub._engine import DiagnosisEngine, EngineOptions
from hub._policy import load_policies
from hub._runtime import RuntimeOptions
from hub._sync import RegistrySync, SyncReport
from hub.errors import AdapterRefusedError, HubConfigError, OverloadedError
from hub.web._auth import KeyFile
from hub.web._metrics import HubMetrics
from protocol import ArbitrationPolicy, BundleRef, DecodeLimits, GscoError
from registry import AcceptedAdapter, AdapterLimits
from signing import KeyRing

if TYPE_CHECKING:
    from registry import RegistryReadAPI

__all__ = ["Admission", "Hub", "HubConfig"]

log = logging.getLogger(__name__)


def _claimed_task(files: dict[str, bytes]) -> str | None:
    """The task an adapter's card names (unverified: it picks the keys, then it is checked)."""
    try:
        task = json.loads(files.get("adapter_card.json", b"")).get("task_id")
    except (ValueError, AttributeError):
        return None
    return task if isinstance(task, str) else None


def _announce(accepted: AcceptedAdapter, name: str) -> None:
    """Logs the adapter put in service, and the policy it carries."""
    card = accepted.card
    log.info(
        "adapter %s of %s in service for %s as %s (rank %d, %d examples from %d sites)",
        accepted.digest[:12],
        card.site_id,
        card.task_id,
        name,
        card.lora.rank,
        card.training.examples,
        len(card.training.sites),
    )
    if card.policy is not None:
        log.info(
            "adapter %s carries its arbitration policy: %s",
            accepted.digest[:12],
            ", ".join(f"{m.value} w={p.generalist_weight:g}" for m, p in card.policy.modes.items()),
        )


def available_cores() -> int:
    """The CPU cores this process may run on (its affinity mask, else the machine's)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not every platform has affinity masks
        return max(1, os.cpu_count() or 1)


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
    # Diagnoses processed at once (and so the largest batch a specialist can see); the
    # memory they may hold is bounded by max_in_flight x max_pixel_data_bytes.
    max_in_flight: int = 16
    max_queue: int = 32  # admitted diagnoses waiting for a slot; more get 503
    retry_after_s: int = 2
    # Threads for decoding, onnxruntime and faiss; None: the CPU cores this process may
    # use (each session has one intra-op thread, so one thread per core keeps every core
    # busy without more runnable threads than cores, which stretched each stage by the
    # time a thread waits for a core: bench/hub_overhead.py).
    workers: int | None = None
    generalist_timeout_s: float = 30.0
    # Dynamic batching (hub._batching): a batch waits at most this long for requests
    # already on their way (never when none is), and holds at most max_batch requests.
    batch_window_ms: float = 2.0
    max_batch: int = 16
    runtime: RuntimeOptions = field(default_factory=RuntimeOptions)
    access_log_fsync: bool = True
    body_timeout_s: float = 30.0  # a request body must arrive within this
    policies: Path | None = (
        None  # arbitration policies (JSON; see hub._policy), fitted on validation
    )
    # Signed LoRA adapter bundles of the generalist (folders; see hub._adapters), loaded
    # into vLLM at start. The verified copies go to STATE/adapters, which vLLM must read.
    adapters: tuple[Path, ...] = ()
    max_lora_rank: int = 16  # the generalist's --max-lora-rank
    # The fewest training sites whose co-signatures put a registry adapter in service here,
    # whatever threshold the registry delegates (registry.MIN_SIGNERS at least).
    min_adapter_signers: int = 2
    # Ask the generalist with the options as given and reversed, and average its label
    # scores (generalist.ReversedOrderAveraging): decisions that do not follow option order,
    # at twice the generalist requests.
    average_option_orders: bool = True

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
        for folder in self.adapters:
            if not folder.is_dir():
                raise HubConfigError(f"adapter bundle {folder} is not a folder")
        if self.adapters and self.generalist is None:
            raise HubConfigError("adapters need a generalist (--generalist)")
        for name in (
            "max_body_bytes",
            "max_image_pixels",
            "max_pixel_data_bytes",
            "max_dicom_header_bytes",
            "max_in_flight",
            "max_batch",
        ):
            if getattr(self, name) < 1:
                raise HubConfigError(f"{name} must be at least 1")
        if self.min_adapter_signers < 2:
            raise HubConfigError("min_adapter_signers must be at least 2: no site decides alone")
        if self.workers is not None and self.workers < 1:
            raise HubConfigError("workers must be at least 1")
        if self.max_queue < 0:
            raise HubConfigError("max_queue must be at least 0")
        if self.batch_window_ms < 0:
            raise HubConfigError("batch_window_ms must be at least 0")


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

    def __init__(
        self,
        config: HubConfig,
        *,
        generalist: GeneralistBackend | None = None,
        registry: RegistryReadAPI | None = None,
    ) -> None:
        """A hub of ``config``, not started.

        ``generalist`` replaces the backend ``config.generalist`` describes, and
        ``registry`` the client of ``config.registry`` (an
        :class:`registry.InProcessRegistry`, say): what the hub syncs from. Its
        TUF trust is the same either way.
        """
        config.check()
        self.config = config
        self.metrics = HubMetrics()
        self.api_keys = KeyFile(config.api_keys) if config.api_keys else None
        self._generalist = generalist
        self.workers = config.workers or available_cores()
        self._executor = ThreadPoolExecutor(self.workers, thread_name_prefix="gsco-hub")
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._client: RegistryReadAPI | None = registry
        self._sync: RegistrySync | None = None
        self.access_log: AccessLog | None = None
        self.engine: DiagnosisEngine | None = None
        self.adapter_warnings: dict[str, str] = {}  # by task: why its adapter is not in use
        self._adapter_refused: dict[str, str] = {}  # registry adapter digest -> why

    def set_policy(self, policy: ArbitrationPolicy) -> None:
        """Puts a task's arbitration policy in service (replacing the one it had)."""
        assert self.engine is not None, "start() first"
        self.engine.policies[policy.task_id] = policy
        log.info(
            "arbitration policy for %s: %s",
            policy.task_id,
            ", ".join(
                f"{m.value} {p.base} w={p.generalist_weight:g}" for m, p in policy.modes.items()
            ),
        )

    def load_adapter(self, folder: Path) -> ServedAdapter | None:
        """Verifies the adapter bundle in ``folder`` and puts it in service for its task.

        An adapter given by the operator (``--adapter``) is pinned: the
        registry's adapters for its task do not replace it. See
        :meth:`_serve_adapter` for the checks and what a refusal does.

        Raises:
            AdapterRefusedError: the bundle fails verification or does not fit.
            HubConfigError: no generalist that can load adapters, or not started.
        """
        backend = self._adapter_backend()
        files = read_adapter_bundle(folder, AdapterLimits(max_rank=self.config.max_lora_rank))
        return self._serve_adapter(backend, files, source="operator")

    def _adapter_backend(self) -> OpenAICompatibleBackend:
        if self.engine is None or self._sync is None:
            raise HubConfigError("the hub is not started: call start() first")
        backend = self._generalist
        if not isinstance(backend, OpenAICompatibleBackend):
            raise HubConfigError("the generalist in service cannot load LoRA adapters")
        return backend

    def _serve_adapter(
        self,
        backend: OpenAICompatibleBackend,
        files: dict[str, bytes],
        *,
        source: str,
        expected_digest: str | None = None,
    ) -> ServedAdapter | None:
        """Verifies ``files`` and, if vLLM loads them, serves the adapter for its task.

        The bundle is verified against the keys of the sites the registry
        delegates to (as of the last sync) and against the generalist in
        service; the verified bytes are copied to ``STATE/adapters/DIGEST``
        and vLLM loads that copy. When vLLM refuses it, the base model goes on
        answering: a warning is logged and shown in ``/v1/tasks``, and ``None``
        is returned.

        A registry adapter also needs the consortium's backing: the co-signatures
        of enough of its training sites on its task's adapter role
        (:meth:`RegistrySync.adapter_backing`).

        Raises:
            AdapterRefusedError: the bundle fails verification, does not fit, or
                (from the registry) lacks the consortium's backing.
        """
        assert self.engine is not None
        accepted, endorsed = self._accept_adapter(backend, files, source, expected_digest)
        card = accepted.card
        copy = write_verified_copy(files, self.config.state_dir / "adapters", accepted.digest)
        name = adapter_name(card, accepted.digest)
        try:
            backend.load_adapter(name, str(copy.resolve()))
        except AdapterLoadError as exc:
            self.adapter_warnings[card.task_id] = str(exc)
            self.metrics.adapter_refusals.inc()
            log.warning(
                "the generalist refused adapter %s for %s; the base model answers: %s",
                accepted.digest[:12],
                card.task_id,
                exc,
            )
            return None
        served = ServedAdapter(
            name=name,
            digest=accepted.digest,
            card=card,
            path=copy,
            source=source,
            endorsed_by=endorsed,
        )
        previous = self.engine.adapters.get(card.task_id)
        self.engine.adapters[card.task_id] = served
        self.adapter_warnings.pop(card.task_id, None)
        if previous is not None and previous.name != name:
            self._unload(backend, previous)
        _announce(accepted, name)
        return served

    def _accept_adapter(
        self,
        backend: OpenAICompatibleBackend,
        files: dict[str, bytes],
        source: str,
        expected_digest: str | None,
    ) -> tuple[AcceptedAdapter, tuple[str, ...]]:
        """The verified adapter, and the sites whose co-signatures back it (registry only).

        Raises:
            AdapterRefusedError: see :meth:`_serve_adapter`.
        """
        assert self.engine is not None and self._sync is not None  # noqa: PT018
        limits = AdapterLimits(max_rank=self.config.max_lora_rank)
        keyring = self._sync.keyring
        if source == "registry":
            card_task = _claimed_task(files)
            keyring = self._sync.adapter_keyring(card_task) if card_task else KeyRing(())
        accepted = verify_for_service(
            files,
            keyring,
            base_model=backend.config.model,
            sees_images=backend.sees_images,
            limits=limits,
            module_root=backend.config.lora_module_root,
        )
        if expected_digest is not None and accepted.digest != expected_digest:
            raise AdapterRefusedError(
                f"the registry lists adapter {expected_digest[:12]} but its files are "
                f"{accepted.digest[:12]}"
            )
        card = accepted.card
        endorsed: tuple[str, ...] = ()
        if source == "registry" and card.task_id != _claimed_task(files):  # pragma: no cover
            raise AdapterRefusedError("the adapter's card changed while it was checked")
        if source == "registry":
            try:
                endorsed = self._sync.adapter_backing(
                    card, accepted.manifest.site_id, self.config.min_adapter_signers
                )
            except GscoError as exc:
                raise AdapterRefusedError(str(exc)) from exc
        else:
            log.warning(
                "adapter %s for %s is pinned by the operator (--adapter): served without the "
                "consortium's co-signatures",
                accepted.digest[:12],
                card.task_id,
            )
        return accepted, endorsed

    def _unload(self, backend: OpenAICompatibleBackend, served: ServedAdapter) -> None:
        try:
            backend.unload_adapter(served.name)
        except AdapterLoadError as exc:
            log.warning("could not unload adapter %s: %s", served.name, exc)

    def _reconcile_adapters(self) -> None:
        """After a sync: each task's consortium adapter in service, as its trusted role says.

        A registry adapter that its role no longer lists (revoked, replaced, its
        key revoked, its role refused by TUF) is taken out of service at once
        and the base model answers; operator-pinned ones stay. Refusals are
        remembered by digest and not retried.
        """
        if self.engine is None or self._sync is None:
            return
        backend = self._generalist
        if not isinstance(backend, OpenAICompatibleBackend):
            return
        listed = {ref.bundle_digest: ref for ref in self._sync.adapters}
        problems = (
            self._sync.last_report.adapter_problems if self._sync.last_report is not None else {}
        )
        for task_id, problem in problems.items():
            self.adapter_warnings[task_id] = (
                f"the consortium's adapter role is refused, so the base model answers: {problem}"
            )
        for task_id, served in list(self.engine.adapters.items()):
            if served.source == "registry" and served.digest not in listed:
                del self.engine.adapters[task_id]
                self._unload(backend, served)
                log.warning(
                    "adapter %s of %s is no longer the consortium's (revoked, replaced or its "
                    "role refused): the base model answers",
                    served.digest[:12],
                    task_id,
                )
        current: dict[str, BundleRef] = {}
        for ref in listed.values():
            if ref.bundle_digest not in self._adapter_refused:
                current.setdefault(ref.task_id, ref)
        for task_id, ref in current.items():
            held = self.engine.adapters.get(task_id)
            if held is not None and (held.source == "operator" or held.digest == ref.bundle_digest):
                continue
            try:
                files = self._sync.adapter_files(ref)
                if _claimed_task(files) != ref.task_id:
                    raise AdapterRefusedError(
                        f"the adapter role of {ref.task_id} lists an adapter for another task"
                    )
                if (
                    self._serve_adapter(
                        backend, files, source="registry", expected_digest=ref.bundle_digest
                    )
                    is None
                ):
                    self._adapter_refused[ref.bundle_digest] = self.adapter_warnings.get(
                        task_id, "refused by the generalist"
                    )
            except GscoError as exc:
                self._adapter_refused[ref.bundle_digest] = str(exc)
                self.adapter_warnings[task_id] = f"adapter {ref.bundle_digest[:12]}: {exc}"
                self.metrics.adapter_refusals.inc()
                log.warning(
                    "refused adapter %s of %s: %s", ref.bundle_digest[:12], ref.site_id, exc
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
        client = self._client or RegistryClient(
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
        answering = self._generalist
        if answering is not None and config.average_option_orders:
            answering = ReversedOrderAveraging(answering)
        self.engine = DiagnosisEngine(
            lambda: self.catalog,
            answering,
            self._executor,
            EngineOptions(
                decode_limits=DecodeLimits(
                    max_image_pixels=config.max_image_pixels,
                    max_pixel_data_bytes=config.max_pixel_data_bytes,
                    max_dicom_header_bytes=config.max_dicom_header_bytes,
                ),
                generalist_timeout_s=config.generalist_timeout_s,
                batching=BatchingOptions(
                    window_ms=config.batch_window_ms,
                    max_batch=config.max_batch,
                    slots=2 * self.workers,  # one running and one ready, per worker
                    per_specialist=self.workers,  # one specialist may use every worker
                ),
            ),
        )
        if config.policies is not None:
            self.engine.policies.update(load_policies(config.policies))
        report = self.sync_now()
        for folder in config.adapters:
            self.load_adapter(folder)
        self._thread = threading.Thread(target=self._loop, name="gsco-hub-sync", daemon=True)
        self._thread.start()
        return report

    def sync_now(self) -> SyncReport:
        """Syncs with the registry now (also what the background thread does)."""
        assert self._sync is not None, "start() first"
        report = self._sync.sync()
        if report.ok:
            self._reconcile_adapters()
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
