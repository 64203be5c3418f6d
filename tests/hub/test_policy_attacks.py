"""A lying site cannot flip the federated policy; a malformed answer ends in PolicyFitError.

Three parties as in a deployed run: two honest sites and one that lies. The
generalist here does not help (its scores are unrelated to the truth), so the
honest sites' policy trusts it with weight 0. Whatever the liar answers, the
policy must trust the generalist no more than that; an answer that no cases
could give excludes the liar by name; a malformed one never crashes the fit.
"""

from __future__ import annotations

import json
import math
import random
from typing import Any

import numpy as np
import pytest

from hub import PolicyEvidence, PolicyFitError, fit_policy_from_answers, fuse, vote_scores
from protocol import ArbitrationPolicy, Mode, TaskSpec, policy_problems

TASK = TaskSpec(
    task_id="chest-two", modality="chest X-ray", labels=("normal", "pneumonia"),
    task_type="binary",
)  # fmt: skip
MODES = [Mode.GSCO, Mode.MOED]
NAMES = ["site-01", "site-02", "site-03"]


def _cases(n: int, seed: int) -> dict[str, Any]:
    """Specialists right about 85% of the time; a generalist whose scores are noise."""
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, 2, n)
    specialists = rng.dirichlet(np.ones(2), (3, n))
    right = rng.random((3, n)) < 0.85
    specialists[:, np.arange(n), truth] += np.where(right, 1.5, 0.0)
    specialists /= specialists.sum(axis=2, keepdims=True)
    noise = {m: rng.dirichlet(np.ones(2) * 0.7, n) for m in MODES}
    return {
        "ensemble": specialists.mean(axis=0),
        "generalist": noise,
        "truth": truth,
        "specialists": specialists,
    }


def _evidence(cases: dict[str, Any]) -> PolicyEvidence:
    return PolicyEvidence.of(
        TASK, cases["ensemble"], cases["generalist"], cases["truth"], cases["specialists"]
    )


SITES = {name: _evidence(_cases(70, seed)) for seed, name in enumerate(NAMES)}
DECLARED = {name: site.cases for name, site in SITES.items()}


def _fit(lie: Any = None, liar: str = "site-03", names: list[str] | None = None) -> Any:
    """The federated fit; ``lie(question, honest answer)`` is what the liar sends instead."""

    def ask(question: dict[str, Any], asked: list[str]) -> dict[str, Any]:
        answers = {}
        for name in asked:
            honest = SITES[name].answer(json.loads(json.dumps(question)))
            answer = lie(question, honest) if (name == liar and lie is not None) else honest
            if answer is _SILENT:
                continue
            answers[name] = json.loads(json.dumps(answer))  # as it crosses the wire
        return answers

    return fit_policy_from_answers(
        TASK, ask, MODES, model="adapter", parties=names or NAMES, declared=DECLARED
    )


_SILENT = object()
HONEST = _fit(names=["site-01", "site-02"])


def _accuracy(policy: ArbitrationPolicy, mode: Mode, cases: dict[str, Any]) -> float:
    """The policy's accuracy on fresh cases (the base, and the generalist at its weight)."""
    fitted = policy.modes[mode]
    base = vote_scores(cases["specialists"]) if fitted.base == "voting" else cases["ensemble"]
    generalist = cases["generalist"][mode]
    if fitted.label_bias is not None:
        generalist = generalist * np.exp(fitted.label_bias)
        generalist /= generalist.sum(axis=1, keepdims=True)
    answers = [
        int(np.argmax(fuse(b.tolist(), g.tolist(), fitted.generalist_weight)))
        for b, g in zip(base, generalist, strict=True)
    ]
    return float(np.mean(np.asarray(answers) == cases["truth"]))


def _no_more_trust(policy: ArbitrationPolicy) -> None:
    for mode in MODES:
        assert policy.modes[mode].generalist_weight <= HONEST.modes[mode].generalist_weight
    assert not policy_problems(policy, consortium=True)


