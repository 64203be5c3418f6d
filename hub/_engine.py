"""One diagnosis: decode, run the task's specialists, retrieve, arbitrate.

Modes (``protocol.Mode``): ``gsco`` (MoED + RAD evidence, the generalist
decides; the default), ``moed``, ``rad``, ``generalist`` (the generalist
alone), ``voting`` (majority over the specialists' labels) and ``ensemble``
(mean of calibrated probabilities). On ordinal tasks a distribution stands for
its median grade and a vote is the median of the specialists' grades
(``protocol.decide`` and ``protocol.vote``). When the generalist is down, slow or
answers outside the label set, the answer is the ``ensemble`` one, marked
``degraded`` with the reason in ``warnings``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import logging
import time
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np
from numpy.typing import NDArray

from generalist import (
    ArbitrationRequest,
    ArbitrationResult,
    CalibrationCache,
    GeneralistBackend,
    GeneralistError,
    LabelCalibration,
    MoedEvidence,
    RadEvidence,
)
from hub._adapters import ServedAdapter
from hub._arbitration import PolicyResolver
from hub._batching import BatchingOptions, SpecialistBatcher, SpecialistOutput
from hub._catalog import Catalog
from hub._policy import fuse, vote_scores
from hub._runtime import LoadedSpecialist
from hub._suspend import Suspensions
from hub.errors import SpecialistRuntimeError
from protocol import (
    ArbitrationPolicy,
    DecodeLimits,
    DiagnoseResponse,
    GeneralistUse,
    MediaType,
    Mode,
    ModePolicy,
    RetrievedCase,
    SpecialistPrediction,
    StageTimings,
    TaskSpec,
    TaskType,
    decide,
    decode_image_bytes,
    encode_png,
    preprocess,
    vote,
)

_T = TypeVar("_T")
log = logging.getLogger(__name__)

__all__ = [
    "GENERALIST_MODES",
    "Diagnosis",
    "DiagnosisEngine",
    "EngineOptions",
    "arbitration_request",
]

#: Modes in which the generalist decides.
GENERALIST_MODES = frozenset({Mode.GSCO, Mode.MOED, Mode.RAD, Mode.GENERALIST})
_RETRIEVAL_MODES = frozenset({Mode.GSCO, Mode.RAD})


@dataclass(frozen=True)
class EngineOptions:
    """Bounds of one diagnosis."""

    decode_limits: DecodeLimits = field(
        default_factory=lambda: DecodeLimits(
            max_image_pixels=16 * 1024 * 1024, max_pixel_data_bytes=64 * 1024 * 1024
        )
    )
    generalist_timeout_s: float = 30.0
    batching: BatchingOptions = field(default_factory=BatchingOptions)


@dataclass(frozen=True)
class Diagnosis:
    """A response and what the access log needs besides it."""

    response: DiagnoseResponse
    image_sha256: str


def _ms(start: float) -> float:
    return (time.perf_counter() - start) * 1000.0


def _label_of(probs: NDArray[np.float64], task: TaskSpec) -> str:
    """The label ``probs`` stands for (the median grade on ordinal tasks: ``protocol.decide``)."""
    return task.labels[int(decide(probs[None, :], task.task_type)[0])]


@dataclass(frozen=True)
class _Answer:
    """What the generalist's stage gave: its label and scores, or why the ensemble answers."""

    label: str | None
    scores: dict[str, float] | None
    use: GeneralistUse | None
    problem: str | None
    ms: float | None


