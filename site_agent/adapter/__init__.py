"""The generalist's evidence-tuned LoRA adapter, trained where the data is.

A site turns its validation cases into evidence examples (the hub's engine on
the task's verified specialists, the hub's prompt template, the true label),
trains a LoRA adapter of the generalist on them with ``peft``, and takes part
in FedAvg over the adapter's weights. The result is a signed adapter bundle
(:mod:`site_agent.adapter._bundle`) that the hub verifies and loads into vLLM;
once the adapter's arbitration policy is fitted on the hub's answers, the
site publishes the next version of the bundle with the policy in its card
(:func:`write_policy_version`).

Needs the ``site`` extra (PyTorch, transformers, peft); imported on use.
"""

from site_agent.adapter._bundle import ADAPTER_FILES, write_adapter_bundle, write_policy_version
from site_agent.adapter._examples import TUNING_MODES, EvidenceExample, evidence_examples
from site_agent.adapter._train import AdapterRecipe, AdapterTrainer, LocalUpdate, fedavg_states

__all__ = [
    "ADAPTER_FILES",
    "TUNING_MODES",
    "AdapterRecipe",
    "AdapterTrainer",
    "EvidenceExample",
    "LocalUpdate",
    "evidence_examples",
    "fedavg_states",
    "write_adapter_bundle",
    "write_policy_version",
]