def test_the_honest_sites_trust_a_useless_generalist_not_at_all() -> None:
    assert all(HONEST.modes[m].generalist_weight == 0 for m in MODES)
    honest_all = _fit()
    assert honest_all.sites == tuple(NAMES)
    _no_more_trust(honest_all)


def _issue_lie(question: dict[str, Any], honest: dict[str, Any]) -> dict[str, Any]:
    """The attack as it was seen: 10,000 extra cases on which weight 4 fixes 4,000 and breaks
    none, and loss and gradient terms that drag the label bias to +-20."""
    what = question["what"]
    answer = json.loads(json.dumps(honest))
    if what == "counts":
        answer["n"] += 10_000
        answer["labels"][0] += 10_000
        answer["ensemble"] += 5_000
        answer["voting"] += 5_000
    elif what == "bias":
        for entry in answer.values():
            entry["loss"] = [loss * 1e4 for loss in entry["loss"]]
            entry["gradient"] = [[g * 1e4 + (1e3 if i == 0 else -1e3) for i, g in enumerate(gs)]
                                 for gs in entry["gradient"]]  # fmt: skip
    else:
        for entry in answer.values():
            for tried in entry["bases"].values():
                if tried is None:
                    continue
                for key, (right, fixed, broken) in tried.items():
                    if float(key) == 4.0:
                        tried[key] = [right + 4_000, fixed + 4_000, broken]
    return answer


def test_the_liar_of_the_issue_is_excluded_and_the_policy_is_the_honest_sites() -> None:
    policy = _fit(_issue_lie)
    assert "site-03" in policy.sites_excluded
    assert "at most what it declared" in policy.sites_excluded["site-03"]
    assert policy.sites == ("site-01", "site-02")
    for mode in MODES:
        assert policy.modes[mode].generalist_weight == HONEST.modes[mode].generalist_weight
        assert policy.modes[mode].label_bias == HONEST.modes[mode].label_bias
    fresh = _cases(400, 99)
    for mode in MODES:
        assert _accuracy(policy, mode, fresh) == _accuracy(HONEST, mode, fresh)


def _consistent_lie(question: dict[str, Any], honest: dict[str, Any]) -> dict[str, Any]:
    """A careful liar: its own n, and every count consistent, but weight 4 fixes all it can."""
    answer = json.loads(json.dumps(honest))
    if question["what"] == "weights":
        counts = SITES["site-03"].answer({"what": "counts"})
        for entry in answer.values():
            for base, tried in entry["bases"].items():
                if tried is None:
                    continue
                base_right = counts[base]
                for key in tried:
                    if float(key) > 0:
                        tried[key] = [counts["n"], counts["n"] - base_right, 0]
    return answer


def test_a_consistent_liar_alone_cannot_make_the_generalist_trusted() -> None:
    policy = _fit(_consistent_lie)
    assert policy.sites == tuple(NAMES)  # nothing it said is impossible...
    _no_more_trust(policy)  # ...but one site of three is no majority
    fresh = _cases(400, 98)
    for mode in MODES:
        assert _accuracy(policy, mode, fresh) >= _accuracy(HONEST, mode, fresh) - 1e-9


def _bias_lie(question: dict[str, Any], honest: dict[str, Any]) -> dict[str, Any]:
    answer = json.loads(json.dumps(honest))
    if question["what"] == "bias":
        for entry in answer.values():
            entry["gradient"] = [[5.0, -5.0] for _ in entry["gradient"]]
    return answer


def test_bias_terms_no_cases_could_give_exclude_the_site() -> None:
    policy = _fit(_bias_lie)
    assert "gradient beyond" in policy.sites_excluded["site-03"]
    for mode in MODES:
        assert policy.modes[mode].label_bias == HONEST.modes[mode].label_bias


def _replace(path: list[Any], value: Any, what: str = "counts") -> Any:
    def lie(question: dict[str, Any], honest: dict[str, Any]) -> Any:
        if question["what"] != what:
            return honest
        answer = json.loads(json.dumps(honest))
        target = answer
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
        return answer

    return lie


