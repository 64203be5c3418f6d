"""Differentially private training (DP-SGD through Opacus).

DP-SGD clips every example's gradient to ``max_grad_norm`` and adds Gaussian
noise to each batch's sum; batches are drawn by Poisson sampling so that the
privacy accountant's guarantee holds. BatchNorm mixes examples within a batch,
which per-example clipping cannot bound, so every BatchNorm layer is replaced
first, as Opacus requires. Two ways (``DPConfig.layers``):

- ``"head"`` (default): the pretrained backbone is frozen and each BatchNorm
  becomes its fixed eval-mode function (a per-channel scale and shift, so the
  pretrained features are unchanged); only the final classifier is trained.
  Few trained parameters means little total noise: this is what keeps a
  specialist useful at moderate epsilon (measured: full fine-tuning at
  epsilon 8 collapsed to the majority class, see docs/how-to/hospital.md).
- ``"all"``: every BatchNorm becomes GroupNorm (its learned scale and shift are
  kept) and every layer is trained.

The guarantee covers the training split and the model weights. It does not
cover the retrieval index (built from training embeddings; protected by its
own k and noise settings) nor the validation split used for early stopping and
temperature scaling.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from site_agent._compat import grouped_conv_sampler, quiet_opacus_accounting
from site_agent.errors import TrainingError

__all__ = [
    "DPConfig",
    "DPSession",
    "FrozenNorm",
    "freeze_batchnorm",
    "prepare_for_dp",
    "replace_batchnorm",
]

Accountant = Literal["rdp", "prv"]
DPLayers = Literal["head", "all"]


@dataclass(frozen=True)
class DPConfig:
    """A target privacy budget for DP-SGD."""

    epsilon: float
    delta: float
    max_grad_norm: float = 1.0  # per-example gradient clipping bound (L2)
    accountant: Accountant = "rdp"
    layers: DPLayers = "head"  # train the classifier on frozen features, or every layer

    def __post_init__(self) -> None:
        if self.layers not in ("head", "all"):
            raise TrainingError(f"--dp-layers must be 'head' or 'all', not {self.layers!r}")
        if not (self.epsilon > 0 and math.isfinite(self.epsilon)):
            raise TrainingError(f"--dp-epsilon must be a positive number, not {self.epsilon}")
        if not 0 < self.delta < 1:
            raise TrainingError(f"--dp-delta must lie strictly between 0 and 1, not {self.delta}")
        if not self.max_grad_norm > 0:
            raise TrainingError(f"the clipping norm must be positive, not {self.max_grad_norm}")

    def check_delta(self, n_train: int) -> None:
        """Refuses a delta of at least 1/n, which would allow publishing an example outright."""
        if self.delta >= 1.0 / max(n_train, 1):
            raise TrainingError(
                f"--dp-delta {self.delta:g} is not below 1/n = 1/{n_train}; "
                f"use at most {0.1 / max(n_train, 1):.1e}"
            )


def _groups(channels: int) -> int:
    return math.gcd(32, channels)


def _group_norm(bn: nn.modules.batchnorm._BatchNorm) -> nn.GroupNorm:
    channels = int(bn.num_features)
    norm = nn.GroupNorm(_groups(channels), channels, eps=bn.eps, affine=True)
    if bn.affine and bn.weight is not None and bn.bias is not None:
        with torch.no_grad():
            norm.weight.copy_(bn.weight)
            norm.bias.copy_(bn.bias)
    return norm


class FrozenNorm(nn.Module):
    """A BatchNorm layer's eval-mode function, fixed: ``x * scale + shift`` per channel.

    It has buffers, no parameters, and never looks at other examples.
    """

    scale: torch.Tensor
    shift: torch.Tensor

    def __init__(self, bn: nn.modules.batchnorm._BatchNorm) -> None:
        super().__init__()
        if bn.running_mean is None or bn.running_var is None:
            raise TrainingError("a BatchNorm layer without running statistics cannot be frozen")
        with torch.no_grad():
            scale = torch.rsqrt(bn.running_var + bn.eps)
            if bn.affine and bn.weight is not None:
                scale = scale * bn.weight
            shift = -bn.running_mean * scale
            if bn.affine and bn.bias is not None:
                shift = shift + bn.bias
        self.register_buffer("scale", scale.detach().clone())
        self.register_buffer("shift", shift.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The normalised ``x`` (channels on dimension 1)."""
        shape = (1, -1) + (1,) * (x.dim() - 2)
        return x * self.scale.view(shape) + self.shift.view(shape)


