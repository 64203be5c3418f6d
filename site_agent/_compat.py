"""Workarounds for the site agent's dependencies, in one place.

Each names the version it was written against; ``tests/test_compat.py`` fails
when one stops working or stops being needed (a dependency changed), so that
it is revisited rather than carried forever.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

__all__ = [
    "OPACUS_CHECKED",
    "grouped_conv_sampler",
    "quiet_legacy_onnx_export",
    "quiet_opacus_accounting",
    "torch_threads",
]

#: Opacus's own Conv2d sampler (checked on 1.6.0) computes a grouped convolution's
#: per-example gradients as a full out x in product and then keeps the diagonal
#: blocks: for EfficientNet's depthwise layers, tensors of tens of gigabytes.
OPACUS_CHECKED = "1.6.0"


@contextmanager
def grouped_conv_sampler(sampler: Callable[..., Any]) -> Iterator[None]:
    """Routes grouped 2-D convolutions to ``sampler`` inside the block (Opacus's otherwise).

    Opacus looks its samplers up in a class-level table at every backward
    pass, so the block must span the training; the table is restored after.
    """
    from opacus import GradSampleModule
    from opacus.grad_sample.conv import compute_conv_grad_sample
    from torch import nn

    table = GradSampleModule.GRAD_SAMPLERS
    before = table.get(nn.Conv2d)

    def route(layer: nn.Conv2d, activations: Any, backprops: Any) -> Any:
        if layer.groups > 1 and len(backprops) and isinstance(layer.padding, tuple):
            return sampler(layer, activations, backprops)
        return compute_conv_grad_sample(layer, activations, backprops)

    table[nn.Conv2d] = route
    try:
        yield
    finally:
        if before is None:
            table.pop(nn.Conv2d, None)
        else:
            table[nn.Conv2d] = before


@contextmanager
def quiet_opacus_accounting() -> Iterator[None]:
    """Silences Opacus's accounting warnings inside the block.

    Opacus (1.6.0) warns at every epsilon it computes that the RDP orders may be
    suboptimal; the budget is right, and the warning floods the training log.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", module=r"opacus\.")
        yield


@contextmanager
def quiet_legacy_onnx_export() -> Iterator[None]:
    """Silences the TorchScript ONNX exporter's warnings inside the block.

    torch (checked on 2.15) deprecates that exporter with two DeprecationWarnings
    at every export; it is kept because it exports every model of the zoo without
    onnxscript. Tracing timm models also raises TracerWarnings for shape checks on
    the fixed example; the parity gate checks the result.
    """
    from torch.jit._trace import TracerWarning

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=TracerWarning)
        yield


@contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """Torch's CPU thread count is process-wide: set it for the block, then restore it."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(max(1, count))
    try:
        yield
    finally:
        torch.set_num_threads(before)
