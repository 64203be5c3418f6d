"""Training a specialist: AdamW, cosine schedule, early stopping, time budget, calibration."""

from __future__ import annotations

import math
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol, cast

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812
from numpy.typing import NDArray
from safetensors.torch import save_model

from protocol import (
    DifferentialPrivacy,
    Preprocessing,
    ResizePolicy,
    calibrated_softmax,
    preprocess,
)
from site_agent._compat import torch_threads
from site_agent.data import LocalDataset
from site_agent.errors import TrainingError
from site_agent.train._dp import DPConfig, DPSession, prepare_for_dp
from site_agent.train._metrics import evaluate, fit_temperature
from site_agent.train._zoo import BackboneZoo, SpecialistNet, WeightsPolicy, build_specialist

__all__ = [
    "EpochReport",
    "TrainConfig",
    "TrainedSpecialist",
    "TrainingObserver",
    "train_specialist",
]


@dataclass(frozen=True)
class TrainConfig:
    """How to train. Units are in the names; ``None`` means the backbone's default / no limit."""

    backbone: str = "tf_efficientnet_lite0"
    weights: WeightsPolicy = WeightsPolicy.DEFAULT
    input_size: int | None = None  # pixels (square); default: the backbone's
    epochs: int = 30  # 0: no training, only calibrate and evaluate the initial weights
    batch_size: int = 64
    learning_rate: float = 1e-3
    weight_decay: float = 0.05
    patience: int = 5  # epochs without a better validation loss before stopping
    max_minutes: float | None = None  # wall-clock budget for the training epochs
    seed: int = 0
    augment: bool = True  # random translations of up to 1/16 of the image
    flip: bool = False  # also random horizontal flips (only where anatomy allows it)
    balance_classes: bool = True  # class-weighted loss (inverse frequency)
    threads: int | None = None  # torch CPU threads; default: all cores
    dp: DPConfig | None = None  # DP-SGD with this budget (and its trained layers)


@dataclass(frozen=True)
class EpochReport:
    """What one epoch achieved."""

    epoch: int
    train_loss: float
    val_loss: float
    val_accuracy: float
    val_auc: float | None
    seconds: float
    improved: bool


class TrainingObserver(Protocol):
    """Receives progress (the CLI draws a progress bar from it)."""

    def on_start(self, epochs: int, steps_per_epoch: int) -> None:
        """Training begins."""

    def on_step(self, epoch: int, step: int, loss: float) -> None:
        """One optimiser step finished."""

    def on_epoch(self, report: EpochReport) -> None:
        """One epoch finished and was validated."""


class _Silent:
    def on_start(self, epochs: int, steps_per_epoch: int) -> None:
        pass

    def on_step(self, epoch: int, step: int, loss: float) -> None:
        pass

    def on_epoch(self, report: EpochReport) -> None:
        pass


@dataclass
class TrainedSpecialist:
    """A trained, calibrated specialist (best validation epoch) and how it got there."""

    net: SpecialistNet
    backbone: str
    preprocessing: Preprocessing
    temperature: float
    history: list[EpochReport]
    best_epoch: int
    stop_reason: str
    train_seconds: float
    test_probs: NDArray[np.float64] = field(repr=False)
    privacy: DifferentialPrivacy | None = None  # the budget DP-SGD spent, if it was used

    def embed(self, images: NDArray[np.uint8], batch_size: int = 256) -> NDArray[np.float32]:
        """Embeddings of raw ``uint8 [N, H, W, C]`` images."""
        _, embeddings = _predict(self.net, preprocess(images, self.preprocessing), batch_size)
        return embeddings


def _predict(
    net: SpecialistNet, inputs: NDArray[np.float32], batch_size: int
) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
    net.eval()
    logits, embeddings = [], []
    with torch.inference_mode():
        for start in range(0, len(inputs), batch_size):
            batch_logits, batch_embeddings = net(
                torch.from_numpy(inputs[start : start + batch_size])
            )
            logits.append(batch_logits.numpy())
            embeddings.append(batch_embeddings.numpy())
    return np.concatenate(logits), np.concatenate(embeddings)


