"""Fitting the arbitration policy on validation evidence: in one place, or across sites.

Everything the fit needs (:mod:`hub._policy` says what the policy is) is a
sum over validation cases: the label counts, the class-balanced loss of the
label bias with its gradient and Hessian at a given bias, and, for each
candidate weight, how many cases the fused answer gets right and how many it
fixes and breaks against the base. So the cases need not meet. Each party
holding cases (a hospital, with its own validation split and its own
generalist scores) answers *questions* about them with sums and counts
(:meth:`PolicyEvidence.answer`); :func:`fit_policy_from_answers` asks its
questions through one callable that returns each party's answer, and fits
from those. :func:`fit_policy` is the same fit with a single party that holds
every case, so there is one implementation.

Across sites, every answer is untrusted: a site could claim cases it does not
have, or counts that no cases could give, to move the policy. So each answer
is checked before it counts (:class:`_Checks`): integers where counts are
due, within the site's own ``n``; ``n`` within what the site declared before
the fit; label counts that sum to ``n``; per weight, ``right = base + fixed -
broken``; loss, gradient and Hessian of the bias within what ``n`` cases with
those labels can produce. A site whose answer fails is excluded and named
(``ArbitrationPolicy.sites_excluded``), and the fit starts again without it,
or ends in :class:`PolicyFitError` when nobody is left: never a crash. And no
site decides alone: a weight above 0 needs a majority of the sites (at least
two) to have seen it help on their own cases, and its gain must pass the gate
with any one site's answers left out; so must the ensemble's over the vote.

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

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

from hub._policy import _FLOOR, _fused_logs, _log, vote_scores, with_bias
from hub.errors import PolicyFitError
from protocol import (
    POLICY_WEIGHTS,
    SIGNIFICANCE,
    ArbitrationPolicy,
    Mode,
    ModePolicy,
    TaskSpec,
    TaskType,
    bias_limit,
    calibrated_softmax,
)

__all__ = [
    "BIAS_RIDGE",
    "POLICY_WEIGHTS",
    "SIGNIFICANCE",
    "Ask",
    "PolicyEvidence",
    "fit_label_bias",
    "fit_mode",
    "fit_policy",
    "fit_policy_from_answers",
]

log = logging.getLogger(__name__)

#: The ridge on the label bias (per unit of class-balanced loss): a bias is not free.
BIAS_RIDGE = 1e-2
#: The backtracking line search's step sizes, 1 down to just above 1e-8 (Armijo).
_STEP_SIZES = tuple(2.0**-i for i in range(27))
_MAX_NEWTON_STEPS = 100
_MAX_CANDIDATES = len(_STEP_SIZES)
_MAX_WEIGHTS = 32
#: The most cases one party may say it holds (its declaration bounds it further).
_MAX_CASES = 10**7
#: The party name of a fit in one place (never recorded in the policy).
_LOCAL = "local"

#: Puts one question to the named parties; returns each one's answer (JSON), by party.
#: A party missing from the result did not answer (it is excluded and named).
Ask = Callable[[dict[str, Any], Sequence[str]], Mapping[str, Any]]


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


class _InconsistentAnswerError(Exception):
    """One party's answer fails a check: it is excluded and the fit goes on without it."""

    def __init__(self, party: str, reason: str) -> None:
        super().__init__(reason)
        self.party = party
        self.reason = reason[:300]


def _count(value: object, low: int, high: int, what: str) -> int:
    """An integer within ``[low, high]`` (never a bool, a float or a string)."""
    if type(value) is not int or not low <= value <= high:
        raise ValueError(f"{what} is {str(value)[:30]}, not an integer in {low}..{high}")
    return value


def _numbers(value: object, shape: tuple[int, ...], what: str) -> NDArray[np.float64]:
    """A finite float array of ``shape`` from nested JSON lists of numbers."""

    def plain(item: object) -> bool:
        if isinstance(item, list):
            return all(plain(x) for x in item)
        return type(item) in (int, float)

    if not plain(value):
        raise ValueError(f"{what} must hold numbers only")
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError, OverflowError) as exc:
        raise ValueError(f"{what} is not an array of numbers") from exc
    if array.shape != shape or not np.isfinite(array).all():
        raise ValueError(f"{what} must be {shape} finite numbers")
    return array