class DiagnosisEngine:
    """Answers diagnosis requests from the catalog in service."""

    def __init__(
        self,
        catalog: Callable[[], Catalog],
        generalist: GeneralistBackend | None,
        executor: Executor,
        options: EngineOptions | None = None,
    ) -> None:
        self._catalog = catalog
        self.generalist = generalist
        self._executor = executor
        self.options = options or EngineOptions()
        self.calibrations = CalibrationCache()
        self.policies: dict[str, ArbitrationPolicy] = {}  # by task; see hub._policy
        self.adapters: dict[str, ServedAdapter] = {}  # by task; see hub._adapters
        self.resolver = PolicyResolver(self.policies, self.adapters)
        self._batchers: dict[str, SpecialistBatcher] = {}  # by bundle digest
        self._inbound: dict[str, int] = {}  # by task: requests still decoding
        self.suspensions = Suspensions()  # specialists that keep failing, left out a while
        self._slots: tuple[asyncio.AbstractEventLoop, asyncio.Semaphore] | None = None

    def _batcher(self, specialist: LoadedSpecialist) -> SpecialistBatcher:
        batcher = self._batchers.get(specialist.bundle_digest)
        if batcher is None or batcher.specialist is not specialist:
            served = self._catalog().all
            if len(self._batchers) > 2 * len(served) + 16:  # forget replaced specialists
                live = {s.bundle_digest for s in served}
                self._batchers = {d: b for d, b in self._batchers.items() if d in live}
                self.suspensions.forget(live)
            task_id = specialist.card.task_id
            batcher = SpecialistBatcher(
                specialist,
                self._executor,
                self.options.batching,
                inbound=lambda: self._inbound.get(task_id, 0),
                slots=self._batch_slots,
            )
            self._batchers[specialist.bundle_digest] = batcher
        return batcher

    def _batch_slots(self) -> asyncio.Semaphore | None:
        """The running loop's semaphore of batch slots, shared by every batcher."""
        count = self.options.batching.slots
        if count is None:
            return None
        loop = asyncio.get_running_loop()
        if self._slots is None or self._slots[0] is not loop:
            self._slots = (loop, asyncio.Semaphore(count))
        return self._slots[1]

    async def _in_pool(self, work: Callable[[], _T]) -> _T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, work)

    async def diagnose(
        self,
        *,
        request_id: str,
        task_id: str,
        image: bytes,
        media_type: MediaType | None,
        mode: Mode = Mode.GSCO,
        top_k: int = 5,
    ) -> Diagnosis:
        """Diagnoses one image.

        Raises:
            UnknownTaskError: no verified specialist serves ``task_id``.
            ImageDecodeError: the image is corrupt, too large or not ``media_type``.
            SpecialistRuntimeError: every specialist of the task failed on the image
                (one that fails while others answer is left out: the answer is
                ``degraded`` and its warnings say which).
        """
        started = time.perf_counter()
        catalog = self._catalog()  # this request's snapshot, whatever syncs meanwhile
        found = await self._gather(
            catalog, task_id, image, media_type, mode, top_k, for_generalist=True
        )
        task, labels = found.task, found.task.labels
        moed, ensemble = found.moed, found.ensemble
        warnings: list[str] = list(found.left_out)
        degraded = bool(found.left_out)
        mode_used = mode
        answer = _Answer(None, None, None, None, None)
        if mode in GENERALIST_MODES:
            answer = await self._ask_generalist(found, mode)
            if answer.use is None:
                degraded, mode_used = True, Mode.ENSEMBLE
                warnings.append(f"answered with ensemble: {answer.problem}")
        label, scores = answer.label, answer.scores
        if mode_used is Mode.VOTING:
            label, scores = _vote(moed, task, ensemble)
        elif mode_used is Mode.ENSEMBLE:
            label = _label_of(ensemble, task)
            scores = {name: float(p) for name, p in zip(labels, ensemble, strict=True)}
        assert label is not None
        generalist_use = answer.use
        response = DiagnoseResponse(
            request_id=request_id,
            task_id=task_id,
            label=label,
            scores=scores,
            mode_requested=mode,
            mode_used=mode_used,
            degraded=degraded,
            generalist_saw_image=bool(generalist_use and generalist_use.saw_image),
            moed=moed,
            rad=found.rad,
            specialists=tuple(s.provenance for s in found.specialists),
            registry_snapshot_version=catalog.snapshot_version,
            generalist=generalist_use,
            timings=StageTimings(
                decode_ms=found.decode_ms,
                specialists_ms=found.specialists_ms,
                retrieval_ms=found.retrieval_ms,
                generalist_ms=answer.ms,
                total_ms=_ms(started),
            ),
            warnings=tuple(warnings),
        )
        return Diagnosis(response, found.image_sha256)

    async def _ask_generalist(self, found: _Evidence, mode: Mode) -> _Answer:
        """The generalist's answer, calibrated and weighed by the policy that holds for it.

        ``use`` is None (and ``problem`` says why) when the ensemble must answer
        instead: the generalist failed, or its scores cannot be calibrated for
        the policy fitted on them.
        """
        task, labels = found.task, found.task.labels
        stage = time.perf_counter()
        png = (
            await self._in_pool(lambda: encode_png(found.decoded[3])) if found.sends_image else None
        )
        result, problem = await self._arbitrate(task, mode, found.moed, found.rad, png)
        generalist_ms = _ms(stage)
        if result is None:
            return _Answer(None, None, None, problem, generalist_ms)
        calibration = await self._calibration(task, mode, result)
        fitted = self.resolver.for_answer(task, mode, result.model)
        if fitted is not None and (result.scores is None or not calibration.content_free):
            # The policy weighs calibrated scores: without them, the ensemble answers.
            problem = (
                "the generalist's label scores could not be calibrated (no scores, or no "
                "content-free answer), so its fitted policy cannot weigh them"
            )
            return _Answer(None, None, None, problem, generalist_ms)
        if fitted is not None and fitted.label_bias is not None:
            calibration = dataclasses.replace(calibration, bias=fitted.label_bias)
        label, calibrated = _calibrated_answer(result, calibration)
        scores = calibrated
        weight = fitted.generalist_weight if fitted is not None else None
        if weight is not None and calibrated is not None:
            base = _base_scores(fitted, found.moed, found.ensemble, task)
            fused = fuse(base.tolist(), [calibrated[name] for name in labels], weight)
            label = _label_of(fused, task)
            scores = {name: float(p) for name, p in zip(labels, fused, strict=True)}
        use = GeneralistUse(
            model=result.model,
            saw_image=result.saw_image,
            prompt=result.prompt,
            raw_answer=result.raw_text[:2000],
            latency_ms=result.latency_ms,
            raw_scores=result.scores,
            calibration=calibration.method.value,
            calibrated_scores=calibrated,
            policy_weight=weight,
            overturned_ensemble=label != _label_of(found.ensemble, task),
            adapter_digest=self._adapter_digest(task.task_id, result.model),
            option_orders=result.option_orders,
            policy_base=fitted.base if fitted is not None else None,
        )
        return _Answer(label, scores, use, None, generalist_ms)

    async def evidence(
        self,
        *,
        task_id: str,
        image: bytes,
        media_type: MediaType | None = None,
        mode: Mode = Mode.GSCO,
        top_k: int = 5,
    ) -> tuple[TaskSpec, ArbitrationRequest]:
        """What the generalist would be asked about ``image`` in ``mode``, without asking it.

        The evidence of :meth:`diagnose` (every verified specialist of the task,
        the retrieval), as the :class:`generalist.ArbitrationRequest` the hub
        sends, without the image: what a site renders into its adapter-tuning
        examples with the hub's own prompt template.

        Raises:
            UnknownTaskError, ImageDecodeError, SpecialistRuntimeError: as diagnose.
            ValueError: ``mode`` does not ask the generalist.
        """
        if mode not in GENERALIST_MODES:
            raise ValueError(f"mode {mode.value!r} does not ask the generalist")
        found = await self._gather(
            self._catalog(), task_id, image, media_type, mode, top_k, for_generalist=False
        )
        return found.task, arbitration_request(found.task, mode, found.moed, found.rad, None)

    async def _gather(
        self,
        catalog: Catalog,
        task_id: str,
        image: bytes,
        media_type: MediaType | None,
        mode: Mode,
        top_k: int,
        *,
        for_generalist: bool,
    ) -> _Evidence:
        """Decodes, runs the specialists and retrieves: everything before the generalist."""
        task = catalog.task_spec(task_id)
        specialists, suspended = self.suspensions.admit(catalog.for_task(task_id))
        stage = time.perf_counter()
        channel_counts = {s.card.preprocessing.channels for s in specialists}
        sends_image = bool(
            for_generalist
            and mode in GENERALIST_MODES
            and self.generalist
            and self.generalist.sees_images
        )
        if sends_image:
            channel_counts.add(3)  # the generalist is sent an RGB PNG
        limits = self.options.decode_limits

        def decode() -> tuple[str, dict[int, NDArray[np.uint8]], dict[str, NDArray[np.float32]]]:
            # All of it in the pool: hashing, decoding and preprocessing cost CPU.
            decoded: dict[int, NDArray[np.uint8]] = {
                channels: decode_image_bytes(image, channels, media_type=media_type, limits=limits)
                for channels in channel_counts
            }
            inputs: dict[str, NDArray[np.float32]] = {}
            for s in specialists:
                key = s.preprocessing_key
                if key not in inputs:
                    pixels = decoded[s.card.preprocessing.channels][None]
                    inputs[key] = preprocess(pixels, s.card.preprocessing)
            return hashlib.sha256(image).hexdigest(), decoded, inputs

        retrieves = mode in _RETRIEVAL_MODES
        self._inbound[task_id] = self._inbound.get(task_id, 0) + 1
        try:
            image_sha256, decoded, inputs = await self._in_pool(decode)
            decode_ms = _ms(stage)
            stage = time.perf_counter()
            pending = [
                self._batcher(s).submit(inputs[s.preprocessing_key], top_k if retrieves else 0)
                for s in specialists
            ]
        finally:
            self._inbound[task_id] -= 1
        results = await asyncio.gather(*pending, return_exceptions=True)
        specialists_ms = _ms(stage)
        for specialist, result in zip(specialists, results, strict=True):
            if not isinstance(result, BaseException) or isinstance(result, SpecialistRuntimeError):
                self.suspensions.record(specialist, ok=not isinstance(result, BaseException))
        specialists, outputs, failed = _answered(specialists, results)
        left_out = suspended + failed

        labels = task.labels
        moed = tuple(
            SpecialistPrediction(
                specialist=s.provenance,
                label=labels[out.label_index],
                probability=max(out.values),
                probabilities=dict(zip(labels, out.values, strict=True)),
            )
            for s, out in zip(specialists, outputs, strict=True)
        )
        ensemble = np.mean([out.probabilities for out in outputs], axis=0)

        retrieval_ms = None
        rad: tuple[RetrievedCase, ...] = ()
        if retrieves:
            # Searched in the specialists' batches (one faiss call per batch); merged here.
            stage = time.perf_counter()
            rad = _merge_neighbours(specialists, outputs, top_k)
            retrieval_ms = max(out.search_ms for out in outputs) + _ms(stage)
        return _Evidence(
            task=task,
            specialists=specialists,
            image_sha256=image_sha256,
            decoded=decoded,
            sends_image=sends_image,
            moed=moed,
            rad=rad,
            ensemble=ensemble,
            decode_ms=decode_ms,
            specialists_ms=specialists_ms,
            retrieval_ms=retrieval_ms,
            left_out=left_out,
        )

    def _adapter_for(self, task_id: str, mode: Mode) -> ServedAdapter | None:
        """The task's adapter, if it learnt ``mode``'s prompts (else the base model answers)."""
        served = self.adapters.get(task_id)
        if served is None or mode not in served.card.training.prompt_modes:
            return None
        return served

    def _adapter_digest(self, task_id: str, model: str) -> str | None:
        """The digest of the adapter that answered (None: the base model did)."""
        served = self.adapters.get(task_id)
        return served.digest if served is not None and served.name == model else None

    def policy_in_service(self, task_id: str) -> ArbitrationPolicy | None:
        """The task's policy as it is applied (see :class:`hub._arbitration.PolicyResolver`)."""
        return self.resolver.in_service(task_id)

    async def _calibration(
        self, task: TaskSpec, mode: Mode, result: ArbitrationResult
    ) -> LabelCalibration:
        """The (task, template, model) contextual calibration, measured on first use."""
        generalist = self.generalist
        if generalist is None or result.scores is None:
            return LabelCalibration(task.labels)

        async def measure() -> dict[str, float] | None:
            # The content-free input: the same template with no evidence and no image.
            try:
                served = self._adapter_for(task.task_id, mode)
                content_free = ArbitrationRequest(
                    task=task, mode=mode, adapter=served.name if served else None
                )
                answer = await asyncio.wait_for(
                    generalist.arbitrate(content_free),
                    self.options.generalist_timeout_s,
                )
            except (TimeoutError, GeneralistError):
                return None
            return answer.scores

        key = (task.task_id, mode.value, result.model)
        return await self.calibrations.get(key, task.labels, measure)

    async def _arbitrate(
        self,
        task: TaskSpec,
        mode: Mode,
        moed: tuple[SpecialistPrediction, ...],
        rad: tuple[RetrievedCase, ...],
        image_png: bytes | None,
    ) -> tuple[ArbitrationResult | None, str]:
        """The generalist's decision, or ``None`` and why not."""
        if self.generalist is None:
            return None, "no generalist is configured"
        request = arbitration_request(task, mode, moed, rad, image_png)
        served = self._adapter_for(task.task_id, mode)
        if served is not None:
            request = dataclasses.replace(request, adapter=served.name)
        try:
            result = await asyncio.wait_for(
                self.generalist.arbitrate(request), self.options.generalist_timeout_s
            )
        except TimeoutError:
            return None, (
                f"the generalist did not answer within {self.options.generalist_timeout_s:g} s"
            )
        except GeneralistError as exc:
            return None, f"the generalist failed: {exc}"
        return result, ""