def _shift(batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random translation (the same for the whole batch), reflecting at the border."""
    pad = max(1, batch.shape[-1] // 16)
    padded = F.pad(batch, (pad, pad, pad, pad), mode="reflect")
    dy, dx = torch.randint(0, 2 * pad + 1, (2,), generator=generator).tolist()
    return padded[..., dy : dy + batch.shape[-2], dx : dx + batch.shape[-1]]


def _flip(batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Mirrors a random half of the batch left-right."""
    mask = torch.rand(batch.shape[0], generator=generator) < 0.5
    return torch.where(mask[:, None, None, None], batch.flip(-1), batch)


def train_specialist(
    dataset: LocalDataset,
    config: TrainConfig,
    zoo: BackboneZoo,
    *,
    checkpoint_dir: Path | None = None,
    observer: TrainingObserver | None = None,
    initial_state: Mapping[str, torch.Tensor] | None = None,
) -> TrainedSpecialist:
    """Trains, early-stops on validation loss, restores the best epoch and calibrates it.

    ``initial_state`` starts from given weights (a federated model) instead of
    the backbone's; with ``config.epochs == 0`` those weights are only
    calibrated and evaluated.

    Raises:
        UnknownBackboneError: the backbone is not in ``zoo``.
        TrainingError: the model cannot be built or the loss diverged.
    """
    with torch_threads(config.threads or os.cpu_count() or 1):
        return _train(
            dataset,
            config,
            zoo,
            checkpoint_dir=checkpoint_dir,
            observer=observer,
            initial_state=initial_state,
        )


def _train(
    dataset: LocalDataset,
    config: TrainConfig,
    zoo: BackboneZoo,
    *,
    checkpoint_dir: Path | None,
    observer: TrainingObserver | None,
    initial_state: Mapping[str, torch.Tensor] | None,
) -> TrainedSpecialist:
    observer = observer or _Silent()
    spec = zoo.get(config.backbone)
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    size = config.input_size or spec.default_input_size
    k = len(dataset.task.labels)
    net, mean, std = build_specialist(spec, k, dataset.channels, size, config.weights)
    if initial_state is not None:
        try:
            net.load_state_dict(dict(initial_state))
        except (RuntimeError, KeyError) as exc:
            raise TrainingError(f"the initial weights do not fit {spec.name}: {exc}") from exc
    if config.dp is not None:
        pretrained = initial_state is not None or config.weights is WeightsPolicy.HUB
        pretrained |= config.weights is WeightsPolicy.DEFAULT and spec.package_weights is not None
        if config.dp.layers == "head" and not pretrained:
            raise TrainingError(
                f"--dp-layers head trains only the classifier on pretrained features, and "
                f"{spec.name} starts from random weights here (--weights "
                f"{config.weights.value}); use --dp-layers all, or a backbone with weights"
            )
        prepare_for_dp(net, config.dp.layers)
    channels = dataset.channels
    if channels not in (1, 3):
        raise TrainingError(f"images must have 1 or 3 channels, not {channels}")
    preprocessing = Preprocessing(
        input_size=(size, size),
        channels=cast(Literal[1, 3], channels),
        mean=mean,
        std=std,
        resize=ResizePolicy.RESIZE,
    )
    x_train = torch.from_numpy(preprocess(dataset.train.images, preprocessing))
    y_train = torch.from_numpy(dataset.train.labels)
    x_val = preprocess(dataset.val.images, preprocessing)
    y_val = dataset.val.labels

    counts = np.bincount(dataset.train.labels, minlength=k).astype(np.float64)
    weights = len(y_train) / (k * np.maximum(counts, 1)) if config.balance_classes else np.ones(k)
    class_weights = torch.tensor(weights, dtype=torch.float32)
    loss_fn = torch.nn.CrossEntropyLoss(weight=class_weights)
    optimizer = torch.optim.AdamW(
        [p for p in net.parameters() if p.requires_grad],
        lr=config.learning_rate,
        weight_decay=config.weight_decay,
    )
    batch_size = min(config.batch_size, len(y_train))
    steps = max(1, len(y_train) // batch_size)  # drop the last partial batch (BatchNorm)
    dp: DPSession | None = None
    train_net: torch.nn.Module = net
    step_optimizer: torch.optim.Optimizer = optimizer
    if config.dp is not None:
        dp = DPSession(
            net,
            optimizer,
            config=config.dp,
            n_train=len(y_train),
            batch_size=batch_size,
            epochs=config.epochs,
            generator=generator,
        )
        steps, train_net, step_optimizer = dp.steps_per_epoch, dp.module, dp.optimizer
    try:
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
            optimizer, T_max=max(1, config.epochs * steps)
        )

        if checkpoint_dir is not None:
            checkpoint_dir.mkdir(parents=True, exist_ok=True)
        best_state = {name: t.detach().clone() for name, t in net.state_dict().items()}
        best_loss, best_epoch, stale = math.inf, 0, 0
        history: list[EpochReport] = []
        stop_reason = (
            f"finished {config.epochs} epochs"
            if config.epochs
            else "no training: the initial weights were calibrated and evaluated"
        )
        deadline = time.monotonic() + config.max_minutes * 60 if config.max_minutes else math.inf
        started = time.monotonic()
        observer.on_start(config.epochs, steps)
        for epoch in range(1, config.epochs + 1):
            epoch_start = time.monotonic()
            train_net.train()
            total, seen = 0.0, 0
            for step, rows in enumerate(_batches(len(y_train), batch_size, steps, generator, dp)):
                if not len(rows) and dp is None:
                    continue
                # DP-SGD: a Poisson batch that drew nobody is still a step (noise only), as
                # the accountant assumes; skipping it would spend less than is reported.
                inputs = x_train[rows]
                if config.augment:
                    inputs = _shift(inputs, generator)
                if config.flip:
                    inputs = _flip(inputs, generator)
                try:
                    logits, _ = train_net(inputs)
                except RuntimeError as exc:
                    if dp is None:
                        raise
                    raise _dp_failure(spec.name, exc) from exc
                if dp is None:
                    loss = loss_fn(logits, y_train[rows])
                else:  # each example's loss depends on that example alone (per-example clipping)
                    per_example = F.cross_entropy(logits, y_train[rows], reduction="none")
                    loss = (per_example * class_weights[y_train[rows]]).sum() / max(len(rows), 1)
                if not torch.isfinite(loss):
                    raise TrainingError(
                        f"the loss diverged at epoch {epoch} (try a lower learning rate)"
                    )
                step_optimizer.zero_grad(set_to_none=True)
                try:
                    loss.backward()
                except RuntimeError as exc:
                    if dp is None:
                        raise
                    raise _dp_failure(spec.name, exc) from exc
                step_optimizer.step()
                scheduler.step()
                loss_value = loss.item()
                total += loss_value * len(rows)
                seen += len(rows)
                observer.on_step(epoch, step + 1, loss_value)
                if time.monotonic() > deadline:
                    break
            val_logits, _ = _predict(net, x_val, 256)
            val_loss = float(loss_fn(torch.from_numpy(val_logits), torch.from_numpy(y_val)))
            val_eval = evaluate(calibrated_softmax(val_logits), y_val, dataset.task.labels)
            improved = val_loss < best_loss
            if improved:
                best_loss, best_epoch, stale = val_loss, epoch, 0
                best_state = {name: t.detach().clone() for name, t in net.state_dict().items()}
                if checkpoint_dir is not None:
                    save_model(net, str(checkpoint_dir / "best.safetensors"))
            else:
                stale += 1
            report = EpochReport(
                epoch,
                total / max(seen, 1),
                val_loss,
                val_eval.accuracy,
                val_eval.macro_auc,
                time.monotonic() - epoch_start,
                improved,
            )
            history.append(report)
            observer.on_epoch(report)
            if checkpoint_dir is not None:
                save_model(net, str(checkpoint_dir / "last.safetensors"))
            if time.monotonic() > deadline:
                stop_reason = f"time budget of {config.max_minutes} min reached after epoch {epoch}"
                break
            if stale >= config.patience:
                stop_reason = f"early stop: no better validation loss for {config.patience} epochs"
                break
        train_seconds = time.monotonic() - started
        privacy = None
        if dp is not None:
            privacy = DifferentialPrivacy(
                epsilon=max(dp.spent(), 1e-6),
                delta=dp.config.delta,
                accountant=dp.accountant_name,
                max_grad_norm=dp.config.max_grad_norm,
                noise_multiplier=dp.noise_multiplier,
            )
    finally:
        if dp is not None:  # Opacus's hooks off the model, whatever happened
            dp.close()
    net.load_state_dict(best_state)
    net.eval()
    val_logits, _ = _predict(net, x_val, 256)
    temperature = fit_temperature(val_logits, y_val)
    test_logits, _ = _predict(net, preprocess(dataset.test.images, preprocessing), 256)
    return TrainedSpecialist(
        net=net,
        backbone=spec.name,
        preprocessing=preprocessing,
        temperature=temperature,
        history=history,
        best_epoch=best_epoch,
        stop_reason=stop_reason,
        train_seconds=train_seconds,
        test_probs=calibrated_softmax(test_logits, temperature),
        privacy=privacy,
    )


def _dp_failure(backbone: str, exc: RuntimeError) -> TrainingError:
    """What Opacus's hooks refusing a backbone (e.g. an in-place residual add) becomes."""
    first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return TrainingError(
        f"{backbone} cannot be trained with DP-SGD (Opacus's per-example gradients failed: "
        f"{first[:200]}); try tf_efficientnet_lite0"
    )


def _batches(
    n: int, batch_size: int, steps: int, generator: torch.Generator, dp: DPSession | None
) -> list[torch.Tensor]:
    """One epoch of row indices: a shuffled partition, or Poisson samples under DP-SGD."""
    if dp is not None:
        return dp.batches()
    order = torch.randperm(n, generator=generator)
    return [order[step * batch_size : (step + 1) * batch_size] for step in range(steps)]
