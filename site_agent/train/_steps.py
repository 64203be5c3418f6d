"""How an epoch's optimiser steps are drawn and scored: plainly, or under DP-SGD.

A training run holds one :class:`StepStrategy`, used as a context manager so
that whatever it attached to the model (Opacus's hooks) comes off whatever
happens. The run itself has no DP branch: everything that differs under DP-SGD
(Poisson batches, a per-example loss, the model and optimiser wrappers, the
budget spent, how Opacus's failures read) lives behind this interface.
"""

from __future__ import annotations

from types import TracebackType
from typing import Self

import torch
import torch.nn.functional as F  # noqa: N812

from protocol import DifferentialPrivacy
from site_agent.errors import TrainingError
from site_agent.train._dp import DPConfig, DPSession

__all__ = ["PlainSteps", "PrivateSteps", "StepStrategy"]


class StepStrategy:
    """One epoch's batches, the loss of a batch, and what the steps spent.

    A subclass sets ``module`` (what the forward pass runs through),
    ``optimizer`` (what ``step`` is called on) and ``steps_per_epoch``, and
    implements :meth:`batches` and :meth:`loss`; the rest defaults to plain
    training (nothing to undo, failures as they are, no budget spent).
    """

    module: torch.nn.Module
    optimizer: torch.optim.Optimizer
    steps_per_epoch: int

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        return None

    def batches(self) -> list[torch.Tensor]:
        """Row indices of one epoch's batches."""
        raise NotImplementedError

    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The (class-weighted) loss of one batch."""
        raise NotImplementedError

    def failure(self, exc: RuntimeError) -> Exception | None:
        """What a forward or backward failure becomes (``None``: re-raise it as it is)."""
        return None

    def privacy(self) -> DifferentialPrivacy | None:
        """The privacy budget spent so far (``None`` without DP-SGD)."""
        return None


class PlainSteps(StepStrategy):
    """A shuffled partition of the training rows per epoch (the last partial batch dropped)."""

    def __init__(
        self,
        module: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        *,
        n_train: int,
        batch_size: int,
        class_weights: torch.Tensor,
        generator: torch.Generator,
    ) -> None:
        self.module = module
        self.optimizer = optimizer
        self._n = n_train
        self._batch = min(batch_size, n_train)
        self.steps_per_epoch = max(1, n_train // self._batch)  # BatchNorm: no tiny last batch
        self._loss = torch.nn.CrossEntropyLoss(weight=class_weights)
        self._generator = generator

    def batches(self) -> list[torch.Tensor]:
        """A fresh shuffle, cut into ``steps_per_epoch`` full batches."""
        order = torch.randperm(self._n, generator=self._generator)
        return [order[i * self._batch : (i + 1) * self._batch] for i in range(self.steps_per_epoch)]

    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Class-weighted cross-entropy, averaged over the batch's weights."""
        loss: torch.Tensor = self._loss(logits, targets)
        return loss


class PrivateSteps(StepStrategy):
    """DP-SGD through Opacus: Poisson batches, per-example losses, the budget accounted."""

    def __init__(
        self,
        net: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        *,
        config: DPConfig,
        n_train: int,
        batch_size: int,
        epochs: int,
        class_weights: torch.Tensor,
        generator: torch.Generator,
        backbone: str,
    ) -> None:
        self._session = DPSession(
            net,
            optimizer,
            config=config,
            n_train=n_train,
            batch_size=batch_size,
            epochs=epochs,
            generator=generator,
        )
        self.module: torch.nn.Module = self._session.module
        self.optimizer: torch.optim.Optimizer = self._session.optimizer
        self.steps_per_epoch = self._session.steps_per_epoch
        self._weights = class_weights
        self._backbone = backbone

    @property
    def session(self) -> DPSession:
        """The Opacus session (noise multiplier, accountant)."""
        return self._session

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._session.close()  # Opacus's hooks off the model, whatever happened

    def batches(self) -> list[torch.Tensor]:
        """Poisson-sampled batches (some may be empty).

        A batch that drew nobody is still a step (noise only), as the accountant
        assumes: skipping it would spend less than is reported.
        """
        return self._session.batches()

    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Each example's loss depends on that example alone (per-example clipping)."""
        per_example = F.cross_entropy(logits, targets, reduction="none")
        return (per_example * self._weights[targets]).sum() / max(len(targets), 1)

    def failure(self, exc: RuntimeError) -> Exception | None:
        """Opacus's hooks refusing a backbone (e.g. an in-place residual add)."""
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return TrainingError(
            f"{self._backbone} cannot be trained with DP-SGD (Opacus's per-example gradients "
            f"failed: {first[:200]}); try tf_efficientnet_lite0"
        )

    def privacy(self) -> DifferentialPrivacy:
        """The epsilon spent at the configured delta, with the mechanism's settings."""
        session = self._session
        return DifferentialPrivacy(
            epsilon=max(session.spent(), 1e-6),
            delta=session.config.delta,
            accountant=session.accountant_name,
            max_grad_norm=session.config.max_grad_norm,
            noise_multiplier=session.noise_multiplier,
        )
