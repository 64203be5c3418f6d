"""The generalist's evidence-tuned LoRA adapter, trained where the data is.

A site turns its validation cases into evidence examples (the hub's engine on
the task's verified specialists, the hub's prompt template, the true label),
trains a LoRA adapter of the generalist on them with ``peft``, and takes part
in FedAvg over the adapter's weights. The result is a signed adapter bundle
(:mod:`site_agent.adapter._bundle`) that the hub verifies and loads into vLLM;
its arbitration policy is fitted either on the hub's answers (the site then
publishes the next version of the bundle with the policy in its card:
:func:`write_policy_version`) or, deployed, at the sites themselves, on their
own copy of the tuned generalist (:class:`LocalGeneralist`), the policy then
going into the bundle's first version.

Needs the ``site`` extra (PyTorch, transformers, peft); imported on use.
"""

from site_agent.adapter._bundle import ADAPTER_FILES, write_adapter_bundle, write_policy_version
from site_agent.adapter._examples import TUNING_MODES, EvidenceExample, evidence_examples
from site_agent.adapter._score import LocalGeneralist
from site_agent.adapter._train import AdapterRecipe, AdapterTrainer, LocalUpdate, fedavg_states

__all__ = [
    "ADAPTER_FILES",
    "TUNING_MODES",
    "AdapterRecipe",
    "AdapterTrainer",
    "EvidenceExample",
    "LocalGeneralist",
    "LocalUpdate",
    "evidence_examples",
    "fedavg_states",
    "write_adapter_bundle",
    "write_policy_version",
]