def arbitration_request(
    task: TaskSpec,
    mode: Mode,
    moed: tuple[SpecialistPrediction, ...],
    rad: tuple[RetrievedCase, ...],
    image_png: bytes | None,
) -> ArbitrationRequest:
    """The generalist's request for ``mode`` from the specialists' answers and the retrieval."""
    return ArbitrationRequest(
        task=task,
        mode=mode,
        moed=tuple(MoedEvidence(p.label, p.probability) for p in moed)
        if mode in (Mode.GSCO, Mode.MOED)
        else (),
        rad=tuple(RadEvidence(c.label, c.similarity) for c in rad),
        image_png=image_png,
    )


@dataclass(frozen=True)
class _Evidence:
    task: TaskSpec
    specialists: tuple[LoadedSpecialist, ...]
    image_sha256: str
    decoded: dict[int, NDArray[np.uint8]]
    sends_image: bool
    moed: tuple[SpecialistPrediction, ...]
    rad: tuple[RetrievedCase, ...]
    ensemble: NDArray[np.float64]
    decode_ms: float
    specialists_ms: float
    retrieval_ms: float | None
    left_out: tuple[str, ...] = ()  # specialists failed on the image or suspended: warnings


def _answered(
    specialists: tuple[LoadedSpecialist, ...],
    results: list[SpecialistOutput | BaseException],
) -> tuple[tuple[LoadedSpecialist, ...], list[SpecialistOutput], tuple[str, ...]]:
    """The specialists that answered, their outputs, and a warning for each that failed.

    One specialist that fails on an image (onnxruntime refused the run, it needed
    more than the hub's run memory or time) is left out of the answer, which says
    so, rather than failing every request of its task: one site's model cannot take
    a task down. The evidence a site builds its adapter examples from leaves it out
    the same way, so the examples are the prompts the hub would send. When every
    specialist failed, its error is raised. Anything else is a bug.
    """
    for result in results:
        if isinstance(result, BaseException) and not isinstance(result, SpecialistRuntimeError):
            raise result
    failed = [
        (s, r)
        for s, r in zip(specialists, results, strict=True)
        if isinstance(r, SpecialistRuntimeError)
    ]
    if failed and len(failed) == len(specialists):
        raise failed[0][1]
    for specialist, error in failed:
        log.warning("specialist %s left out of an answer: %s", specialist.bundle_digest[:12], error)
    kept = [
        (s, r) for s, r in zip(specialists, results, strict=True) if isinstance(r, SpecialistOutput)
    ]
    warnings = tuple(
        f"specialist {s.bundle_digest[:12]} ({s.card.site_id}) failed on this image and was "
        "left out"
        for s, _ in failed
    )
    return tuple(s for s, _ in kept), [r for _, r in kept], warnings