def _keys(value: object, expected: set[str], what: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping) or set(value) != expected:
        raise ValueError(f"{what} must hold exactly {sorted(expected)}")
    return value


@dataclass(frozen=True)
class _Counts:
    """One party's checked answer to ``counts``."""

    n: int
    labels: tuple[int, ...]
    ensemble: int
    voting: int | None
    calibrated: Mapping[str, int]

    def base_right(self, base: str) -> int | None:
        return self.ensemble if base == "ensemble" else self.voting


class _Checks:
    """What one party's answers must be to count (see the module docstring)."""

    def __init__(self, k: int, modes: Sequence[str], declared: int | None) -> None:
        self.k = k
        self.modes = set(modes)
        self.limit = min(declared, _MAX_CASES) if declared is not None else _MAX_CASES

    def counts(self, answer: object) -> _Counts:
        found = _keys(answer, {"n", "labels", "ensemble", "voting", "calibrated"}, "counts")
        n = _count(found["n"], 1, self.limit, "n (its cases, at most what it declared)")
        labels = found["labels"]
        if not isinstance(labels, list) or len(labels) != self.k:
            raise ValueError(f"labels must be {self.k} counts")
        per_label = tuple(_count(c, 0, n, "a label count") for c in labels)
        if sum(per_label) != n:
            raise ValueError(f"its label counts sum to {sum(per_label)}, not its n = {n}")
        voting = found["voting"]
        calibrated = _keys(found["calibrated"], self.modes, "calibrated")
        return _Counts(
            n=n,
            labels=per_label,
            ensemble=_count(found["ensemble"], 0, n, "ensemble"),
            voting=None if voting is None else _count(voting, 0, n, "voting"),
            calibrated={m: _count(v, 0, n, f"calibrated {m}") for m, v in calibrated.items()},
        )

    def bias(
        self, answer: object, counts: _Counts, question: Mapping[str, Any]
    ) -> dict[str, dict[str, Any]]:
        """Loss, gradient and Hessian per candidate, within what its cases can produce.

        With ``P`` labels present and ``T`` the pooled label totals, the
        party's cases weigh ``W = sum_y n_y / (P T_y)``: every gradient entry
        lies in ``[-n_y / (P T_y), W - n_y / (P T_y)]`` and the entries sum to 0;
        the Hessian's diagonal in ``[0, W / 4]``, the rest in ``[-W / 4, 0]``,
        its rows summing to 0; the loss in ``[0, W (range + log K)]``.
        """
        k = self.k
        totals = np.asarray(question["label_totals"], dtype=np.float64)
        present = totals > 0
        mine = np.asarray(counts.labels, dtype=np.float64)
        if (mine[~present] > 0).any():
            raise ValueError("it has cases of a label the pooled totals do not")
        shares = np.where(present, mine / (present.sum() * np.where(present, totals, 1.0)), 0.0)
        weight = float(shares.sum())
        candidates = question["candidates"]
        found = _keys(answer, set(candidates), "bias")
        slack = 1e-6 * max(1.0, weight) + 1e-9
        floor = -math.log(_FLOOR) + math.log(k)
        checked = {}
        for mode, listed in candidates.items():
            entry = _keys(found[mode], {"loss", "gradient", "hessian"}, f"bias {mode}")
            c = len(listed)
            losses = _numbers(entry["loss"], (c,), "loss")
            gradients = _numbers(entry["gradient"], (c, k), "gradient")
            hessians = _numbers(entry["hessian"], (c, k, k), "hessian")
            for i, candidate in enumerate(listed):
                spread = float(np.ptp(np.asarray(candidate, dtype=np.float64)))
                if not -slack <= losses[i] <= weight * (floor + spread) + slack:
                    raise ValueError(f"a loss of {losses[i]:.4g} is beyond what its cases give")
                g = gradients[i]
                if ((g < -shares - slack) | (g > weight - shares + slack)).any() or abs(
                    g.sum()
                ) > slack * k:
                    raise ValueError("a gradient beyond what its cases give")
                h = hessians[i]
                diagonal = np.diag(h)
                off = h - np.diag(diagonal)
                if (
                    (diagonal < -slack).any()
                    or (diagonal > weight / 4 + slack).any()
                    or (off > slack).any()
                    or (off < -weight / 4 - slack).any()
                    or (np.abs(h.sum(axis=1)) > slack * k).any()
                    or not np.allclose(h, h.T, atol=slack)
                ):
                    raise ValueError("a Hessian beyond what its cases give")
            checked[mode] = {"loss": losses, "gradient": gradients, "hessian": hessians}
        return checked

    def weights(
        self, answer: object, counts: _Counts, question: Mapping[str, Any]
    ) -> dict[str, dict[str, Any]]:
        """Per mode: ``biased`` and, per base and weight, ``(right, fixed, broken)``, consistent."""
        n = counts.n
        keys = [_weight_key(float(w)) for w in question["weights"]]
        found = _keys(answer, set(question["biases"]), "weights")
        checked: dict[str, dict[str, Any]] = {}
        for mode in found:
            entry = _keys(found[mode], {"biased", "bases"}, f"weights {mode}")
            bases = _keys(entry["bases"], {"ensemble", "voting"}, f"weights {mode} bases")
            per_base: dict[str, dict[str, tuple[int, int, int]] | None] = {}
            for base, tried in bases.items():
                base_right = counts.base_right(base)
                if tried is None or base_right is None:
                    if (tried is None) != (base_right is None):
                        raise ValueError(f"{base}: present in one answer, absent in another")
                    per_base[base] = None
                    continue
                listed = _keys(tried, set(keys), f"weights {mode} {base}")
                rows = {}
                for key in keys:
                    row = listed[key]
                    if not isinstance(row, list) or len(row) != 3:
                        raise ValueError("each weight's answer is [right, fixed, broken]")
                    right = _count(row[0], 0, n, "right")
                    fixed = _count(row[1], 0, n - base_right, "fixed")
                    broken = _count(row[2], 0, base_right, "broken")
                    if right != base_right + fixed - broken:
                        raise ValueError(
                            f"weight {key}: right {right} is not its base's {base_right} "
                            f"+ fixed {fixed} - broken {broken}"
                        )
                    if float(key) == 0.0 and (fixed or broken):
                        raise ValueError("weight 0 is the base itself: it fixes and breaks none")
                    rows[key] = (right, fixed, broken)
                per_base[base] = rows
            checked[mode] = {"biased": _count(entry["biased"], 0, n, "biased"), "bases": per_base}
        return checked