def _replace_norms(
    module: nn.Module, make: Callable[[nn.modules.batchnorm._BatchNorm], nn.Module]
) -> int:
    replaced = 0
    for name, child in list(module.named_children()):
        if isinstance(child, nn.modules.batchnorm._BatchNorm):
            norm = make(child)
            act, drop = getattr(child, "act", None), getattr(child, "drop", None)
            new: nn.Module = norm
            if isinstance(act, nn.Module) or isinstance(drop, nn.Module):
                new = nn.Sequential(
                    norm,
                    drop if isinstance(drop, nn.Module) else nn.Identity(),
                    act if isinstance(act, nn.Module) else nn.Identity(),
                )
            setattr(module, name, new)
            replaced += 1
        else:
            replaced += _replace_norms(child, make)
    return replaced


def replace_batchnorm(module: nn.Module) -> int:
    """Replaces every BatchNorm layer under ``module`` by GroupNorm, in place.

    timm's ``BatchNormAct2d`` (norm, then dropout, then activation in one
    layer) becomes ``Sequential(GroupNorm, dropout, activation)``, so the
    activation is kept. Returns how many layers were replaced.
    """
    return _replace_norms(module, _group_norm)


def freeze_batchnorm(module: nn.Module) -> int:
    """Replaces every BatchNorm layer under ``module`` by its :class:`FrozenNorm`, in place.

    In eval mode the network computes exactly what it did before. timm's
    ``BatchNormAct2d`` keeps its activation as in :func:`replace_batchnorm`.
    """
    return _replace_norms(module, FrozenNorm)


def _grouped_conv_grad_sample(
    layer: nn.Conv2d, activations: list[torch.Tensor], backprops: torch.Tensor
) -> dict[torch.Tensor, torch.Tensor]:
    """Per-example gradients of a grouped (e.g. depthwise) 2-D convolution.

    Opacus's own sampler multiplies every output channel with every input
    channel and then keeps the diagonal blocks, which for EfficientNet's
    depthwise layers means tensors of tens of gigabytes. This computes the
    diagonal blocks only.
    """
    from opacus.utils.tensor_utils import unfold2d

    n, groups = backprops.shape[0], layer.groups
    unfolded = unfold2d(
        activations[0].to(backprops.dtype),
        kernel_size=layer.kernel_size,
        padding=layer.padding,
        stride=layer.stride,
        dilation=layer.dilation,
    )  # [n, in * kh * kw, L]
    positions = unfolded.shape[-1]
    unfolded = unfolded.reshape(n, groups, -1, positions)
    grads = backprops.reshape(n, groups, -1, positions)
    out: dict[torch.Tensor, torch.Tensor] = {}
    if layer.weight.requires_grad:
        per_example = torch.einsum("ngoq,ngpq->ngop", grads, unfolded)
        out[layer.weight] = per_example.reshape(n, *layer.weight.shape).contiguous()
    if layer.bias is not None and layer.bias.requires_grad:
        out[layer.bias] = backprops.reshape(n, backprops.shape[1], -1).sum(dim=2)
    return out


