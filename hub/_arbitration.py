"""Which fitted policy weighs the generalist's answer: the one rule, in one object.

A task may have two policies: the operator's (``gsco hub serve --policies``,
or the simulation's hub operator) and the one signed into the card of the
consortium's adapter in service. Each mode of each holds for the generalist
it was fitted on (``ModePolicy.model``, else the policy's ``model``): the
base model, or the adapter. :meth:`PolicyResolver.for_answer` picks the mode
policy that holds for the generalist that actually answered;
:meth:`PolicyResolver.in_service` shows what applies per mode, as
``/v1/tasks`` reports it.
"""

from __future__ import annotations

from collections.abc import Mapping

from hub._adapters import ServedAdapter
from protocol import ArbitrationPolicy, Mode, ModePolicy, TaskSpec

__all__ = ["PolicyResolver"]


class PolicyResolver:
    """Reads the engine's live policies and adapters (both by task); holds no copy."""

    def __init__(
        self,
        policies: Mapping[str, ArbitrationPolicy],
        adapters: Mapping[str, ServedAdapter],
    ) -> None:
        self._policies = policies
        self._adapters = adapters

    def _signed(self, task_id: str) -> tuple[ServedAdapter, ArbitrationPolicy] | None:
        served = self._adapters.get(task_id)
        if served is None or served.card.policy is None:
            return None
        return served, served.card.policy

    def for_answer(self, task: TaskSpec, mode: Mode, model: str) -> ModePolicy | None:
        """The mode policy for ``model``'s answer in ``mode`` (None: no policy applies).

        The operator's when it was fitted for exactly ``model``; else the one
        signed with the served adapter, when ``model`` is that adapter. Another
        generalist's scores were never weighed: nothing applies to them.
        """
        policy = self._policies.get(task.task_id)
        if (
            policy is not None
            and policy.labels == task.labels
            and mode in policy.modes
            and (policy.modes[mode].model or policy.model) == model
        ):
            return policy.modes[mode]
        signed = self._signed(task.task_id)
        if signed is None:
            return None
        served, adapter_policy = signed
        if served.name != model or adapter_policy.labels != task.labels:
            return None
        return adapter_policy.modes.get(mode)

    def in_service(self, task_id: str) -> ArbitrationPolicy | None:
        """The task's policy as it is applied: the operator's, with the served adapter's modes.

        Each mode names the generalist it holds for (``model``).
        """
        policy = self._policies.get(task_id)
        signed = self._signed(task_id)
        if signed is None:
            return policy
        served, adapter_policy = signed
        named = {
            m: f.model_copy(update={"model": served.name}) for m, f in adapter_policy.modes.items()
        }
        if policy is None:
            return adapter_policy.model_copy(update={"model": served.name, "modes": named})
        if policy.labels != adapter_policy.labels:
            return policy
        modes = dict(policy.modes)
        for mode, fitted in named.items():
            current = modes.get(mode)
            if current is None or (current.model or policy.model) != served.name:
                modes[mode] = fitted
        return policy.model_copy(update={"modes": modes})