class _Parties:
    """The parties of one fit: who is counted, who was excluded and why."""

    def __init__(
        self,
        ask: Ask,
        parties: Sequence[str],
        checks: Mapping[str, _Checks],
    ) -> None:
        self._ask = ask
        self.counted = list(parties)
        self.excluded: dict[str, str] = {}
        self.checks = checks
        self.counts: dict[str, _Counts] = {}

    def exclude(self, party: str, reason: str) -> None:
        log.warning("policy fit: %s excluded: %s", party, reason)
        self.excluded[party] = reason[:300]
        if party in self.counted:
            self.counted.remove(party)
        self.counts.pop(party, None)
        if not self.counted:
            raise PolicyFitError(
                "no party's answers could be used: "
                + "; ".join(f"{p}: {r}" for p, r in sorted(self.excluded.items()))
            )

    def ask(self, question: dict[str, Any]) -> Mapping[str, Any]:
        """Every counted party's answer; one that did not answer is excluded (raises to restart)."""
        answers = self._ask(question, list(self.counted))
        for party in list(self.counted):
            if party not in answers:
                raise _InconsistentAnswerError(party, "did not answer")
        return {party: answers[party] for party in self.counted}

    def learn_counts(self) -> None:
        answers = self.ask({"what": "counts"})
        for party, answer in answers.items():
            try:
                self.counts[party] = self.checks[party].counts(answer)
            except ValueError as exc:
                self.exclude(party, f"counts: {exc}")
        # The vote is a base for every party or for none (ordinal tasks): the minority differs.
        with_vote = [p for p in self.counted if self.counts[p].voting is not None]
        without = [p for p in self.counted if self.counts[p].voting is None]
        minority = with_vote if len(with_vote) < len(without) else without
        if with_vote and without:
            for party in list(minority):
                self.exclude(party, "counts: its vote differs in kind from the others'")

    def totals(self) -> list[int]:
        return [int(sum(self.counts[p].labels[i] for p in self.counted)) for i in range(self._k)]

    @property
    def _k(self) -> int:
        return len(next(iter(self.counts.values())).labels)

    @property
    def n(self) -> int:
        return sum(self.counts[p].n for p in self.counted)


