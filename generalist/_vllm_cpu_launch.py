"""Starts vLLM's OpenAI server on the CPU, its LoRA ops one matrix product per adapter.

Run by the vLLM environment's Python (``EmbeddedServer``), never imported by gsco:
it imports only vLLM and torch.

Why: vLLM's CPU backend applies LoRA with its PyTorch reference ops
(``vllm.lora.ops.torch_ops``), which gather each token's adapter matrices
(``weights[indices]``, a ``[tokens, out, in]`` copy) and multiply token by token
(``einsum("bi,boi->bo")``). For a 300-token GSCo prompt that is thousands of
matrix-vector products and gigabytes of copies per request: measured here (2 cores,
SmolLM2-135M, rank-16 slots), an adapter's requests ran at 1.0-1.4 per second
against 7.6-9.2 for the base model on the same server. Here every token of one
adapter is multiplied at once (``inputs[rows] @ weights[adapter].T``), the same
products summed in another order: the answers are those of the reference ops up to
float rounding. Indices keep the reference's meaning (a negative one selects from
the end, as ``weights[indices]`` does), and anything the grouped form does not
cover (a shape it was not written for) goes to vLLM's own op.
``GSCO_VLLM_LORA_OPS=reference`` leaves vLLM's ops in place.

The patch is applied when this file is imported, and the server is started from
here (not with ``runpy``), so this file stays the main module: an engine or worker
process that multiprocessing starts with ``spawn`` imports it again and is patched
too; one started with ``fork`` inherits the patch.
"""

from __future__ import annotations

import os
import sys
from typing import Any


def _per_adapter(inputs: Any, weights: Any, indices: Any, dtype: Any) -> Any:
    """``einsum("bi,boi->bo", inputs, weights[indices])``, one product per adapter; or None."""
    import torch

    if weights.dim() == 4:
        weights = weights.squeeze(dim=1)
    if inputs.dim() != 2 or weights.dim() != 3 or indices.dim() != 1:
        return None
    if indices.shape[0] != inputs.shape[0] or inputs.shape[0] == 0:
        return None
    inputs = inputs.to(dtype=dtype)
    adapters = torch.unique(indices).tolist()
    if len(adapters) == 1:
        return inputs @ weights[adapters[0]].to(dtype=dtype).T
    outputs = inputs.new_empty((inputs.shape[0], weights.shape[1]))
    for adapter in adapters:
        rows = indices == adapter
        outputs[rows] = inputs[rows] @ weights[adapter].to(dtype=dtype).T
    return outputs


def _patch() -> bool:
    if os.environ.get("GSCO_VLLM_LORA_OPS") == "reference":  # vLLM's own ops (the benchmark)
        return False
    try:
        import vllm.lora.ops.torch_ops as package  # type: ignore[import-not-found]
        import vllm.lora.ops.torch_ops.lora_ops as ops  # type: ignore[import-not-found]
        import vllm.lora.punica_wrapper.punica_cpu as cpu  # type: ignore[import-not-found]
    except ImportError as exc:  # another vLLM layout: its own ops serve, slowly
        print(f"gsco: vLLM's LoRA ops left as they are ({exc})", file=sys.stderr, flush=True)
        return False
    reference = (ops.bgmv_shrink, ops.bgmv_expand, ops.bgmv_expand_slice)

    def bgmv_shrink(
        inputs: Any, lora_b_weights: Any, output_tensor: Any, lora_indices_tensor: Any,
        scaling: float = 1.0,
    ) -> None:  # fmt: skip
        outputs = _per_adapter(inputs, lora_b_weights, lora_indices_tensor, output_tensor.dtype)
        if outputs is None:
            reference[0](inputs, lora_b_weights, output_tensor, lora_indices_tensor, scaling)
            return
        output_tensor[:, : outputs.shape[1]] = scaling * outputs[:]

    def bgmv_expand(
        inputs: Any, lora_b_weights: Any, output_tensor: Any, lora_indices_tensor: Any,
        add_inputs: bool = True,
    ) -> None:  # fmt: skip
        outputs = _per_adapter(inputs, lora_b_weights, lora_indices_tensor, output_tensor.dtype)
        if outputs is None:
            reference[1](inputs, lora_b_weights, output_tensor, lora_indices_tensor, add_inputs)
            return
        limit = output_tensor.shape[0]
        if outputs.shape[0] == 1 and output_tensor.shape[0] != 1:
            limit = 1
        common = min(outputs.shape[1], output_tensor.shape[1])
        if add_inputs:
            output_tensor[:, :common] += outputs[:limit, :common]
        else:
            output_tensor[:, :common] = outputs[:limit, :common]

    def bgmv_expand_slice(
        inputs: Any, lora_b_weights: Any, output_tensor: Any, lora_indices_tensor: Any,
        slice_offset: int, slice_size: int, add_inputs: bool = True,
    ) -> None:  # fmt: skip
        outputs = _per_adapter(inputs, lora_b_weights, lora_indices_tensor, output_tensor.dtype)
        if outputs is None:
            reference[2](
                inputs, lora_b_weights, output_tensor, lora_indices_tensor,
                slice_offset, slice_size, add_inputs,
            )  # fmt: skip
            return
        if add_inputs:
            output_tensor[:, slice_offset : slice_offset + slice_size] += outputs[:]
        else:
            output_tensor[:, slice_offset : slice_offset + slice_size] = outputs[:]

    # The sgmv_* (prefill) ops call these through the module's globals; the CPU
    # wrapper imported the names for the decode steps.
    for module in (ops, package, cpu):
        module.bgmv_shrink = bgmv_shrink
        module.bgmv_expand = bgmv_expand
        module.bgmv_expand_slice = bgmv_expand_slice
    return True


_PATCHED = _patch()

if __name__ == "__main__":
    if _PATCHED:
        print("gsco: vLLM's CPU LoRA ops run one product per adapter", file=sys.stderr, flush=True)
    # What ``python -m vllm.entrypoints.openai.api_server`` runs, called from here so
    # that this file stays the main module its spawned processes import again.
    from vllm.entrypoints.launchers.api_server.entry import main  # type: ignore[import-not-found]

    main()
