"""The per-task arbitration policy: how far the generalist is trusted against the specialists.

The hub does not trust a generalist blindly. For each task a policy fitted on
validation evidence (never on test) says, per generalist mode, what the
specialists answer on their own (the *base*) and how much the generalist's
calibrated label scores weigh against it::

    answer = argmax_k  log p_base[k] + w * log q_generalist[k]

The base is the specialists' vote (:func:`vote_scores`: the plurality
decides, the mean probability breaks ties and ranks) unless their mean
probabilities, the ensemble, answered strictly more validation cases right.
Validation often cannot tell them apart: calibrated specialists trained on
the same kind of data rarely disagree on cases like those they were
calibrated on. They part ways where a site's specialist is confidently
wrong, which is what a shifted population (PneumoniaMNIST's test split has
twice the validation split's share of normal images) or a faulty site
brings, and there the vote, holding each site to one vote, is the safer.

``w = 0`` is the base itself: a generalist that does not help cannot make
answers worse than the specialists did on validation. :func:`fit_policy`
chooses ``w`` from a small grid by validation accuracy, and only a weight
whose gain over the base is beyond chance (McNemar's exact test on the
cases it fixed and broke, one-sided, at ``SIGNIFICANCE``) is ever chosen:
a few lucky validation cases are not evidence. It records what each
candidate scored and the gate's p-value.

Before the weight, :func:`fit_label_bias` fits a per-label log bias ``b`` to
the generalist's contextually calibrated scores on the same cases,
``q' ∝ q · exp(b)`` (calibration ``contextual+bias``): a correction of the
label preference contextual calibration leaves behind. It is fitted with a
class-balanced loss, so that it removes the model's preference for a label
without learning the validation split's prevalence, which a hospital's
patients need not share.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal

import numpy as np
from numpy.typing import NDArray

from hub.errors import HubConfigError
from protocol import (
    ArbitrationPolicy,
    GscoError,
    Mode,
    ModePolicy,
    TaskSpec,
    TaskType,
    calibrated_softmax,
)

__all__ = [
    "POLICY_WEIGHTS",
    "SIGNIFICANCE",
    "fit_label_bias",
    "fit_mode",
    "fit_policy",
    "fuse",
    "load_policies",
    "vote_scores",
    "with_bias",
    "with_modes_of",
]

#: The generalist weights a fit considers (0: the ensemble alone).
POLICY_WEIGHTS = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0)
_FLOOR = 1e-6


def _log(values: NDArray[np.float64]) -> NDArray[np.float64]:
    return np.log(np.clip(values, _FLOOR, None))


def _fused_logs(
    ensemble: Sequence[float] | NDArray[np.float64],
    generalist: Sequence[float] | NDArray[np.float64] | None,
    weight: float,
) -> NDArray[np.float64]:
    """``log p_ensemble + weight * log q_generalist``, over the last axis (one case or many)."""
    logs = _log(np.asarray(ensemble, dtype=np.float64))
    if generalist is not None and weight > 0:
        logs = logs + weight * _log(np.asarray(generalist, dtype=np.float64))
    return logs


def fuse(
    ensemble: Sequence[float], generalist: Sequence[float] | None, weight: float
) -> NDArray[np.float64]:
    """The fused label probabilities of one case (label order of the task)."""
    logs = _fused_logs(ensemble, generalist, weight)
    fused = np.exp(logs - logs.max())
    return np.asarray(fused / fused.sum(), dtype=np.float64)


#: The ridge on the label bias (per unit of class-balanced loss): a bias is not free.
BIAS_RIDGE = 1e-2
_BIAS_LIMIT = 20.0


def fit_label_bias(
    generalist: NDArray[np.float64], truth: NDArray[np.int64], *, ridge: float = BIAS_RIDGE
) -> tuple[float, ...] | None:
    """The per-label log bias that best corrects ``generalist``'s scores on validation.

    Minimises the class-balanced cross-entropy of ``softmax(log q + b)`` (each
    label present in ``truth`` weighs the same, whatever its count) plus
    ``ridge · |b|²``, by Newton's method: convex, so the answer does not
    depend on a starting point or a step size. ``b`` sums to zero.

    Args:
        generalist: ``[N, K]`` calibrated label probabilities.
        truth: ``[N]`` true label indices.
        ridge: the weight of ``|b|²`` in the loss.

    Returns:
        ``K`` biases, or ``None`` when fewer than two labels occur in ``truth``
        (nothing to balance).
    """
    n, k = generalist.shape
    counts = np.bincount(truth, minlength=k).astype(np.float64)
    present = counts > 0
    if n == 0 or int(present.sum()) < 2:
        return None
    logs = _log(generalist)
    logs = logs - logs.mean(axis=1, keepdims=True)
    weights = (1.0 / (present.sum() * counts))[truth]  # each present label sums to 1/|present|
    onehot = np.eye(k)[truth]

    def loss(b: NDArray[np.float64]) -> float:
        z = logs + b
        top = z.max(axis=1, keepdims=True)
        log_norm = top[:, 0] + np.log(np.exp(z - top).sum(axis=1))
        nll = log_norm - (z * onehot).sum(axis=1)
        return float((weights * nll).sum() + ridge * (b @ b))

    bias = np.zeros(k)
    current = loss(bias)
    for _ in range(100):
        p = calibrated_softmax(logs + bias)
        gradient = (weights[:, None] * (p - onehot)).sum(axis=0) + 2 * ridge * bias
        hessian = np.diag((weights[:, None] * p).sum(axis=0)) - np.einsum(
            "n,ni,nj->ij", weights, p, p
        )
        step = np.linalg.solve(hessian + 2 * ridge * np.eye(k), gradient)
        # Backtracking (Armijo): a full Newton step overshoots where the scores saturate.
        size = 1.0
        while size > 1e-8:
            candidate = np.clip(bias - size * step, -_BIAS_LIMIT, _BIAS_LIMIT)
            found = loss(candidate)
            if found <= current - 1e-4 * size * float(gradient @ step):
                break
            size /= 2
        else:
            break
        moved = float(np.abs(candidate - bias).max())
        bias, current = candidate, found
        if moved < 1e-9:
            break
    bias -= bias.mean()
    return tuple(round(float(b), 6) for b in bias)


def with_bias(generalist: NDArray[np.float64], bias: Sequence[float] | None) -> NDArray[np.float64]:
    """``generalist``'s probabilities (``[N, K]``) times ``exp(bias)``, renormalised."""
    if bias is None:
        return generalist
    return calibrated_softmax(_log(generalist) + np.asarray(bias, dtype=np.float64))