def _merge_neighbours(
    specialists: tuple[LoadedSpecialist, ...], outputs: list[SpecialistOutput], top_k: int
) -> tuple[RetrievedCase, ...]:
    """Each specialist's top-k in its own index, merged by similarity."""
    found = [(n, s) for s, out in zip(specialists, outputs, strict=True) for n in out.neighbours]
    found.sort(key=lambda pair: -pair[0].similarity)  # stable: ties keep the catalog's order
    return tuple(
        RetrievedCase(
            label=n.label,
            similarity=n.similarity,
            site_id=s.card.site_id,
            bundle_digest=s.bundle_digest,
        )
        for n, s in found[:top_k]
    )


def _calibrated_answer(
    result: ArbitrationResult, calibration: LabelCalibration
) -> tuple[str, dict[str, float] | None]:
    """The best calibrated label and the calibrated scores (the generated label without scores)."""
    if result.scores is None:
        return result.label, None
    scores = calibration.apply(result.scores)
    best = max(scores.values())
    if best - min(scores.values()) < 1e-9:  # no evidence either way: the model's own answer
        return result.label, scores
    return max(calibration.labels, key=lambda label: scores[label]), scores


def _base_scores(
    fitted: ModePolicy | None,
    moed: tuple[SpecialistPrediction, ...],
    ensemble: NDArray[np.float64],
    task: TaskSpec,
) -> NDArray[np.float64]:
    """What the policy weighs the generalist against: the vote's scores, or the ensemble."""
    if fitted is None or fitted.base != "voting" or task.task_type is TaskType.ORDINAL:
        return ensemble
    probabilities = np.array([[p.probabilities[label] for label in task.labels] for p in moed])
    return vote_scores(probabilities)


def _vote(
    moed: tuple[SpecialistPrediction, ...],
    task: TaskSpec,
    ensemble: NDArray[np.float64],
) -> tuple[str, dict[str, float]]:
    """The specialists' vote and the vote shares (``protocol.vote``).

    The plurality, ties to the higher mean probability; on ordinal tasks the median grade.
    """
    labels = task.labels
    index = {label: i for i, label in enumerate(labels)}
    predicted = [index[prediction.label] for prediction in moed]
    winner = labels[vote(predicted, len(labels), task.task_type, ensemble)]
    shares = np.bincount(predicted, minlength=len(labels)) / len(moed)
    return winner, {label: float(share) for label, share in zip(labels, shares, strict=True)}
