"""One verified specialist, ready to run: an onnxruntime session and a faiss index.

The GPU paths (the CUDA execution provider, faiss on GPU) are taken only when
they are really there: onnxruntime-gpu silently falls back to the CPU when
CUDA cannot load, so the provider actually in use is read back from
``session.get_providers()`` and reported, never assumed.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cache, cached_property
from typing import Any

import numpy as np
from numpy.typing import NDArray

from hub._compat import faiss_blas_for_every_batch
from hub.errors import SpecialistLoadError, SpecialistRuntimeError
from protocol import (
    GscoError,
    IndexMode,
    SpecialistCard,
    SpecialistProvenance,
    TaskSpec,
    calibrated_softmax,
    check_index,
    check_onnx,
    load_index,
)

__all__ = [
    "LoadedSpecialist",
    "Neighbour",
    "RuntimeOptions",
    "faiss_uses_gpu",
    "load_specialist",
    "onnx_providers",
]

log = logging.getLogger(__name__)

_CUDA = "CUDAExecutionProvider"
_CPU = "CPUExecutionProvider"


#: What every specialist run of one hub process may allocate at once, by default.
DEFAULT_MAX_RUN_MEMORY_BYTES = 4 * 1024**3


@dataclass(frozen=True)
class RuntimeOptions:
    """How specialists run. ``None`` picks the default.

    ``max_run_memory_bytes`` bounds what onnxruntime allocates while running (the
    activations of every batch running at once, all specialists together; their
    weights are not counted): the sessions share one CPU arena of that size (on a
    GPU, each session's CUDA arena). A run that needs more fails as that run's
    :class:`SpecialistRuntimeError` instead of taking the process's memory: a
    418-byte model whose ``ConstantOfShape`` asked for 2 GB on every request passed
    every check of the model's contract. The arena is per process and set by the
    first session created; a later different setting is logged and ignored.
    """

    use_gpu: bool | None = None  # None: the GPU when onnxruntime really has CUDA
    intra_op_threads: int | None = 1  # per session; sessions of one request run in parallel
    max_run_memory_bytes: int = DEFAULT_MAX_RUN_MEMORY_BYTES
    max_run_seconds: float = 30.0  # a run still going is stopped (between two operators)

    def __post_init__(self) -> None:
        if self.max_run_memory_bytes < 1024**2:
            raise ValueError("max_run_memory_bytes must be at least 1 MiB")
        if not self.max_run_seconds > 0:
            raise ValueError("max_run_seconds must be positive")


class _Watchdog:
    """Stops onnxruntime runs that outlive their deadline.

    Each run registers its ``RunOptions`` under its thread; one daemon thread looks
    every ``period_s`` and sets ``terminate`` on the runs past their deadline, which
    onnxruntime checks between operators (a single operator is never interrupted:
    the run memory bounds how large one can be). A specialist whose model runs for
    minutes would otherwise hold a worker, and with two such requests every task's.
    """

    def __init__(self, period_s: float = 0.25) -> None:
        self._period_s = period_s
        self._runs: dict[int, tuple[float, Any]] = {}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def watch(self, seconds: float) -> Any:
        """A ``RunOptions`` for the calling thread's next run, stopped after ``seconds``."""
        import onnxruntime as ort

        run_options = ort.RunOptions()
        self._runs[threading.get_ident()] = (time.monotonic() + seconds, run_options)
        if self._thread is None:
            with self._lock:
                if self._thread is None:
                    self._thread = threading.Thread(
                        target=self._loop, name="gsco-run-watchdog", daemon=True
                    )
                    self._thread.start()
        return run_options

    def done(self) -> None:
        """The calling thread's run ended."""
        self._runs.pop(threading.get_ident(), None)

    def _loop(self) -> None:
        while True:
            time.sleep(self._period_s)
            now = time.monotonic()
            for deadline, run_options in list(self._runs.values()):
                if now > deadline:
                    run_options.terminate = True


_watchdog = _Watchdog()
_arena_lock = threading.Lock()
_arena_bytes: list[int] = []  # the shared CPU arena's size, once registered


def _shared_cpu_arena(max_bytes: int) -> int:
    """Registers (once per process) the CPU arena every specialist session allocates from."""
    import onnxruntime as ort

    with _arena_lock:
        if not _arena_bytes:
            info = ort.OrtMemoryInfo(
                "Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT
            )
            # kSameAsRequested (1): the arena grows by what a run asks, up to max_mem.
            config = ort.OrtArenaCfg({"max_mem": max_bytes, "arena_extend_strategy": 1})
            ort.create_and_register_allocator(info, config)
            _arena_bytes.append(max_bytes)
        elif _arena_bytes[0] != max_bytes:
            log.warning(
                "the specialists' memory arena is %d bytes for this process; %d is ignored",
                _arena_bytes[0],
                max_bytes,
            )
        return _arena_bytes[0]


@cache
def onnx_providers(use_gpu: bool | None = None) -> tuple[str, ...]:
    """The execution providers to ask for (CUDA first when available and wanted)."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    if use_gpu is not False and _CUDA in available:
        return (_CUDA, _CPU)
    if use_gpu:
        log.warning("a GPU was requested but onnxruntime has no CUDA provider; using the CPU")
    return (_CPU,)


@cache
def faiss_uses_gpu() -> bool:
    """Whether faiss has a GPU to put indexes on."""
    import faiss

    get_num_gpus = getattr(faiss, "get_num_gpus", None)
    return bool(get_num_gpus is not None and get_num_gpus() > 0)


@dataclass(frozen=True)
class Neighbour:
    """One retrieved index entry."""

    label: str
    similarity: float


def _normalise(rows: NDArray[np.float32]) -> NDArray[np.float32]:
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    return np.ascontiguousarray(rows / np.maximum(norms, 1e-12), dtype=np.float32)


@dataclass
class LoadedSpecialist:
    """A specialist the hub verified and loaded. Thread-safe to call."""

    card: SpecialistCard
    bundle_digest: str
    providers: tuple[str, ...]
    _session: Any = field(repr=False)
    _index: Any = field(repr=False)  # faiss index over unit-length rows, or None
    _index_labels: NDArray[np.int64] = field(repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    max_run_seconds: float = RuntimeOptions.max_run_seconds

    @cached_property
    def provenance(self) -> SpecialistProvenance:
        """Which signed bundle this is (built once: every answer names it)."""
        return SpecialistProvenance(
            bundle_digest=self.bundle_digest,
            site_id=self.card.site_id,
            backbone=self.card.backbone,
            version=self.card.version,
            federated=self.card.federation is not None,
            dp_epsilon=dp.epsilon if (dp := self.card.training_privacy) else None,
            dp_delta=dp.delta if dp else None,
        )

    @cached_property
    def task(self) -> TaskSpec:
        """The task this specialist answers (``card.task_spec()``, built once)."""
        return self.card.task_spec()

    @cached_property
    def preprocessing_key(self) -> str:
        """Its preprocessing, as a key: specialists that preprocess alike share one input."""
        return self.card.preprocessing.model_dump_json()

    @property
    def key(self) -> tuple[str, str, str, bool]:
        """``(site, task, backbone, federated)``: a newer version of the same key replaces it.

        A site's own specialist and the federated one it co-trained are served side by side.
        """
        card = self.card
        return (card.site_id, card.task_id, card.backbone, card.federation is not None)

    @property
    def index_size(self) -> int:
        """Entries in the retrieval index (0 when none was published)."""
        return 0 if self._index is None else int(self._index.ntotal)

    def run(self, inputs: NDArray[np.float32]) -> tuple[NDArray[np.float64], NDArray[np.float32]]:
        """Calibrated probabilities ``[N, K]`` and embeddings ``[N, D]`` of preprocessed inputs.

        Raises:
            SpecialistRuntimeError: onnxruntime failed on the input.
        """
        run_options = _watchdog.watch(self.max_run_seconds)
        try:
            logits, embeddings = self._session.run(
                ["logits", "embedding"], {"image": inputs}, run_options
            )
        except Exception as exc:
            why = (
                f"was stopped after {self.max_run_seconds:g} s"
                if run_options.terminate
                else f"failed: {exc}"
            )
            raise SpecialistRuntimeError(
                f"specialist {self.bundle_digest[:12]} ({self.card.site_id}) {why}"
            ) from exc
        finally:
            _watchdog.done()
        probs = calibrated_softmax(logits, self.card.calibration_temperature)
        return probs, np.asarray(embeddings, dtype=np.float32)

    def search(self, embeddings: NDArray[np.float32], k: int) -> list[list[Neighbour]]:
        """The ``k`` most cosine-similar index entries of each embedding."""
        if self._index is None or k < 1:
            return [[] for _ in range(len(embeddings))]
        k = min(k, self.index_size)
        _faiss_threads_here()
        with self._lock:  # GPU indexes are not safe for concurrent searches
            similarities, rows = self._index.search(_normalise(embeddings), k)
        labels = self.card.labels
        entry_labels = self._index_labels[np.maximum(rows, 0)].tolist()  # -1: nothing found
        return [  # plain Python from here: per-element NumPy calls cost more than the search
            [
                Neighbour(labels[label], sim)
                for sim, row, label in zip(sims, found, found_labels, strict=True)
                if row >= 0
            ]
            for sims, found, found_labels in zip(
                np.clip(similarities, -1.0, 1.0).tolist(), rows.tolist(), entry_labels, strict=True
            )
        ]


def _session(model: bytes, options: RuntimeOptions) -> tuple[Any, tuple[str, ...]]:
    import onnxruntime as ort

    session_options = ort.SessionOptions()
    if options.intra_op_threads:
        session_options.intra_op_num_threads = options.intra_op_threads
    session_options.inter_op_num_threads = 1
    _shared_cpu_arena(options.max_run_memory_bytes)
    session_options.add_session_config_entry("session.use_env_allocators", "1")
    wanted = onnx_providers(options.use_gpu)
    providers: list[str | tuple[str, dict[str, str]]] = [
        (name, {"gpu_mem_limit": str(options.max_run_memory_bytes)}) if name == _CUDA else name
        for name in wanted
    ]
    try:
        session = ort.InferenceSession(model, sess_options=session_options, providers=providers)
    except Exception as exc:
        raise SpecialistLoadError(f"onnxruntime cannot load model.onnx: {exc}") from exc
    actual = tuple(session.get_providers())
    if wanted[0] == _CUDA and (not actual or actual[0] != _CUDA):
        log.warning("onnxruntime fell back from CUDA to %s", actual[0] if actual else "nothing")
    return session, actual


#: OpenMP threads inside one faiss search. The hub's parallelism is its worker pool
#: (one thread per core, each running a specialist's session and search): threads
#: inside each search on top of those would only compete for the same cores. The
#: hub's searches are small (a batch of embeddings against a site's prototype index).
FAISS_THREADS = 1

_openmp = threading.local()


def _faiss_threads_here() -> None:
    """Sets :data:`FAISS_THREADS` for the calling thread, once per thread.

    OpenMP's thread count is a per-thread setting: ``omp_set_num_threads`` in the
    thread that loaded an index does not reach the worker threads that search it.
    Unset, each worker's search (faiss's BLAS is OpenBLAS built on OpenMP) started
    a team of one thread per core, which spin between searches: measured, the hub
    used 1.8 cores at concurrency 1 with one specialist, 0.9 with one thread.
    """
    if not getattr(_openmp, "set", False):
        import faiss

        faiss.omp_set_num_threads(FAISS_THREADS)
        _openmp.set = True


def _faiss_index(embeddings: NDArray[np.float32]) -> Any:
    import faiss

    faiss_blas_for_every_batch(faiss)
    _faiss_threads_here()
    index: Any = faiss.IndexFlatIP(embeddings.shape[1])
    if faiss_uses_gpu():
        index = faiss.index_cpu_to_all_gpus(index)
    index.add(_normalise(embeddings))
    return index


def load_specialist(
    card: SpecialistCard,
    bundle_digest: str,
    files: Mapping[str, bytes],
    options: RuntimeOptions | None = None,
) -> LoadedSpecialist:
    """Builds the runtime of a bundle that already passed :func:`registry.verify_publication`.

    The contract checks run again here (they are cheap), so the hub never
    trusts that its caller verified.

    Raises:
        SpecialistLoadError: the model or the index cannot be loaded.
    """
    options = options or RuntimeOptions()
    try:
        summary = check_onnx(files["model.onnx"])
        arrays = load_index(files["index.npz"])
        check_index(arrays, card)
    except (GscoError, KeyError) as exc:
        raise SpecialistLoadError(f"bundle {bundle_digest[:12]} cannot be loaded: {exc}") from exc
    if summary.num_classes != len(card.labels):
        raise SpecialistLoadError(
            f"bundle {bundle_digest[:12]}: the model has {summary.num_classes} classes, "
            f"the card {len(card.labels)}"
        )
    session, providers = _session(files["model.onnx"], options)
    embeddings = np.asarray(arrays["embeddings"], dtype=np.float32)
    index = None
    if card.index.mode is not IndexMode.NONE and len(embeddings):
        index = _faiss_index(embeddings)
    return LoadedSpecialist(
        card=card,
        bundle_digest=bundle_digest,
        providers=providers,
        _session=session,
        _index=index,
        _index_labels=np.asarray(arrays["labels"], dtype=np.int64),
        max_run_seconds=options.max_run_seconds,
    )
