"""The adapter card: what a signed LoRA adapter of the generalist says about itself.

An adapter bundle holds ``adapter_model.safetensors`` and ``adapter_config.json``
(peft's format, which vLLM loads), this card as ``adapter_card.json``, and
``model.sig`` over all of them (the same signature format as a specialist
bundle). :func:`registry.verify_adapter` checks one; the hub loads only those
that pass, into vLLM, and names the adapter's digest in every answer.

A card may carry the arbitration ``policy`` fitted for the adapter (its label
bias and generalist weight per mode, :class:`protocol.ArbitrationPolicy`), so
that the policy is signed and published with the weights it was fitted on.
Fitting needs the adapter in service (the hub's own answers on validation
cases), so a site publishes the adapter first and then a new version of the
same bundle, the same weights and a card that adds the policy.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import AwareDatetime, Field, StringConstraints, model_validator

from protocol._base import (
    PRINTABLE,
    Identifier,
    Label,
    ModelName,
    PositiveCount,
    Sha256Hex,
    StrictModel,
    UnitFloat,
    Version,
)
from protocol._card import DifferentialPrivacy
from protocol._diagnosis import ArbitrationPolicy, Mode
from protocol._task import Modality, TaskSpec, TaskType, check_label_set

__all__ = ["LORA_MODULES", "AdapterCard", "AdapterTraining", "LoraSpec"]

#: The projections of a Llama-family decoder layer a LoRA adapter may adapt: those vLLM's
#: LoRA kernels serve. Never ``lm_head`` or ``embed_tokens`` (vLLM serves neither, and
#: they would reach every token of every answer).
LORA_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
_MODULE = Literal["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
_NOTE = Annotated[str, StringConstraints(max_length=1000), PRINTABLE]


class LoraSpec(StrictModel):
    """The adapter's shape, as ``adapter_config.json`` must also say."""

    rank: Annotated[int, Field(strict=True, ge=1, le=256)]
    alpha: Annotated[int, Field(strict=True, ge=1, le=4096)]
    target_modules: Annotated[tuple[_MODULE, ...], Field(min_length=1, max_length=7)]
    layers: Annotated[
        tuple[Annotated[int, Field(strict=True, ge=0, le=1023)], ...], Field(max_length=1024)
    ] = ()  # adapted layers; empty: all

    @model_validator(mode="after")
    def _distinct(self) -> LoraSpec:
        if len(set(self.target_modules)) != len(self.target_modules):
            raise ValueError("target_modules name a projection twice")
        if list(self.layers) != sorted(set(self.layers)):
            raise ValueError("layers must be distinct and in increasing order")
        return self


class AdapterTraining(StrictModel):
    """Where and how the adapter was trained (FedAvg over sites, with Flower)."""

    framework: Literal["flower", "local"] = "flower"
    # How the sites' updates were combined (FedAvg, or one of Flower's robust strategies).
    strategy: Literal["fedavg", "trimmed-mean", "median", "krum", "local"] = "fedavg"
    sites: Annotated[tuple[Identifier, ...], Field(min_length=1, max_length=500)]
    examples: PositiveCount  # evidence examples over all sites and one pass
    examples_per_site: dict[Identifier, PositiveCount]
    rounds: PositiveCount
    local_epochs: PositiveCount
    prompt_modes: Annotated[tuple[Mode, ...], Field(min_length=1, max_length=8)]
    differential_privacy: DifferentialPrivacy | None = None
    # What the examples were drawn from, and how the validation split was shared out
    # (the specialists were calibrated on it; the policy must not be fitted on it).
    evidence_split: _NOTE
    final_loss: Annotated[float, Field(ge=0.0, le=1e6)] | None = None
    # How the options were listed in the tuning prompts: the task's order, or shuffled
    # per example (so that the adapter reads the labels rather than their position).
    option_order: Literal["task", "shuffled"] = "task"


class AdapterCard(StrictModel):
    """Everything a hub, a registry and an auditor need to know about one adapter."""

    schema_version: Literal[1] = 1
    kind: Literal["generalist-lora"] = "generalist-lora"
    task_id: Identifier
    modality: Modality
    labels: Annotated[tuple[Label, ...], Field(min_length=2, max_length=256)]
    task_type: TaskType
    base_model: ModelName  # the served name adapter_config.json must name too
    base_model_sha256: Sha256Hex  # of the base model's weights file(s), as the site tuned it
    prompt_template: Annotated[str, StringConstraints(min_length=1, max_length=64)]
    sees_image: bool = False  # whether the prompts it learnt carried the image
    lora: LoraSpec
    training: AdapterTraining
    validation_accuracy: UnitFloat | None = None  # on evidence held out from tuning
    site_id: Identifier  # the signing site
    version: Version
    license: Annotated[str, StringConstraints(min_length=1, max_length=64), PRINTABLE]
    created_at: AwareDatetime
    # The arbitration policy fitted for this adapter's answers (on validation evidence, never
    # its own tuning cases); it applies to this adapter whatever name it is served under.
    policy: ArbitrationPolicy | None = None

    @model_validator(mode="after")
    def _consistent(self) -> AdapterCard:
        check_label_set(self.labels, self.task_type)
        training = self.training
        if len(set(training.sites)) != len(training.sites):
            raise ValueError("training.sites names a site twice")
        if set(training.examples_per_site) != set(training.sites):
            raise ValueError("examples_per_site must name exactly the training sites")
        if sum(training.examples_per_site.values()) != training.examples:
            raise ValueError("examples is not the sum of examples_per_site")
        if self.policy is not None:
            if (self.policy.task_id, self.policy.labels) != (self.task_id, self.labels):
                raise ValueError("the policy is for another task or label set than the adapter")
            unlearnt = set(self.policy.modes) - set(self.training.prompt_modes)
            if unlearnt:
                raise ValueError(
                    f"the policy weighs modes the adapter did not learn: "
                    f"{sorted(m.value for m in unlearnt)}"
                )
            if any(fitted.model is not None for fitted in self.policy.modes.values()):
                raise ValueError("an adapter's policy names no other model for its modes")
        if not re.fullmatch(r"[A-Za-z0-9._/-]+", self.prompt_template):
            raise ValueError("prompt_template holds characters outside [A-Za-z0-9._/-]")
        return self

    def task_spec(self) -> TaskSpec:
        """The task the adapter was tuned for."""
        return TaskSpec(
            task_id=self.task_id,
            modality=self.modality,
            labels=self.labels,
            task_type=self.task_type,
        )