#: The largest chance probability at which a weight's validation gain counts.
SIGNIFICANCE = 0.05


def _mcnemar_p(fixed: int, broken: int) -> float:
    """One-sided exact McNemar p-value: the chance of ``fixed`` or more of ``fixed + broken``.

    ``fixed``: cases the fused answer got right and the base wrong;
    ``broken``: the reverse. Under the null (no better than the base)
    each discordant case is a fair coin.
    """
    n = fixed + broken
    if n == 0:
        return 1.0
    return min(1.0, float(sum(math.comb(n, k) for k in range(fixed, n + 1)) / 2**n))


def vote_scores(probabilities: NDArray[np.float64]) -> NDArray[np.float64]:
    """The specialists' plurality vote as label scores: ``(votes + mean) / (n + 1)``.

    ``probabilities`` is ``[n, ..., K]``: each of ``n`` specialists'
    calibrated probabilities (one case ``[n, K]``, or many ``[n, N, K]``).
    The scores sum to 1; their argmax is the label with the most votes, ties
    broken by the mean probability (``protocol.vote``'s rule), because one
    more vote outweighs any difference of means; among labels with as many
    votes, they rank by the mean. So the vote keeps the ensemble's ranking
    where the votes are equal, and no one specialist can outvote the others
    by being confident.
    """
    n, k = probabilities.shape[0], probabilities.shape[-1]
    votes = (probabilities.argmax(axis=-1)[..., None] == np.arange(k)).sum(axis=0)
    return np.asarray((votes + probabilities.mean(axis=0)) / (n + 1), dtype=np.float64)


def fit_mode(
    ensemble: NDArray[np.float64],
    generalist: NDArray[np.float64],
    truth: NDArray[np.int64],
    *,
    voting: NDArray[np.float64] | None = None,
    weights: Sequence[float] = POLICY_WEIGHTS,
    label_bias: bool = True,
) -> ModePolicy:
    """One mode's base, label bias and generalist weight from validation evidence.

    The base is what the specialists answer without the generalist: their
    vote (:func:`vote_scores`) unless their mean probabilities (the ensemble)
    answer strictly more validation cases right. Where validation cannot
    tell them apart, the vote, which holds each site to one vote: a single
    site whose specialist is confidently wrong (shifted, miscalibrated or
    faulty) cannot decide alone. The generalist's weight is then trusted only
    when it beats that base beyond chance.

    Args:
        ensemble: ``[N, K]`` the specialists' mean calibrated probabilities.
        generalist: ``[N, K]`` the generalist's (contextually) calibrated label scores
            in that mode.
        truth: ``[N]`` the true label indices.
        voting: ``[N, K]`` the vote's scores (:func:`vote_scores`); None: the
            ensemble is the base (ordinal tasks, whose vote is a median grade).
        weights: the candidate generalist weights.
        label_bias: whether to fit a label bias (:func:`fit_label_bias`) first.
    """
    n = len(truth)
    calibrated_accuracy = float((generalist.argmax(axis=1) == truth).mean())
    bias = fit_label_bias(generalist, truth) if label_bias else None
    generalist = with_bias(generalist, bias)
    ensemble_correct = int((ensemble.argmax(axis=1) == truth).sum())
    vote_correct = int((voting.argmax(axis=1) == truth).sum()) if voting is not None else -1
    base_name: Literal["ensemble", "voting"] = "ensemble"
    base = ensemble
    if voting is not None and vote_correct >= ensemble_correct:
        base_name, base = "voting", voting
    tried: dict[str, float] = {}
    base_right = base.argmax(axis=1) == truth
    base_correct = int(base_right.sum())
    best_weight, best_correct = 0.0, base_correct
    gate_p = 1.0  # of the weight trusted, or else of the most accurate one
    leading = base_correct
    for weight in sorted(weights):
        right = _fused_logs(base, generalist, weight).argmax(axis=1) == truth
        correct = int(right.sum())
        tried[f"{weight:g}"] = correct / n
        if weight <= 0:
            continue
        # Trusted only when it beats the base beyond chance on validation (McNemar's
        # exact one-sided test on the cases it fixed and broke), and beats smaller weights.
        p = _mcnemar_p(int((right & ~base_right).sum()), int((base_right & ~right).sum()))
        if correct > best_correct and p <= SIGNIFICANCE:
            best_weight, best_correct, gate_p = weight, correct, p
        elif best_weight == 0 and correct > leading:
            gate_p = p
        leading = max(leading, correct)
    return ModePolicy(
        generalist_weight=best_weight,
        base=base_name,
        validation_accuracy={
            "ensemble": ensemble_correct / n,
            **({"voting": vote_correct / n} if voting is not None else {}),
            "generalist (calibrated)": calibrated_accuracy,
            **(
                {"generalist (calibrated+bias)": float((generalist.argmax(axis=1) == truth).mean())}
                if bias is not None
                else {}
            ),
            "policy": best_correct / n,
        },
        weights_tried=tried,
        gate_p_value=round(gate_p, 6),
        label_bias=bias,
    )


