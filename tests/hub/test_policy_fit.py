"""The policy fitted across sites whose cases never meet: only sums and counts are exchanged.

Each site answers the fit's questions about its own cases
(:meth:`hub.PolicyEvidence.answer`); the fit checks each answer and sums them.
Where the sites agree, the result is the policy the pooled cases give; what a
site sends does not grow with, or list, its cases. A lying site is the
subject of tests/hub/test_policy_attacks.py.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest

from hub import PolicyEvidence, PolicyFitError, fit_policy, fit_policy_from_answers
from protocol import Mode, TaskSpec

TASK = TaskSpec(
    task_id="chest-three", modality="chest X-ray", labels=("normal", "pneumonia", "effusion"),
    task_type="multiclass",
)  # fmt: skip


def _cases(n: int, seed: int) -> dict[str, Any]:
    """An ensemble right about 75% of the time; a generalist that helps in gsco, not in rad."""
    rng = np.random.default_rng(seed)
    k = len(TASK.labels)
    truth = rng.integers(0, k, n)
    ensemble = rng.dirichlet(np.ones(k), n)
    ensemble[np.arange(n), truth] += np.where(rng.random(n) < 0.75, 1.0, 0.0)
    ensemble /= ensemble.sum(axis=1, keepdims=True)
    helpful = rng.dirichlet(np.ones(k) * 0.5, n)
    helpful[np.arange(n), truth] += 2.5
    helpful[:, 0] += 0.4  # a preference for the first label, which the label bias removes
    helpful /= helpful.sum(axis=1, keepdims=True)
    unrelated = rng.dirichlet(np.ones(k), n)
    specialists = rng.dirichlet(np.ones(k), (3, n))
    specialists[:, np.arange(n), truth] += 0.6
    specialists /= specialists.sum(axis=2, keepdims=True)
    return {
        "ensemble": ensemble,
        "generalist": {Mode.GSCO: helpful, Mode.RAD: unrelated},
        "truth": truth,
        "specialists": specialists,
    }


def _split(cases: dict[str, Any], bounds: list[int]) -> list[PolicyEvidence]:
    """The cases shared out among sites at ``bounds`` (each site's own rows)."""
    parts = []
    for lo, hi in zip([0, *bounds], [*bounds, len(cases["truth"])], strict=True):
        parts.append(
            PolicyEvidence.of(
                TASK,
                cases["ensemble"][lo:hi],
                {m: s[lo:hi] for m, s in cases["generalist"].items()},
                cases["truth"][lo:hi],
                None if cases["specialists"] is None else cases["specialists"][:, lo:hi],
            )
        )
    return parts


def _asking(sites: list[PolicyEvidence], sent: list[str]) -> Any:
    by_name = {f"site-{i + 1}": site for i, site in enumerate(sites)}

    def ask(question: dict[str, Any], names: list[str]) -> dict[str, Any]:
        answers = {n: by_name[n].answer(json.loads(json.dumps(question))) for n in names}
        sent.extend(json.dumps(a) for a in answers.values())  # what crosses the wire
        return {n: json.loads(json.dumps(a)) for n, a in answers.items()}

    return ask


def _federated(cases: dict[str, Any], bounds: list[int], sent: list[str]) -> Any:
    parts = _split(cases, bounds)
    names = [f"site-{i + 1}" for i in range(len(parts))]
    return fit_policy_from_answers(
        TASK,
        _asking(parts, sent),
        [Mode.GSCO, Mode.RAD],
        model="adapter",
        parties=names,
        declared={name: part.cases for name, part in zip(names, parts, strict=True)},
    )


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_fit_across_sites_is_the_fit_of_the_pooled_cases(seed: int) -> None:
    cases = _cases(240, seed)
    cases["specialists"] = None  # the ensemble is the base: a gain every site sees
    pooled = fit_policy(
        TASK,
        cases["ensemble"],
        cases["generalist"],
        cases["truth"],
        model="adapter",
        specialists=cases["specialists"],
    )
    sent: list[str] = []
    federated = _federated(cases, [37, 150], sent)
    assert federated.n_examples == pooled.n_examples == 240
    assert federated.recommended_mode == pooled.recommended_mode
    for mode, fitted in pooled.modes.items():
        other = federated.modes[mode]
        assert (other.base, other.generalist_weight) == (fitted.base, fitted.generalist_weight)
        assert other.weights_tried == fitted.weights_tried
        assert other.validation_accuracy == fitted.validation_accuracy
        assert other.gate_p_value == fitted.gate_p_value
        assert fitted.label_bias is not None
        assert other.label_bias is not None
        assert np.allclose(other.label_bias, fitted.label_bias, atol=1e-5)
    # The helpful mode earns a weight; the unrelated one does not.
    assert pooled.modes[Mode.GSCO].generalist_weight > 0
    assert pooled.modes[Mode.RAD].generalist_weight == 0
    assert federated.sites == ("site-1", "site-2", "site-3")
    assert not federated.sites_excluded
    assert federated.modes[Mode.GSCO].sites_agreeing == 3  # each site saw the weight help
    assert pooled.sites == ()
    assert pooled.modes[Mode.GSCO].sites_agreeing is None
    assert sent


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_across_sites_no_weight_rests_on_one_site(seed: int) -> None:
    """Against a strong vote the gain is a handful of cases: the pooled fit may trust a weight
    the sites' answers do not back without one of them; the federated fit then does not."""
    cases = _cases(240, seed)
    pooled = fit_policy(
        TASK, cases["ensemble"], cases["generalist"], cases["truth"], model="adapter",
        specialists=cases["specialists"],
    )  # fmt: skip
    federated = _federated(cases, [37, 150], [])
    for mode, fitted in pooled.modes.items():
        other = federated.modes[mode]
        assert other.base == fitted.base
        assert other.weights_tried == fitted.weights_tried
        assert other.generalist_weight <= fitted.generalist_weight
        if other.generalist_weight > 0:
            assert other.sites_agreeing is not None
            assert other.sites_agreeing >= 2


def test_what_a_site_sends_does_not_grow_with_its_cases() -> None:
    small, large = _split(_cases(400, 5), [12])
    questions = [
        {"what": "counts"},
        {"what": "bias", "label_totals": [130, 140, 130], "candidates": {"gsco": [[0, 0, 0]] * 4}},
        {"what": "weights", "biases": {"gsco": [0.1, -0.1, 0.0], "rad": None}, "weights": [0, 1]},
    ]
    for question in questions:
        a, b = small.answer(question), large.answer(question)

        def shape(value: Any) -> Any:
            if isinstance(value, dict):
                return {k: shape(v) for k, v in value.items()}
            if isinstance(value, list):
                return [shape(v) for v in value]
            return type(value).__name__

        assert shape(a) == shape(b), question  # the same numbers, whatever the cases
    counts = small.answer({"what": "counts"})
    assert counts["n"] == 12
    assert sum(counts["labels"]) == 12


@pytest.mark.parametrize(
    ("question", "message"),
    [
        ({"what": "cases"}, "unknown question"),
        ({"what": "bias", "label_totals": [1, 1], "candidates": {"gsco": [[0, 0, 0]]}}, "3 finite"),
        (
            {"what": "bias", "label_totals": [5, 5, 5], "candidates": {"gsco": [[0, 0, 0]] * 28}},
            "candidate biases",
        ),
        (
            {"what": "bias", "label_totals": [5, 5, 5], "candidates": {"gsco": [[0, "x", 0]]}},
            "list of numbers",
        ),
        (
            {"what": "bias", "label_totals": [5, 5, 5], "candidates": {"gsco": [[0, 1e400, 0]]}},
            "finite",
        ),
        (
            {"what": "bias", "label_totals": [5, 0, 5], "candidates": {"gsco": [[0, 0, 0]]}},
            "nobody has a label",
        ),
        (
            {"what": "bias", "label_totals": [5, 5, 5], "candidates": {"moed": [[0, 0, 0]]}},
            "no generalist scores for mode 'moed'",
        ),
        ({"what": "weights", "biases": {"gsco": None}, "weights": [-1.0]}, "not negative"),
        ({"what": "weights", "biases": {"gsco": None}, "weights": []}, "1 to 32 weights"),
        ({"what": "weights", "biases": [], "weights": [1.0]}, "biases must map"),
    ],
)
def test_a_site_refuses_a_malformed_question(question: dict[str, Any], message: str) -> None:
    (site,) = _split(_cases(60, 3), [])
    with pytest.raises(PolicyFitError, match=message):
        site.answer(question)


def test_evidence_that_does_not_fit_together_is_refused() -> None:
    cases = _cases(20, 4)
    with pytest.raises(PolicyFitError, match="do not fit"):
        PolicyEvidence(cases["ensemble"], {}, cases["truth"][:10])
    with pytest.raises(PolicyFitError, match="outside"):
        PolicyEvidence(cases["ensemble"], {}, cases["truth"] + 3)
    with pytest.raises(PolicyFitError, match="scores are"):
        PolicyEvidence(cases["ensemble"], {"gsco": cases["ensemble"][:, :2]}, cases["truth"])


def test_no_cases_no_policy() -> None:
    (site,) = _split(_cases(30, 6), [])
    empty = PolicyEvidence(
        site.ensemble[:0], {m: s[:0] for m, s in site.generalist.items()}, site.truth[:0]
    )
    with pytest.raises(PolicyFitError, match="counts: n"):
        fit_policy_from_answers(
            TASK, lambda q, names: {"site-1": empty.answer(q)}, [Mode.GSCO], model="adapter",
            parties=["site-1"],
        )  # fmt: skip
    with pytest.raises(PolicyFitError, match="no validation cases"):
        fit_policy(TASK, empty.ensemble, dict.fromkeys([Mode.GSCO], empty.ensemble), empty.truth,
                   model="adapter")  # fmt: skip
