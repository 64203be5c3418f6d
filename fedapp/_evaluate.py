"""Evaluation on the untouched test split, through the real hub's HTTP API.

Every test image is sent once per hub mode. The ``ensemble`` answer also
carries each specialist's calibrated probabilities (its MoED evidence), which
give the per-site rows and the "best single specialist"; removing one site's
specialist from that evidence gives the ensemble and vote without it (how the
report measures a bad site's effect).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from protocol import (
    DiagnoseResponse,
    Mode,
    SpecialistProvenance,
    TaskType,
    decide,
    encode_png,
    vote,
)

__all__ = ["HUB_MODES", "Evaluation", "evaluate_through_hub", "policy_arrays", "specialist_name"]

#: The hub's modes, in the report's order.
HUB_MODES = (Mode.VOTING, Mode.ENSEMBLE, Mode.MOED, Mode.RAD, Mode.GENERALIST, Mode.GSCO)


@dataclass
class Evaluation:
    """Answers per test image, per method."""

    labels: tuple[str, ...]
    truth: NDArray[np.int64]
    predicted: dict[str, NDArray[np.int64]] = field(default_factory=dict)
    scores: dict[str, NDArray[np.float64] | None] = field(default_factory=dict)
    degraded: dict[str, int] = field(default_factory=dict)  # answers that fell back
    site_probs: dict[str, NDArray[np.float64]] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0
    generalist_model: str = ""
    # Generalist answers (not degraded), and how many of them were given with the image.
    generalist_answers: int = 0
    generalist_saw_image: int = 0
    # Per generalist mode: answers that differed from the ensemble's, and how many were right.
    overturned: dict[str, dict[str, int]] = field(default_factory=dict)
    task_type: TaskType = TaskType.MULTICLASS  # ordinal: median decisions, QWK and MAE

    def merge_adapter(self, adapted: Evaluation, modes: Sequence[Mode]) -> None:
        """Takes ``modes`` as answered with the tuned adapter in service, from ``adapted``.

        ``MODE (adapter)`` is the adapter's calibrated answer (no policy);
        ``MODE`` becomes the hub's answer with the adapter and its policy, as
        served; the base model's ``(zero-shot)`` and ``(calibrated)`` rows stay.
        """
        for mode in modes:
            name = mode.value
            self.predicted[f"{name} (adapter)"] = adapted.predicted[f"{name} (calibrated)"]
            self.scores[f"{name} (adapter)"] = adapted.scores.get(f"{name} (calibrated)")
            self.predicted[name] = adapted.predicted[name]
            self.scores[name] = adapted.scores.get(name)
            self.degraded[name] = adapted.degraded.get(name, 0)
            if name in adapted.overturned:
                self.overturned[name] = adapted.overturned[name]
        self.warnings.extend(adapted.warnings)
        self.seconds += adapted.seconds
        self.generalist_answers += adapted.generalist_answers
        self.generalist_saw_image += adapted.generalist_saw_image

    def without(self, site: str) -> tuple[NDArray[np.float64], NDArray[np.int64]]:
        """Ensemble probabilities and votes of every site but ``site`` (the hub's rules)."""
        others = [p for s, p in self.site_probs.items() if s != site]
        mean = np.mean(others, axis=0)
        k = mean.shape[1]
        decided = np.stack([decide(probs, self.task_type) for probs in others], axis=1)
        voted = [vote(list(row), k, self.task_type, mean[i]) for i, row in enumerate(decided)]
        return mean, np.asarray(voted, dtype=np.int64)


_GENERALIST_MODES = (Mode.GSCO, Mode.MOED, Mode.RAD, Mode.GENERALIST)


def _derived(
    evaluation: Evaluation,
    mode: Mode,
    responses: Sequence[DiagnoseResponse],
    index: dict[str, int],
) -> None:
    """The zero-shot and calibrated answers inside one mode's responses, and the overturns.

    Every answer carries the generalist's raw label scores, its calibrated
    ones and the ensemble's evidence, so one request per image gives the
    ablation: ``MODE (zero-shot)`` is the label the generalist generated,
    ``MODE (calibrated)`` the best calibrated label, and ``MODE`` the hub's
    answer (with the fitted policy when one is in service). A degraded answer
    counts as the ensemble's in every row, as the hub answered it.
    """
    labels = evaluation.labels
    zero_shot, calibrated = [], []
    zero_scores: list[list[float]] = []
    calibrated_scores: list[list[float]] = []
    complete = True
    for response in responses:
        used = response.generalist
        generated = used.raw_answer.strip() if used is not None else ""
        zero_shot.append(index.get(generated, index[response.label]))
        best = response.label
        if used is not None and used.calibrated_scores:
            best = max(labels, key=lambda name: used.calibrated_scores.get(name, 0.0))  # type: ignore[union-attr]
            calibrated_scores.append([used.calibrated_scores.get(name, 0.0) for name in labels])
        else:
            complete = False
        calibrated.append(index[best])
        raw = used.raw_scores if used is not None else None
        if raw:
            zero_scores.append([raw.get(name, 0.0) for name in labels])
    evaluation.predicted[f"{mode.value} (zero-shot)"] = np.array(zero_shot, dtype=np.int64)
    evaluation.scores[f"{mode.value} (zero-shot)"] = (
        np.asarray(zero_scores) if len(zero_scores) == len(responses) else None
    )
    evaluation.predicted[f"{mode.value} (calibrated)"] = np.array(calibrated, dtype=np.int64)
    evaluation.scores[f"{mode.value} (calibrated)"] = (
        np.asarray(calibrated_scores) if complete and responses else None
    )
    # The hub says which answers differ from the ensemble's; a degraded one is the ensemble's.
    flips = [
        i
        for i, r in enumerate(responses)
        if r.generalist is not None and r.generalist.overturned_ensemble
    ]
    truth = evaluation.truth
    evaluation.overturned[mode.value] = {
        "overturned": len(flips),
        "right": sum(int(index[responses[i].label] == truth[i]) for i in flips),
    }


def specialist_name(provenance: SpecialistProvenance) -> str:
    """``SITE``, or ``SITE (fedavg)`` for the shared specialist a site co-trained."""
    return provenance.site_id + (" (fedavg)" if provenance.federated else "")


def evaluate_through_hub(
    diagnose: Callable[[bytes, Mode], DiagnoseResponse],
    images: NDArray[np.uint8],
    truth: NDArray[np.int64],
    labels: Sequence[str],
    *,
    task_type: TaskType = TaskType.MULTICLASS,
    modes: Sequence[Mode] = HUB_MODES,
    concurrency: int = 4,
    on_image: Callable[[int], None] | None = None,
) -> Evaluation:
    """Diagnoses every image in every mode; ``diagnose(png, mode)`` calls the hub."""
    started = time.monotonic()
    index = {label: i for i, label in enumerate(labels)}
    k = len(labels)
    n = len(truth)
    evaluation = Evaluation(tuple(labels), np.asarray(truth, dtype=np.int64), task_type=task_type)
    answers: list[dict[Mode, DiagnoseResponse]] = [{} for _ in range(n)]

    def work(row: int) -> None:
        png = encode_png(images[row])
        for mode in modes:
            answers[row][mode] = diagnose(png, mode)
        if on_image is not None:
            on_image(row)

    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(work, range(n)))

    for mode in modes:
        responses = [answers[row][mode] for row in range(n)]
        evaluation.predicted[mode.value] = np.array(
            [index[r.label] for r in responses], dtype=np.int64
        )
        if all(r.scores is not None for r in responses):
            evaluation.scores[mode.value] = np.array(
                [[(r.scores or {}).get(label, 0.0) for label in labels] for r in responses]
            )
        else:
            evaluation.scores[mode.value] = None
        evaluation.degraded[mode.value] = sum(r.degraded for r in responses)
        for response in responses:
            evaluation.warnings.extend(response.warnings)
            if response.generalist is not None:
                evaluation.generalist_model = response.generalist.model
                evaluation.generalist_answers += 1
                evaluation.generalist_saw_image += int(response.generalist.saw_image)
        if mode in _GENERALIST_MODES:
            _derived(evaluation, mode, responses, index)
    reference = Mode.ENSEMBLE if Mode.ENSEMBLE in modes else modes[0]
    sites = sorted({specialist_name(p.specialist) for p in answers[0][reference].moed}) if n else []
    for site in sites:
        rows = []
        for row in range(n):
            found = [
                p for p in answers[row][reference].moed if specialist_name(p.specialist) == site
            ]
            probs = found[0].probabilities if found else {}
            rows.append([probs.get(label, 1.0 / k) for label in labels])
        evaluation.site_probs[site] = np.asarray(rows, dtype=np.float64)
    evaluation.seconds = time.monotonic() - started
    return evaluation


def policy_arrays(
    evaluation: Evaluation, modes: Sequence[Mode]
) -> tuple[NDArray[np.float64], dict[Mode, NDArray[np.float64]], NDArray[np.float64] | None]:
    """What a policy is fitted on, from an evaluation that asked ``ensemble`` and ``modes``.

    The ensemble's probabilities, each mode's calibrated generalist scores
    (modes without them for every case are left out) and each specialist's
    probabilities (``[n, N, K]``; ``None`` without specialists).
    """
    ensemble = evaluation.scores[Mode.ENSEMBLE.value]
    if ensemble is None:
        raise ValueError("the evaluation has no ensemble scores")
    calibrated = {
        mode: scores
        for mode in modes
        if (scores := evaluation.scores.get(f"{mode.value} (calibrated)")) is not None
    }
    specialists = (
        np.stack([evaluation.site_probs[s] for s in sorted(evaluation.site_probs)])
        if evaluation.site_probs
        else None
    )
    return ensemble, calibrated, specialists