def _fit_biases(
    parties: _Parties, modes: Sequence[str], ridge: float
) -> dict[str, tuple[float, ...] | None]:
    """Each mode's label bias by Newton's method on the checked, summed answers.

    One question per Newton step for all modes still moving: the loss,
    gradient and Hessian at every step size of the line search at once, so
    the accepted candidate's derivatives are already known. Biases are kept
    within what the pooled cases can justify (:func:`protocol.bias_limit`).

    Raises:
        _InconsistentAnswerError: a party's answer failed its checks.
    """
    totals = parties.totals()
    k = len(totals)
    if sum(t > 0 for t in totals) < 2 or not modes:
        return dict.fromkeys(modes)
    limit = bias_limit(parties.n)

    def ask(candidates: Mapping[str, list[NDArray[np.float64]]]) -> dict[str, Any]:
        question = {
            "what": "bias",
            "label_totals": list(totals),
            "candidates": {m: [c.tolist() for c in cs] for m, cs in candidates.items()},
        }
        summed: dict[str, Any] = {}
        for party, answer in parties.ask(question).items():
            try:
                checked = parties.checks[party].bias(answer, parties.counts[party], question)
            except ValueError as exc:
                raise _InconsistentAnswerError(party, f"bias: {exc}") from exc
            for mode, entry in checked.items():
                held = summed.setdefault(mode, dict.fromkeys(entry, 0.0))
                for key, value in entry.items():
                    held[key] = held[key] + value
        return summed

    def regularised(
        answer: Mapping[str, Any], i: int, bias: NDArray[np.float64]
    ) -> tuple[float, NDArray[np.float64], NDArray[np.float64]]:
        return (
            float(answer["loss"][i]) + ridge * float(bias @ bias),
            np.asarray(answer["gradient"][i], dtype=np.float64) + 2 * ridge * bias,
            np.asarray(answer["hessian"][i], dtype=np.float64),
        )

    bias = {m: np.zeros(k) for m in modes}
    first = ask({m: [bias[m]] for m in modes})
    current = {m: regularised(first[m], 0, bias[m]) for m in modes}
    moving = list(modes)
    for _ in range(_MAX_NEWTON_STEPS):
        if not moving:
            break
        steps = {}
        for m in moving:
            _, gradient, hessian = current[m]
            steps[m] = np.linalg.solve(hessian + 2 * ridge * np.eye(k), gradient)
        candidates = {
            m: [np.clip(bias[m] - s * steps[m], -limit, limit) for s in _STEP_SIZES] for m in moving
        }
        answers = ask(candidates)
        still = []
        for m in moving:
            loss, gradient, _ = current[m]
            drop = float(gradient @ steps[m])
            for i, size in enumerate(_STEP_SIZES):
                found = regularised(answers[m], i, candidates[m][i])
                if found[0] <= loss - 1e-4 * size * drop:  # Armijo
                    break
            else:
                continue  # no step decreases the loss: converged
            moved = float(np.abs(candidates[m][i] - bias[m]).max())
            bias[m], current[m] = candidates[m][i], found
            if moved >= 1e-9:
                still.append(m)
        moving = still
    fitted: dict[str, tuple[float, ...] | None] = {}
    for m in modes:
        centred = bias[m] - bias[m].mean()
        largest = float(np.abs(centred).max())
        if largest > limit:  # centring can push one past the limit: shrink, keeping the sum 0
            centred = centred * (limit / largest)
        fitted[m] = tuple(round(float(b), 6) for b in centred)
    return fitted


