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
(:mod:`hub._policy_fit`, which also fits across sites whose cases never
meet) chooses ``w`` from a small grid by validation accuracy, and only a weight
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
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from hub.errors import HubConfigError
from protocol import ArbitrationPolicy, GscoError, TaskSpec, calibrated_softmax

__all__ = [
    "fuse",
    "load_policies",
    "vote_scores",
    "with_bias",
    "with_modes_of",
]

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


def with_bias(generalist: NDArray[np.float64], bias: Sequence[float] | None) -> NDArray[np.float64]:
    """``generalist``'s probabilities (``[N, K]``) times ``exp(bias)``, renormalised."""
    if bias is None:
        return generalist
    return calibrated_softmax(_log(generalist) + np.asarray(bias, dtype=np.float64))


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