def prepare_for_dp(net: nn.Module, layers: DPLayers = "head") -> int:
    """Makes ``net`` trainable by Opacus, in place: no BatchNorm, no in-place ops.

    ``layers="head"`` freezes every BatchNorm and every parameter except those
    of ``net.classifier``, which starts from zero; ``"all"`` puts GroupNorm in
    place of BatchNorm and trains everything. In-place activations would overwrite the outputs
    Opacus's hooks hold on to. Returns how many BatchNorm layers were replaced.
    """
    if layers == "head":
        classifier = getattr(net, "classifier", None)
        if not isinstance(classifier, nn.Module):
            raise TrainingError("--dp-layers head needs a network with a final classifier")
        replaced = freeze_batchnorm(net)
        for parameter in net.parameters():
            parameter.requires_grad_(False)
        for parameter in classifier.parameters():
            with torch.no_grad():
                parameter.zero_()  # a linear probe starts from "no opinion": logits 0
            parameter.requires_grad_(True)
    else:
        replaced = replace_batchnorm(net)
    for module in net.modules():
        if getattr(module, "inplace", None) is True:
            module.inplace = False  # type: ignore[assignment]
    return replaced


class DPSession:
    """Makes a model and optimiser private and accounts for every step.

    Build it before training; draw each epoch's batches from :meth:`batches`
    (Poisson sampling) and read :meth:`spent` at the end.
    """

    def __init__(
        self,
        net: nn.Module,
        optimizer: torch.optim.Optimizer,
        *,
        config: DPConfig,
        n_train: int,
        batch_size: int,
        epochs: int,
        generator: torch.Generator,
    ) -> None:
        from opacus import GradSampleModule
        from opacus.accountants import create_accountant
        from opacus.accountants.utils import get_noise_multiplier
        from opacus.optimizers import DPOptimizer
        from opacus.validators import ModuleValidator

        config.check_delta(n_train)
        errors = ModuleValidator.validate(net, strict=False)
        if errors:
            raise TrainingError(
                "this backbone cannot be trained with DP-SGD: "
                + "; ".join(str(e) for e in errors[:3])
            )
        self.config = config
        self.n_train = n_train
        self.sample_rate = min(1.0, batch_size / n_train)
        self.expected_batch = max(1, round(self.sample_rate * n_train))
        self.steps_per_epoch = max(1, round(1 / self.sample_rate))
        self._generator = generator
        with quiet_opacus_accounting():
            self.noise_multiplier = float(
                get_noise_multiplier(
                    target_epsilon=config.epsilon,
                    target_delta=config.delta,
                    sample_rate=self.sample_rate,
                    steps=self.steps_per_epoch * max(1, epochs),
                    accountant=config.accountant,
                )
            )
        self._patches = ExitStack()  # Opacus's sampler table, restored by close()
        self._patches.enter_context(grouped_conv_sampler(_grouped_conv_grad_sample))
        try:
            self.module = GradSampleModule(net)
            self.optimizer = DPOptimizer(
                optimizer,
                noise_multiplier=self.noise_multiplier,
                max_grad_norm=config.max_grad_norm,
                expected_batch_size=self.expected_batch,
                loss_reduction="mean",
                generator=None,
            )
            self._accountant: Any = create_accountant(config.accountant)
            self.optimizer.attach_step_hook(
                self._accountant.get_optimizer_hook_fn(sample_rate=self.sample_rate)
            )
        except BaseException:
            self._patches.close()
            raise

    def batches(self) -> list[torch.Tensor]:
        """One epoch of Poisson-sampled batches of row indices (may include empty ones)."""
        rows = []
        for _ in range(self.steps_per_epoch):
            mask = torch.rand(self.n_train, generator=self._generator) < self.sample_rate
            rows.append(torch.nonzero(mask).flatten())
        return rows

    def spent(self) -> float:
        """The epsilon spent so far at the configured delta."""
        if not self._accountant.history:
            return 0.0
        with quiet_opacus_accounting():
            return float(self._accountant.get_epsilon(delta=self.config.delta))

    @property
    def accountant_name(self) -> str:
        """The accountant, as the card records it."""
        return f"opacus-{self.config.accountant}"

    def close(self) -> None:
        """Removes Opacus's hooks and per-example gradients from the model."""
        self.module._close()
        self._patches.close()
