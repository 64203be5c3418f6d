"""Fitting the arbitration policy on validation evidence: in one place, or across sites.

Everything the fit needs (:mod:`hub._policy` says what the policy is) is a
sum over validation cases: the label counts, the class-balanced loss of the
label bias with its gradient and Hessian at a given bias, and, for each
candidate weight, how many cases the fused answer gets right and how many it
fixes and breaks against the base. So the cases need not meet. Each party
holding cases (a hospital, with its own validation split and its own
generalist scores) answers *questions* about them with sums and counts
(:meth:`PolicyEvidence.answer`); :func:`fit_policy_from_answers` asks its
questions through one callable that returns the parties' summed answers,
and fits from those. :func:`fit_policy` is the same fit with a single party
that holds every case, so there is one implementation, and the federated fit
gives the policy the pooled cases would (up to the order of floating-point
sums).

Questions (JSON objects; answers are JSON too):

``{"what": "counts"}``
    ``n``, ``labels`` (cases per label), ``ensemble`` and ``voting`` (cases
    the base answers right; ``voting`` is null where the vote is not a base),
    ``calibrated`` (per mode: the generalist's calibrated answer right).
``{"what": "bias", "label_totals": [...], "candidates": {mode: [[b...], ...]}}``
    per mode and candidate bias: the class-balanced loss, gradient and
    Hessian (sums over the party's cases, weighted by the pooled label
    totals, without the ridge).
``{"what": "weights", "biases": {mode: [b...] | null}, "weights": [...]}``
    per mode: the biased answer right (``biased``), and per base and weight
    ``[right, fixed, broken]`` against that base.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

from hub._policy import _fused_logs, _log, vote_scores, with_bias
from hub.errors import PolicyFitError
from protocol import ArbitrationPolicy, Mode, ModePolicy, TaskSpec, TaskType, calibrated_softmax

__all__ = [
    "BIAS_RIDGE",
    "POLICY_WEIGHTS",
    "SIGNIFICANCE",
    "Ask",
    "PolicyEvidence",
    "add_answers",
    "fit_label_bias",
    "fit_mode",
    "fit_policy",
    "fit_policy_from_answers",
]

#: The generalist weights a fit considers (0: the ensemble alone).
POLICY_WEIGHTS = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0)
#: The ridge on the label bias (per unit of class-balanced loss): a bias is not free.
BIAS_RIDGE = 1e-2
_BIAS_LIMIT = 20.0
#: The largest chance probability at which a weight's validation gain counts.
SIGNIFICANCE = 0.05
#: The backtracking line search's step sizes, 1 down to just above 1e-8 (Armijo).
_STEP_SIZES = tuple(2.0**-i for i in range(27))
_MAX_NEWTON_STEPS = 100
_MAX_CANDIDATES = len(_STEP_SIZES)
_MAX_WEIGHTS = 32

#: Puts one question to every party and returns their answers, summed (:func:`add_answers`).
Ask = Callable[[dict[str, Any]], dict[str, Any]]


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


def _weight_key(weight: float) -> str:
    return f"{weight:g}"


@dataclass(frozen=True)
class PolicyEvidence:
    """One party's validation cases for a policy fit; it answers with sums and counts only.

    ``ensemble`` and each of ``generalist``'s arrays are ``[N, K]`` label
    probabilities (the generalist's calibrated, by mode value), ``truth`` the
    ``N`` true label indices, ``voting`` the vote's scores (``None``: the
    vote is not a base, as on ordinal tasks).
    """

    ensemble: NDArray[np.float64]
    generalist: Mapping[str, NDArray[np.float64]]
    truth: NDArray[np.int64]
    voting: NDArray[np.float64] | None = None

    def __post_init__(self) -> None:
        n, k = self.ensemble.shape if self.ensemble.ndim == 2 else (-1, -1)
        if n < 0 or k < 2 or self.truth.shape != (n,):
            raise PolicyFitError(
                f"ensemble {self.ensemble.shape} and truth {self.truth.shape} do not fit together"
            )
        if n and (self.truth.min() < 0 or self.truth.max() >= k):
            raise PolicyFitError(f"a true label index is outside 0..{k - 1}")
        shaped = {"voting": self.voting} if self.voting is not None else {}
        for name, scores in {**shaped, **self.generalist}.items():
            if scores.shape != (n, k):
                raise PolicyFitError(f"{name} scores are {scores.shape}, expected {(n, k)}")

    @classmethod
    def of(
        cls,
        task: TaskSpec,
        ensemble: NDArray[np.float64],
        generalist: Mapping[Mode, NDArray[np.float64]],
        truth: NDArray[np.int64],
        specialists: NDArray[np.float64] | None = None,
    ) -> PolicyEvidence:
        """The evidence of ``task``; ``specialists`` (``[n, N, K]``) make the vote a base.

        Not on ordinal tasks, whose vote is a median grade.
        """
        voting = None
        if specialists is not None and task.task_type is not TaskType.ORDINAL:
            voting = vote_scores(specialists)
        return cls(
            np.asarray(ensemble, dtype=np.float64),
            {mode.value: np.asarray(s, dtype=np.float64) for mode, s in generalist.items()},
            np.asarray(truth, dtype=np.int64),
            voting,
        )

    @property
    def cases(self) -> int:
        return len(self.truth)

    def answer(self, question: Mapping[str, Any]) -> dict[str, Any]:
        """The answer to one question (see the module's docstring).

        Raises:
            PolicyFitError: the question is malformed, too large, or asks about
                a mode these cases have no scores for.
        """
        what = question.get("what")
        if what == "counts":
            return self._counts()
        if what == "bias":
            return self._bias(question.get("label_totals"), question.get("candidates"))
        if what == "weights":
            return self._weights(question.get("biases"), question.get("weights"))
        raise PolicyFitError(f"unknown question {str(what)[:40]!r}")

    # -- the three questions -------------------------------------------------------------

    def _counts(self) -> dict[str, Any]:
        k = self.ensemble.shape[1]
        truth = self.truth
        return {
            "n": self.cases,
            "labels": np.bincount(truth, minlength=k).tolist(),
            "ensemble": int((self.ensemble.argmax(axis=1) == truth).sum()),
            "voting": (
                int((self.voting.argmax(axis=1) == truth).sum())
                if self.voting is not None
                else None
            ),
            "calibrated": {
                mode: int((scores.argmax(axis=1) == truth).sum())
                for mode, scores in self.generalist.items()
            },
        }

    def _mode(self, mode: object) -> NDArray[np.float64]:
        scores = self.generalist.get(str(mode))
        if scores is None:
            raise PolicyFitError(f"no generalist scores for mode {str(mode)[:40]!r}")
        return scores

    def _vector(self, values: object, what: str) -> NDArray[np.float64]:
        k = self.ensemble.shape[1]
        try:
            vector = np.asarray(values, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise PolicyFitError(f"{what} is not a list of numbers") from exc
        if vector.shape != (k,) or not np.isfinite(vector).all():
            raise PolicyFitError(f"{what} must be {k} finite numbers")
        return vector

    def _bias(self, label_totals: object, candidates: object) -> dict[str, Any]:
        totals = self._vector(label_totals, "label_totals")
        if (totals < 0).any():
            raise PolicyFitError("label_totals must not be negative")
        if not isinstance(candidates, Mapping) or not candidates:
            raise PolicyFitError("candidates must map modes to lists of biases")
        truth = self.truth
        k = self.ensemble.shape[1]
        present = totals > 0
        mine = np.bincount(truth, minlength=k) > 0
        if (mine & ~present).any():
            raise PolicyFitError("label_totals say nobody has a label these cases have")
        weights = np.zeros(len(truth))
        if len(truth):
            weights = (1.0 / (present.sum() * np.where(present, totals, 1.0)))[truth]
        onehot = np.eye(k)[truth]
        answers: dict[str, Any] = {}
        for mode, listed in candidates.items():
            generalist = self._mode(mode)
            if not isinstance(listed, list) or not 0 < len(listed) <= _MAX_CANDIDATES:
                raise PolicyFitError(f"give 1 to {_MAX_CANDIDATES} candidate biases per mode")
            logs = _log(generalist)
            logs = logs - logs.mean(axis=1, keepdims=True)
            losses, gradients, hessians = [], [], []
            for candidate in listed:
                z = logs + self._vector(candidate, "a candidate bias")
                top = z.max(axis=1, keepdims=True)
                log_norm = top[:, 0] + np.log(np.exp(z - top).sum(axis=1))
                nll = log_norm - (z * onehot).sum(axis=1)
                p = calibrated_softmax(z)
                losses.append(float((weights * nll).sum()))
                gradients.append((weights[:, None] * (p - onehot)).sum(axis=0).tolist())
                hessian = np.diag((weights[:, None] * p).sum(axis=0)) - np.einsum(
                    "n,ni,nj->ij", weights, p, p
                )
                hessians.append(hessian.tolist())
            answers[str(mode)] = {"loss": losses, "gradient": gradients, "hessian": hessians}
        return answers

    def _weights(self, biases: object, weights: object) -> dict[str, Any]:
        if not isinstance(biases, Mapping) or not biases:
            raise PolicyFitError("biases must map modes to a bias or null")
        if not isinstance(weights, list) or not 0 < len(weights) <= _MAX_WEIGHTS:
            raise PolicyFitError(f"give 1 to {_MAX_WEIGHTS} weights")
        try:
            candidates = [float(w) for w in weights]
        except (TypeError, ValueError) as exc:
            raise PolicyFitError("weights must be numbers") from exc
        if not all(math.isfinite(w) and w >= 0 for w in candidates):
            raise PolicyFitError("weights must be finite and not negative")
        truth = self.truth
        bases = {"ensemble": self.ensemble, "voting": self.voting}
        answers: dict[str, Any] = {}
        for mode, bias in biases.items():
            generalist = self._mode(mode)
            if bias is not None:
                generalist = with_bias(generalist, tuple(self._vector(bias, "a bias")))
            per_base: dict[str, Any] = {}
            for name, base in bases.items():
                if base is None:
                    per_base[name] = None
                    continue
                base_right = base.argmax(axis=1) == truth
                per_weight = {}
                for weight in candidates:
                    right = _fused_logs(base, generalist, weight).argmax(axis=1) == truth
                    per_weight[_weight_key(weight)] = [
                        int(right.sum()),
                        int((right & ~base_right).sum()),
                        int((base_right & ~right).sum()),
                    ]
                per_base[name] = per_weight
            answers[str(mode)] = {
                "biased": int((generalist.argmax(axis=1) == truth).sum()),
                "bases": per_base,
            }
        return answers


def add_answers(first: Any, second: Any) -> Any:
    """Two parties' answers to one question, summed (numbers, and lists element by element).

    Raises:
        PolicyFitError: the answers differ in shape (keys, lengths, or a null
            against a number).
    """
    if first is None or second is None:
        if first is None and second is None:
            return None
        raise PolicyFitError("the sites' answers differ: a value is missing from one")
    if isinstance(first, Mapping) and isinstance(second, Mapping):
        if set(first) != set(second):
            raise PolicyFitError("the sites' answers differ in their keys")
        return {key: add_answers(first[key], second[key]) for key in first}
    if isinstance(first, list) and isinstance(second, list):
        if len(first) != len(second):
            raise PolicyFitError("the sites' answers differ in length")
        return [add_answers(a, b) for a, b in zip(first, second, strict=True)]
    numbers = (int, float)
    if (
        isinstance(first, numbers)
        and isinstance(second, numbers)
        and not isinstance(first, bool)
        and not isinstance(second, bool)
    ):
        return first + second
    raise PolicyFitError("an answer holds something other than numbers, lists and objects")


def _fit_biases(
    ask: Ask, modes: Sequence[str], totals: Sequence[int], ridge: float
) -> dict[str, tuple[float, ...] | None]:
    """Each mode's label bias by Newton's method on the summed answers (see fit_label_bias).

    One question per Newton step for all modes still moving: the loss,
    gradient and Hessian at every step size of the line search at once, so
    the accepted candidate's derivatives are already known.
    """
    k = len(totals)
    if sum(t > 0 for t in totals) < 2 or not modes:
        return dict.fromkeys(modes)

    def question(candidates: Mapping[str, list[NDArray[np.float64]]]) -> dict[str, Any]:
        return {
            "what": "bias",
            "label_totals": list(totals),
            "candidates": {m: [c.tolist() for c in cs] for m, cs in candidates.items()},
        }

    def regularised(
        answer: Mapping[str, Any], i: int, bias: NDArray[np.float64]
    ) -> tuple[float, NDArray[np.float64], NDArray[np.float64]]:
        return (
            float(answer["loss"][i]) + ridge * float(bias @ bias),
            np.asarray(answer["gradient"][i], dtype=np.float64) + 2 * ridge * bias,
            np.asarray(answer["hessian"][i], dtype=np.float64),
        )

    bias = {m: np.zeros(k) for m in modes}
    first = ask(question({m: [bias[m]] for m in modes}))
    current = {m: regularised(_of(first, m), 0, bias[m]) for m in modes}
    moving = list(modes)
    for _ in range(_MAX_NEWTON_STEPS):
        if not moving:
            break
        steps = {}
        for m in moving:
            _, gradient, hessian = current[m]
            steps[m] = np.linalg.solve(hessian + 2 * ridge * np.eye(k), gradient)
        candidates = {
            m: [np.clip(bias[m] - s * steps[m], -_BIAS_LIMIT, _BIAS_LIMIT) for s in _STEP_SIZES]
            for m in moving
        }
        answers = ask(question(candidates))
        still = []
        for m in moving:
            loss, gradient, _ = current[m]
            drop = float(gradient @ steps[m])
            answer = _of(answers, m)
            for i, size in enumerate(_STEP_SIZES):
                found = regularised(answer, i, candidates[m][i])
                if found[0] <= loss - 1e-4 * size * drop:  # Armijo
                    break
            else:
                continue  # no step decreases the loss: converged
            moved = float(np.abs(candidates[m][i] - bias[m]).max())
            bias[m], current[m] = candidates[m][i], found
            if moved >= 1e-9:
                still.append(m)
        moving = still
    return {m: tuple(round(float(b), 6) for b in bias[m] - bias[m].mean()) for m in modes}


def _of(answer: Mapping[str, Any], key: str) -> Any:
    found = answer.get(key) if isinstance(answer, Mapping) else None
    if found is None:
        raise PolicyFitError(f"the answers say nothing about {key!r}")
    return found


def _mode_policy(
    counts: Mapping[str, Any],
    mode: str,
    stats: Mapping[str, Any],
    bias: tuple[float, ...] | None,
    weights: Sequence[float],
) -> ModePolicy:
    """One mode's policy from the summed counts (the rules of :func:`fit_mode`)."""
    n = int(counts["n"])
    ensemble_correct = int(counts["ensemble"])
    voting = counts.get("voting")
    vote_correct = int(voting) if voting is not None else None
    base_name: Literal["ensemble", "voting"] = "ensemble"
    base_correct = ensemble_correct
    if vote_correct is not None and vote_correct >= ensemble_correct:
        base_name, base_correct = "voting", vote_correct
    tried_counts = _of(_of(stats, "bases"), base_name)
    tried: dict[str, float] = {}
    best_weight, best_correct = 0.0, base_correct
    gate_p = 1.0  # of the weight trusted, or else of the most accurate one
    leading = base_correct
    for weight in sorted(weights):
        correct, fixed, broken = (int(v) for v in _of(tried_counts, _weight_key(weight)))
        tried[_weight_key(weight)] = correct / n
        if weight <= 0:
            continue
        # Trusted only when it beats the base beyond chance on validation (McNemar's
        # exact one-sided test on the cases it fixed and broke), and beats smaller weights.
        p = _mcnemar_p(fixed, broken)
        if correct > best_correct and p <= SIGNIFICANCE:
            best_weight, best_correct, gate_p = weight, correct, p
        elif best_weight == 0 and correct > leading:
            gate_p = p
        leading = max(leading, correct)
    accuracy = {
        "ensemble": ensemble_correct / n,
        **({"voting": vote_correct / n} if vote_correct is not None else {}),
        "generalist (calibrated)": int(_of(counts, "calibrated")[mode]) / n,
        **({"generalist (calibrated+bias)": int(stats["biased"]) / n} if bias is not None else {}),
        "policy": best_correct / n,
    }
    return ModePolicy(
        generalist_weight=best_weight,
        base=base_name,
        validation_accuracy=accuracy,
        weights_tried=tried,
        gate_p_value=round(gate_p, 6),
        label_bias=bias,
    )


def _mode_policies(
    ask: Ask,
    modes: Sequence[str],
    *,
    weights: Sequence[float],
    label_bias: bool,
    ridge: float = BIAS_RIDGE,
) -> tuple[dict[str, Any], dict[str, ModePolicy]]:
    """The summed counts and each mode's policy, from the parties' answers."""
    counts = ask({"what": "counts"})
    if int(_of(counts, "n")) < 1:
        raise PolicyFitError("no validation cases to fit a policy on")
    if not weights or len(weights) > _MAX_WEIGHTS:
        raise PolicyFitError(f"give 1 to {_MAX_WEIGHTS} candidate weights")
    totals = [int(t) for t in _of(counts, "labels")]
    biases = _fit_biases(ask, modes, totals, ridge) if label_bias else dict.fromkeys(modes)
    if not modes:
        return counts, {}
    stats = ask(
        {
            "what": "weights",
            "biases": {m: list(b) if b is not None else None for m, b in biases.items()},
            "weights": [float(w) for w in weights],
        }
    )
    return counts, {m: _mode_policy(counts, m, _of(stats, m), biases[m], weights) for m in modes}


def fit_policy_from_answers(
    task: TaskSpec,
    ask: Ask,
    modes: Sequence[Mode],
    *,
    model: str,
    weights: Sequence[float] = POLICY_WEIGHTS,
    label_bias: bool = True,
) -> ArbitrationPolicy:
    """The policy of ``task`` from the answers of every party holding validation cases.

    ``ask`` puts a question (a JSON object) to every party and returns their
    answers summed with :func:`add_answers`; each party answers with
    :meth:`PolicyEvidence.answer`. The result is what :func:`fit_policy` gives
    on the parties' cases pooled.

    Raises:
        PolicyFitError: no cases, or the answers do not fit the questions.
    """
    counts, fitted = _mode_policies(
        ask, [m.value for m in modes], weights=weights, label_bias=label_bias
    )
    n = int(counts["n"])
    best = max(
        fitted.items(),
        key=lambda item: (item[1].validation_accuracy["policy"], -item[1].generalist_weight),
        default=None,
    )
    plain = int(counts["ensemble"]) / n
    recommended = Mode.ENSEMBLE
    if best is not None and best[1].validation_accuracy["policy"] > plain:
        recommended = Mode(best[0])
    return ArbitrationPolicy(
        task_id=task.task_id,
        labels=task.labels,
        model=model[:200],
        fitted_on="validation",
        n_examples=n,
        modes={Mode(m): p for m, p in fitted.items()},
        recommended_mode=recommended,
    )


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
    generalist = np.asarray(generalist, dtype=np.float64)
    truth = np.asarray(truth, dtype=np.int64)
    if len(truth) == 0:
        return None
    evidence = PolicyEvidence(generalist, {"q": generalist}, truth)
    totals = np.bincount(truth, minlength=generalist.shape[1]).tolist()
    return _fit_biases(evidence.answer, ["q"], totals, ridge)["q"]


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
    vote (:func:`hub.vote_scores`) unless their mean probabilities (the
    ensemble) answer strictly more validation cases right. Where validation
    cannot tell them apart, the vote, which holds each site to one vote: a
    single site whose specialist is confidently wrong (shifted, miscalibrated
    or faulty) cannot decide alone. The generalist's weight is then trusted
    only when it beats that base beyond chance.

    Args:
        ensemble: ``[N, K]`` the specialists' mean calibrated probabilities.
        generalist: ``[N, K]`` the generalist's (contextually) calibrated label scores
            in that mode.
        truth: ``[N]`` the true label indices.
        voting: ``[N, K]`` the vote's scores (:func:`hub.vote_scores`); None: the
            ensemble is the base (ordinal tasks, whose vote is a median grade).
        weights: the candidate generalist weights.
        label_bias: whether to fit a label bias (:func:`fit_label_bias`) first.
    """
    evidence = PolicyEvidence(
        np.asarray(ensemble, dtype=np.float64),
        {"mode": np.asarray(generalist, dtype=np.float64)},
        np.asarray(truth, dtype=np.int64),
        None if voting is None else np.asarray(voting, dtype=np.float64),
    )
    _, fitted = _mode_policies(evidence.answer, ["mode"], weights=weights, label_bias=label_bias)
    return fitted["mode"]


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
    be the base (:func:`fit_mode`); not on ordinal tasks. The fit of
    :func:`fit_policy_from_answers` with one party holding every case.
    """
    evidence = PolicyEvidence.of(task, ensemble, generalist, truth, specialists)
    return fit_policy_from_answers(
        task, evidence.answer, list(generalist), model=model, weights=weights, label_bias=label_bias
    )
