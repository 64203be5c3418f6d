"""The generalist's evidence-tuned LoRA adapter, trained where the data is.

A site turns its validation cases into evidence examples (the hub's engine on
the task's verified specialists, the hub's prompt template, the true label),
trains a LoRA adapter of the generalist on them with ``peft``, and takes part
in FedAvg over the adapter's weights. The result is a signed adapter bundle
(:mod:`site_agent.adapter._bundle`), its arbitration policy fitted at the
sites on their own copy of the tuned generalist (:class:`LocalGeneralist`)
and carried in its card. It takes effect only when enough of the sites that
trained it co-sign it, each after its own checks (:func:`check_for_endorsement`);
the hub then verifies it and loads it into vLLM.

Needs the ``site`` extra (PyTorch, transformers, peft); imported on use.
"""

from site_agent.adapter._bundle import ADAPTER_FILES, base_model_sha256, write_adapter_bundle
from site_agent.adapter._endorse import bundle_weights, check_for_endorsement, weights_digest
from site_agent.adapter._examples import TUNING_MODES, EvidenceExample, evidence_examples
from site_agent.adapter._score import LocalGeneralist
from site_agent.adapter._train import AdapterRecipe, AdapterTrainer, LocalUpdate

__all__ = [
    "ADAPTER_FILES",
    "TUNING_MODES",
    "AdapterRecipe",
    "AdapterTrainer",
    "EvidenceExample",
    "LocalGeneralist",
    "LocalUpdate",
    "base_model_sha256",
    "bundle_weights",
    "check_for_endorsement",
    "evidence_examples",
    "weights_digest",
    "write_adapter_bundle",
]