def _weight_stats(
    parties: _Parties,
    modes: Sequence[str],
    biases: Mapping[str, tuple[float, ...] | None],
    weights: Sequence[float],
) -> dict[str, dict[str, Any]]:
    """Each counted party's checked answer to ``weights``.

    Raises:
        _InconsistentAnswerError: a party's answer failed its checks.
    """
    question = {
        "what": "weights",
        "biases": {m: list(b) if b is not None else None for m, b in biases.items()},
        "weights": [float(w) for w in weights],
    }
    checked = {}
    for party, answer in parties.ask(question).items():
        try:
            checked[party] = parties.checks[party].weights(answer, parties.counts[party], question)
        except ValueError as exc:
            raise _InconsistentAnswerError(party, f"weights: {exc}") from exc
    return checked


def _choose_base(parties: _Parties, federated: bool) -> tuple[Literal["ensemble", "voting"], int]:
    """The vote, unless the ensemble answers strictly more right, also with any one party out."""
    counts = [parties.counts[p] for p in parties.counted]
    ensemble = sum(c.ensemble for c in counts)
    if any(c.voting is None for c in counts):
        return "ensemble", ensemble
    voting = sum(c.voting or 0 for c in counts)
    ahead = ensemble > voting
    if ahead and federated and len(counts) > 1:
        ahead = all(ensemble - c.ensemble > voting - (c.voting or 0) for c in counts)
    return ("ensemble", ensemble) if ahead else ("voting", voting)


def _mode_policy(
    parties: _Parties,
    mode: str,
    stats: Mapping[str, Mapping[str, Any]],
    bias: tuple[float, ...] | None,
    weights: Sequence[float],
    federated: bool,
) -> ModePolicy:
    """One mode's policy from the checked answers (the rules of :func:`fit_mode`).

    A weight is trusted when it beats the base and the smaller weights, and
    its gain passes the gate (McNemar's exact one-sided test on the cases it
    fixed and broke). Fitted across parties, it also needs a majority of them
    (at least two) to have seen it fix more than it broke on their own cases,
    and its gain to pass the gate with any one party's answers left out.
    """
    counted = parties.counted
    n = parties.n
    base_name, base_correct = _choose_base(parties, federated)
    ensemble_correct = sum(parties.counts[p].ensemble for p in counted)
    votes = [parties.counts[p].voting for p in counted]
    vote_correct = None if any(v is None for v in votes) else sum(v or 0 for v in votes)
    tried: dict[str, float] = {}
    best_weight, best_correct, best_agreeing = 0.0, base_correct, None
    gate_p = 1.0  # of the weight trusted, or else of the most accurate one
    leading = base_correct
    for weight in sorted(weights):
        key = _weight_key(weight)
        rows = {p: stats[p][mode]["bases"][base_name][key] for p in counted}
        correct = sum(r[0] for r in rows.values())
        fixed = sum(r[1] for r in rows.values())
        broken = sum(r[2] for r in rows.values())
        tried[key] = correct / n
        if weight <= 0:
            continue
        p = _mcnemar_p(fixed, broken)
        agreeing = sum(1 for r in rows.values() if r[1] > r[2])
        backed = True
        if federated:
            backed = agreeing >= 2 and 2 * agreeing > len(counted)
            for party, (right, fix, brk) in rows.items():
                base_there = parties.counts[party].base_right(base_name) or 0
                without = _mcnemar_p(fixed - fix, broken - brk)
                if without > SIGNIFICANCE or correct - right <= base_correct - base_there:
                    backed = False  # this party's answers alone carry the gain
        if correct > best_correct and p <= SIGNIFICANCE and backed:
            best_weight, best_correct, gate_p = weight, correct, p
            best_agreeing = agreeing if federated else None
        elif best_weight == 0 and correct > leading:
            gate_p = p
        leading = max(leading, correct)
    calibrated = sum(parties.counts[p].calibrated[mode] for p in counted)
    accuracy = {
        "ensemble": ensemble_correct / n,
        **({"voting": vote_correct / n} if vote_correct is not None else {}),
        "generalist (calibrated)": calibrated / n,
        **(
            {"generalist (calibrated+bias)": sum(stats[p][mode]["biased"] for p in counted) / n}
            if bias is not None
            else {}
        ),
        "policy": best_correct / n,
    }
    return ModePolicy(
        generalist_weight=best_weight,
        base=base_name,
        validation_accuracy=accuracy,
        weights_tried=tried,
        gate_p_value=round(gate_p, 6),
        label_bias=bias,
        sites_agreeing=best_agreeing
        if federated and best_weight > 0
        else (0 if federated else None),
    )