def fit_policy(
    task: TaskSpec,
    ensemble: NDArray[np.float64],
    generalist: Mapping[Mode, NDArray[np.float64]],
    truth: NDArray[np.int64],
    *,
    model: str,
    specialists: NDArray[np.float64] | None = None,
    weights: Sequence[float] = POLICY_WEIGHTS,
    label_bias: bool = True,
) -> ArbitrationPolicy:
    """The policy of ``task``: one base and weight per generalist mode, fitted on validation.

    ``generalist`` holds each mode's ``[N, K]`` calibrated scores for the same
    ``N`` validation cases as ``ensemble`` and ``truth``; ``specialists``
    (``[n, N, K]``, each specialist's calibrated probabilities) lets the vote
    be the base (:func:`fit_mode`); not on ordinal tasks.
    """
    voting = None
    if specialists is not None and task.task_type is not TaskType.ORDINAL:
        voting = vote_scores(specialists)
    modes = {
        mode: fit_mode(
            ensemble, scores, truth, voting=voting, weights=weights, label_bias=label_bias
        )
        for mode, scores in generalist.items()
    }
    best = max(
        modes.items(),
        key=lambda item: (item[1].validation_accuracy["policy"], -item[1].generalist_weight),
        default=None,
    )
    plain = float((ensemble.argmax(axis=1) == truth).mean())
    recommended = Mode.ENSEMBLE
    if best is not None and best[1].validation_accuracy["policy"] > plain:
        recommended = best[0]
    return ArbitrationPolicy(
        task_id=task.task_id,
        labels=task.labels,
        model=model[:200],
        fitted_on="validation",
        n_examples=len(truth),
        modes=modes,
        recommended_mode=recommended,
    )


def with_modes_of(policy: ArbitrationPolicy, other: ArbitrationPolicy) -> ArbitrationPolicy:
    """``policy`` with ``other``'s modes in place of its own, each naming ``other``'s model.

    How a policy fitted for an adapter (on the modes it learnt) joins the base
    model's policy of the same task: every mode keeps the generalist it was
    fitted on.

    Raises:
        ValueError: the two are for different tasks or label sets.
    """
    if (policy.task_id, policy.labels) != (other.task_id, other.labels):
        raise ValueError("the policies are for different tasks or label sets")
    modes = dict(policy.modes)
    for mode, fitted in other.modes.items():
        modes[mode] = fitted.model_copy(update={"model": fitted.model or other.model})
    return policy.model_copy(update={"modes": modes})


def load_policies(
    path: Path, tasks: Mapping[str, TaskSpec] | None = None
) -> dict[str, ArbitrationPolicy]:
    """Policies by task from a JSON file (one policy, or a list of them).

    Raises:
        HubConfigError: unreadable, malformed, or two policies for one task.
    """
    try:
        document = json.loads(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise HubConfigError(f"cannot read the policy file {path}: {exc}") from exc
    items = document if isinstance(document, list) else [document]
    policies: dict[str, ArbitrationPolicy] = {}
    for item in items:
        try:
            policy = ArbitrationPolicy.parse(item if isinstance(item, dict) else {})
        except GscoError as exc:
            raise HubConfigError(f"policy file {path}: {exc}") from exc
        if policy.task_id in policies:
            raise HubConfigError(f"policy file {path}: two policies for task {policy.task_id}")
        policies[policy.task_id] = policy
    return policies
