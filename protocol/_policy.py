"""What an arbitration policy may say: the bounds a hub, the registry and the audit hold it to.

A policy is fitted on validation evidence (``hub.fit_policy``): a generalist
weight from a small grid, trusted only when its gain over the specialists
passes a significance gate, and a label bias that the number of cases can
justify. Fitted across sites, a weight above 0 also needs a majority of the
sites (not of the cases) to have seen it help on their own cases. A policy
outside these bounds was not made by that fit, whoever signed it: a card that
trusts the generalist 100-fold, a bias of 20 fitted on forty cases, a weight
without a passing gate.
"""

from __future__ import annotations

import math

from protocol._diagnosis import ArbitrationPolicy

__all__ = [
    "BIAS_CEILING",
    "MAX_POLICY_WEIGHT",
    "POLICY_WEIGHTS",
    "SIGNIFICANCE",
    "bias_limit",
    "policy_problems",
]

#: The generalist weights a fit considers (0: the specialists alone).
POLICY_WEIGHTS = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0)
#: The largest generalist weight a policy may hold.
MAX_POLICY_WEIGHT = max(POLICY_WEIGHTS)
#: The largest chance probability at which a weight's validation gain counts.
SIGNIFICANCE = 0.05
#: No label bias is ever larger, whatever the number of cases.
BIAS_CEILING = 20.0
#: Slack for rounding in the checks below (the fit rounds biases to 6 decimals).
_SLACK = 1e-4


def bias_limit(n_examples: int) -> float:
    """The largest label bias ``n_examples`` validation cases can justify: ``log n``.

    A bias ``b`` multiplies a label's odds by ``exp(b)``; ``n`` cases cannot
    measure a preference stronger than one label in ``n``, so ``|b| <= log n``
    (at most :data:`BIAS_CEILING`).
    """
    return min(BIAS_CEILING, math.log(max(n_examples, 2)))


def policy_problems(policy: ArbitrationPolicy, *, consortium: bool = False) -> list[str]:
    """Why ``policy`` is outside the bounds a fit on its evidence could produce (empty: none).

    ``consortium``: the policy of a consortium artifact (an adapter's card),
    whose weights above 0 must also be backed by at least two sites and a
    majority of those counted.
    """
    problems = []
    limit = bias_limit(policy.n_examples)
    for mode, fitted in sorted(policy.modes.items()):
        name = mode.value
        weight = fitted.generalist_weight
        if not 0.0 <= weight <= MAX_POLICY_WEIGHT:
            problems.append(f"{name}: generalist weight {weight:g} is above {MAX_POLICY_WEIGHT:g}")
        if fitted.label_bias is not None:
            worst = max(abs(b) for b in fitted.label_bias)
            if worst > limit + _SLACK:
                problems.append(
                    f"{name}: a label bias of {worst:.3g} is more than {policy.n_examples} "
                    f"cases can justify (at most log n = {limit:.3g})"
                )
            if abs(sum(fitted.label_bias)) > _SLACK * len(fitted.label_bias):
                problems.append(f"{name}: the label biases do not sum to 0")
        if weight <= 0:
            continue
        gate = fitted.gate_p_value
        if gate is None or gate > SIGNIFICANCE:
            problems.append(
                f"{name}: weight {weight:g} without a gain beyond chance (McNemar p = "
                f"{'none' if gate is None else f'{gate:.3g}'}, needs <= {SIGNIFICANCE})"
            )
        base = fitted.validation_accuracy.get(fitted.base)
        reached = fitted.validation_accuracy.get("policy")
        if base is None or reached is None or reached <= base:
            problems.append(f"{name}: weight {weight:g} did not beat its base on validation")
        if consortium or policy.sites:
            agreeing = fitted.sites_agreeing
            counted = len(policy.sites)
            if agreeing is None or agreeing < 2 or 2 * agreeing <= counted:
                problems.append(
                    f"{name}: weight {weight:g} is backed by {agreeing or 0} of {counted} sites; "
                    "a weight above 0 needs at least two and a majority"
                )
    return problems