def fit_policy_from_answers(
    task: TaskSpec,
    ask: Ask,
    modes: Sequence[Mode],
    *,
    model: str,
    parties: Sequence[str] | None = None,
    declared: Mapping[str, int] | None = None,
    weights: Sequence[float] = POLICY_WEIGHTS,
    label_bias: bool = True,
    ridge: float = BIAS_RIDGE,
) -> ArbitrationPolicy:
    """The policy of ``task`` from the answers of every party holding validation cases.

    ``ask`` puts a question (a JSON object) to the named parties and returns
    each one's answer (:meth:`PolicyEvidence.answer`). ``parties`` names them
    (site ids; None: one party holding every case, :func:`fit_policy`);
    ``declared`` bounds each one's cases by what it declared before the fit.
    Every answer is checked before it counts; a party whose answer fails, or
    that does not answer, is excluded and named in the policy, and the fit
    starts again without it.

    Raises:
        PolicyFitError: no cases, bad candidate weights, or no party left.
    """
    if not weights or len(weights) > _MAX_WEIGHTS:
        raise PolicyFitError(f"give 1 to {_MAX_WEIGHTS} candidate weights")
    if not all(math.isfinite(w) and w >= 0 for w in weights):
        raise PolicyFitError("candidate weights must be finite and not negative")
    federated = parties is not None
    names = list(parties) if parties is not None else [_LOCAL]
    if not names or len(set(names)) != len(names):
        raise PolicyFitError("name each party once")
    mode_names = [m.value for m in modes]
    checks = {p: _Checks(len(task.labels), mode_names, (declared or {}).get(p)) for p in names}
    group = _Parties(ask, names, checks)
    while True:
        try:
            if not group.counts:
                group.learn_counts()
            biases = (
                _fit_biases(group, mode_names, ridge) if label_bias else dict.fromkeys(mode_names)
            )
            stats = _weight_stats(group, mode_names, biases, weights) if mode_names else {}
            break
        except _InconsistentAnswerError as exc:
            group.exclude(exc.party, exc.reason)
    fitted = {m: _mode_policy(group, m, stats, biases[m], weights, federated) for m in mode_names}
    n = group.n
    best = max(
        fitted.items(),
        key=lambda item: (item[1].validation_accuracy["policy"], -item[1].generalist_weight),
        default=None,
    )
    plain = sum(group.counts[p].ensemble for p in group.counted) / n
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
        sites=tuple(group.counted) if federated else (),
        sites_excluded=dict(group.excluded) if federated else {},
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
    group = _local(evidence, ["q"])
    group.learn_counts()
    return _fit_biases(group, ["q"], ridge)["q"]


def _local(evidence: PolicyEvidence, modes: Sequence[str]) -> _Parties:
    """One party holding every case (its answers checked like any other's)."""
    return _Parties(
        lambda question, _: {_LOCAL: evidence.answer(question)},
        [_LOCAL],
        {_LOCAL: _Checks(evidence.ensemble.shape[1], modes, None)},
    )


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
    if evidence.cases < 1:
        raise PolicyFitError("no validation cases to fit a policy on")
    group = _local(evidence, ["mode"])
    try:
        group.learn_counts()
        biases = _fit_biases(group, ["mode"], BIAS_RIDGE) if label_bias else {"mode": None}
        stats = _weight_stats(group, ["mode"], biases, weights)
    except _InconsistentAnswerError as exc:  # one party's own evidence: a malformed question
        raise PolicyFitError(exc.reason) from exc
    return _mode_policy(group, "mode", stats, biases["mode"], weights, federated=False)


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
    if evidence.cases < 1:
        raise PolicyFitError("no validation cases to fit a policy on")
    return fit_policy_from_answers(
        task,
        lambda question, _: {_LOCAL: evidence.answer(question)},
        list(generalist),
        model=model,
        weights=weights,
        label_bias=label_bias,
    )
