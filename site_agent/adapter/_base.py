"""The generalist's language model, loaded for LoRA tuning.

Two kinds of folder hold a generalist: a causal language model (SmolLM2, the
embedded generalist) and an InternVL-Chat checkpoint (MedDr's architecture: a
vision tower, a projector and a Llama-architecture language model under
``language_model.``). vLLM applies LoRA to a vision-language model's language
model only, so only that part is loaded and tuned here. What differs between
the two is recorded in :class:`BaseModel`:

- ``module_root``: where the served model's decoder layers live, which the
  adapter's tensor names must say (``language_model.model`` for InternVL):
  vLLM loads an adapter whose names match no module and then ignores it;
- the chat template: MedDr's tokenizer has none (the recipe passes
  :data:`generalist.MEDDR_CHAT_TEMPLATE` to vLLM), so the same one is used here.

Remote code is never run: the language model is built from transformers' own
classes and the checkpoint's tensors.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from site_agent.errors import AdapterTrainingError

__all__ = ["BaseModel", "load_base_model"]

#: InternVL-Chat's ``model_type``; its language model's tensors start with this prefix.
_INTERNVL = "internvl_chat"
_LANGUAGE = "language_model."


@dataclass(frozen=True)
class BaseModel:
    """A language model to tune: the model, its tokenizer, and where its layers are served."""

    model: Any  # a transformers PreTrainedModel (float32)
    tokenizer: Any
    module_root: str  # "model" or "language_model.model"


def _config(model_dir: Path) -> dict[str, Any]:
    try:
        config = json.loads((model_dir / "config.json").read_text())
    except FileNotFoundError as exc:
        raise AdapterTrainingError(f"no model in {model_dir} (config.json missing)") from exc
    except (OSError, ValueError) as exc:
        raise AdapterTrainingError(f"{model_dir}/config.json is unreadable: {exc}") from exc
    if not isinstance(config, dict):
        raise AdapterTrainingError(f"{model_dir}/config.json is not a JSON object")
    return config


def _language_model_of_internvl(model_dir: Path, config: dict[str, Any]) -> Any:
    """InternVL-Chat's language model, from ``llm_config`` and the ``language_model.`` tensors."""
    import torch
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForCausalLM

    settings = dict(config.get("llm_config") or {})
    model_type = settings.pop("model_type", None)
    if not isinstance(model_type, str):
        raise AdapterTrainingError(f"{model_dir}: llm_config names no model_type")
    settings.pop("architectures", None)
    try:
        llm_config = AutoConfig.for_model(model_type, **settings)
    except (ValueError, KeyError) as exc:
        raise AdapterTrainingError(f"{model_dir}: unknown language model {model_type!r}") from exc
    model = AutoModelForCausalLM.from_config(llm_config, dtype=torch.float32)  # type: ignore[no-untyped-call]
    state: dict[str, Any] = {}
    for path in sorted(model_dir.glob("*.safetensors")):
        for name, tensor in load_file(str(path)).items():
            if name.startswith(_LANGUAGE):
                state[name.removeprefix(_LANGUAGE)] = tensor.to(torch.float32)
    missing, unexpected = model.load_state_dict(state, strict=False)
    # A tied head has no tensor of its own; anything else missing is a broken checkpoint.
    missing = [m for m in missing if not (m == "lm_head.weight" and llm_config.tie_word_embeddings)]
    if missing or unexpected:
        raise AdapterTrainingError(
            f"{model_dir}: the language model's tensors do not match its config "
            f"(missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    return model


def load_base_model(model_dir: Path) -> BaseModel:
    """The language model in ``model_dir`` (float32), its tokenizer with a chat template.

    Raises:
        AdapterTrainingError: no usable model, or a tokenizer without a chat template.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    config = _config(model_dir)
    # trust_remote_code=False: a checkpoint's auto_map names code that is never run here.
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir), trust_remote_code=False)
    if config.get("model_type") == _INTERNVL:
        from generalist import MEDDR_CHAT_TEMPLATE

        model = _language_model_of_internvl(model_dir, config)
        if not tokenizer.chat_template:
            tokenizer.chat_template = MEDDR_CHAT_TEMPLATE
        return BaseModel(model, tokenizer, "language_model.model")
    if not tokenizer.chat_template:
        raise AdapterTrainingError(f"the tokenizer in {model_dir} has no chat template")
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    return BaseModel(model, tokenizer, "model")