MALFORMED = {
    "n is NaN": _replace(["n"], float("nan")),
    "n beyond int64": _replace(["n"], 2**70),
    "n a string": _replace(["n"], "70"),
    "n true": _replace(["n"], True),
    "negative n": _replace(["n"], -5),
    "labels above n": _replace(["labels"], [10**6, 5]),
    "a label count a float": _replace(["labels", 0], 3.5),
    "ensemble above n": _replace(["ensemble"], 10**9),
    "calibrated missing a mode": _replace(["calibrated"], {"gsco": 3}),
    "an extra key": _replace(["cases"], [1, 2, 3]),
    "vote of another kind": _replace(["voting"], None),
    "a NaN loss": _replace(["gsco", "loss", 0], float("nan"), "bias"),
    "an infinite hessian": _replace(["gsco", "hessian", 0, 0, 0], float("inf"), "bias"),
    "a row of two": _replace(["gsco", "bases", "voting", "4"], [1, 2], "weights"),
    "right inconsistent": _replace(["gsco", "bases", "voting", "4"], [0, 0, 0], "weights"),
    "not an object": lambda q, h: [1, 2, 3],
    "null": lambda q, h: None,
}


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_a_malformed_answer_excludes_its_site_and_the_fit_goes_on(name: str) -> None:
    policy = _fit(MALFORMED[name])
    assert set(policy.sites_excluded) == {"site-03"}
    assert policy.sites == ("site-01", "site-02")
    _no_more_trust(policy)


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_a_malformed_answer_of_the_only_site_is_no_policy(name: str) -> None:
    with pytest.raises(PolicyFitError, match="no party's answers could be used"):
        _fit(MALFORMED[name], names=["site-03"])


def test_a_site_that_stops_answering_is_excluded_by_name() -> None:
    state = {"asked": 0}

    def silent_after_two(question: dict[str, Any], honest: dict[str, Any]) -> Any:
        state["asked"] += 1
        return honest if state["asked"] <= 2 else _SILENT

    policy = _fit(silent_after_two)
    assert policy.sites_excluded == {"site-03": "did not answer"}


def _mutate(value: Any, rng: random.Random) -> Any:
    """One random change somewhere in a JSON value."""
    if isinstance(value, dict) and value:
        key = rng.choice(sorted(value))
        if rng.random() < 0.1:
            return {k: v for k, v in value.items() if k != key}
        return {**value, key: _mutate(value[key], rng)}
    if isinstance(value, list) and value:
        i = rng.randrange(len(value))
        if rng.random() < 0.1:
            return value[:i] + value[i + 1 :]
        return [*value[:i], _mutate(value[i], rng), *value[i + 1 :]]
    return rng.choice(
        [
            None, True, "x", -1, 0, 1, 10**4, 2**64, 1e308, -1e308, float("nan"),
            float("inf"), 0.5, [], {}, [0, 0],
            value * 2 if isinstance(value, int | float) and not isinstance(value, bool) else 7,
        ]
    )  # fmt: skip


def test_seeded_mutations_of_one_sites_answers_never_crash_nor_add_trust() -> None:
    rng = random.Random(20261207)
    outcomes = {"excluded": 0, "kept": 0}
    for _ in range(150):

        def lie(
            question: dict[str, Any],
            honest: dict[str, Any],
            target: str = rng.choice(["counts", "bias", "weights"]),
            state: dict[str, bool] = {"done": False},  # noqa: B006 (one per trial, by design)
        ) -> Any:
            if question["what"] != target or state["done"]:
                return honest
            state["done"] = rng.random() < 0.5
            return _mutate(honest, rng)

        try:
            policy = _fit(lie)
        except PolicyFitError:  # the only acceptable failure
            continue
        _no_more_trust(policy)
        for fitted in policy.modes.values():
            assert fitted.label_bias is None or all(math.isfinite(b) for b in fitted.label_bias)
        outcomes["excluded" if policy.sites_excluded else "kept"] += 1
    assert outcomes["excluded"] > 50  # most mutations are caught by name
