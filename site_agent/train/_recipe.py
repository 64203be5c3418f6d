"""The training recipe a site gets when it passes nothing: chosen from its data, within a budget.

What is decided from the data, before any training (each choice with its
reason, recorded in ``metrics.json``):

- **backbone**: ResNet-18 from scratch at the images' own size, the network
  that MedMNIST's own baselines and the plain timm loop use (EfficientNet-Lite0
  from its packaged ImageNet weights under DP-SGD, and as a search candidate
  where a step of it costs no more than :data:`COST_CEILING` times ResNet-18's);
- **input size**: the images' own size (never upsampled), raised only to the
  backbone's real minimum, and halved while a measured training step says the
  planned epochs would not fit in half the time budget;
- **batch size** from the training-set size: about 30 steps per epoch, 64 to
  128 (32 below 256 images). A CPU step costs little more for 128 images than
  for 64 (per image 1.45 against 1.79 ms for ResNet-18 at 28 px here, 2.36 at
  32), so batches are as large as the set's size allows;
- **learning rate**: AdamW (fused) at 3e-3 from scratch and 5e-4 to fine-tune
  pretrained weights; the search also tries the plain loop's 1e-3;
- **epochs and patience**: 12 epochs, more for tiny sets so that the model
  sees at least :data:`MIN_STEPS` optimiser steps, and a patience of half of
  them (the cosine schedule's last epochs are usually its best);
- **augmentation**: small random shifts always; left-right mirroring only where
  the task says the anatomy allows it (``TaskSpec.mirroring``).

Batch-norm statistics are each epoch's own average
(``TrainConfig.epoch_bn_stats``): with PyTorch's default momentum a small set's
few steps per epoch leave evaluation with statistics the network never had.

Then a short search over what matters most and costs least to try, scored on
the validation split only: the learning rate (3e-3 or 1e-3), the cumulative-link
head for ordinal tasks, and the pretrained backbone where it is affordable. It
is one rung of successive halving in which each trial is the first epochs of
the run it would become (about :data:`RUNG_STEPS` optimiser steps, at most a
sixth of the planned epochs): the winner goes on from where its trial stopped,
so nothing is trained twice. The candidates beyond the first may cost at most
:data:`SEARCH_SHARE` of the planned training, measured with a timed step of
each backbone before anything trains; those that do not fit are named in the
reasons. ``bench/recipe.py`` measures the result against a plain timm loop.

No search runs under DP-SGD (every trial would touch the training data and
spend privacy budget that the accountant does not see), from given initial
weights (a federated model), or when the flags leave nothing to choose.
Explicit flags always win over the recipe.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from protocol import TaskType
from site_agent.data import LocalDataset
from site_agent.train._loop import (
    InputCache,
    TrainConfig,
    TrainedSpecialist,
    TrainingObserver,
    TrainingRun,
)
from site_agent.train._zoo import (
    BackboneSpec,
    BackboneZoo,
    HeadKind,
    WeightsPolicy,
    build_specialist,
)

__all__ = [
    "COST_CEILING",
    "DEFAULT_MAX_MINUTES",
    "MIN_STEPS",
    "RUNG_STEPS",
    "SEARCH_RATE",
    "SEARCH_SHARE",
    "Recipe",
    "RecipeFlags",
    "Trial",
    "plan_recipe",
    "train_with_recipe",
]

#: The time budget of ``gsco site train`` when none is given (minutes).
DEFAULT_MAX_MINUTES = 30.0
#: Optimiser steps each search candidate takes before the best one is kept (whole epochs,
#: at most a sixth of the planned ones): fewer give a validation loss still near chance.
RUNG_STEPS = 30
#: What the search's extra candidates may cost, as a share of the planned training.
SEARCH_SHARE = 0.35
#: A candidate whose training step costs more than this multiple of the base's is not tried.
COST_CEILING = 1.25
#: Optimiser steps that even a tiny training set gets (by more epochs).
MIN_STEPS = 60
#: The backbone trained by default, and the pretrained one (DP-SGD; a search candidate).
SCRATCH = ("resnet18", WeightsPolicy.SCRATCH)
PRETRAINED = ("tf_efficientnet_lite0", WeightsPolicy.DEFAULT)
#: AdamW's learning rate from scratch, and the one the search also tries. 3e-3 beat the
#: plain loop's 1e-3 on all three tasks measured (BreastMNIST, 300 and 4,708 PneumoniaMNIST
#: images; ResNet-18 at 28 px, three seeds on the small ones); the search keeps 1e-3 in play.
SCRATCH_RATE = 3e-3
SEARCH_RATE = 1e-3
_BASE_EPOCHS = 12


@dataclass(frozen=True)
class RecipeFlags:
    """What the user set explicitly; ``None`` leaves the choice to the recipe."""

    backbone: str | None = None
    weights: WeightsPolicy | None = None
    input_size: int | None = None
    batch_size: int | None = None
    learning_rate: float | None = None
    epochs: int | None = None
    patience: int | None = None
    flip: bool | None = None
    head: HeadKind | None = None


@dataclass(frozen=True)
class Trial:
    """One search candidate after its rung, scored on validation."""

    name: str
    backbone: str
    weights: str
    head: str
    input_size: int
    learning_rate: float
    epochs: int
    val_loss: float
    val_accuracy: float
    val_auc: float | None
    seconds: float
    kept: bool

    def as_dict(self) -> dict[str, object]:
        """JSON-ready."""
        return dict(vars(self))


@dataclass(frozen=True)
class Recipe:
    """A planned recipe: the base configuration, why, and the candidates to try."""

    config: TrainConfig
    reasons: dict[str, str]
    candidates: tuple[TrainConfig, ...]  # one: no search
    max_minutes: float
    trials: tuple[Trial, ...] = field(default=())
    rung_epochs: int = 1  # epochs each candidate trains before the search keeps one

    @property
    def search(self) -> str:
        """How the recipe was settled, in words."""
        if len(self.candidates) == 1:
            return "none: " + self.reasons.get("search", "nothing left to choose")
        return (
            f"successive halving, one rung: {len(self.candidates)} candidates x "
            f"{self.rung_epochs} epochs on the validation split, the best continued"
        )

    def as_dict(self) -> dict[str, object]:
        """JSON-ready (``metrics.json``'s ``recipe``)."""
        return {
            "max_minutes": self.max_minutes,
            "search": self.search,
            "reasons": dict(self.reasons),
            "trials": [trial.as_dict() for trial in self.trials],
        }


def _power_of_two(value: float) -> int:
    return int(2 ** round(math.log2(max(value, 1.0))))


def _seconds_per_image(
    zoo: BackboneZoo, backbone: str, batch_size: int, size: int, channels: int, classes: int
) -> float:
    """One training step's measured cost per image at ``size`` (after a warm-up step)."""
    spec = zoo.get(backbone)
    net, _, _ = build_specialist(spec, classes, channels, size, WeightsPolicy.SCRATCH)
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-4, fused=True)
    batch = min(batch_size, 32)
    x = torch.zeros(batch, channels, size, size)
    y = torch.zeros(batch, dtype=torch.long)
    seconds = math.inf
    for _ in range(2):
        started = time.monotonic()
        logits, _ = net(x)
        loss = torch.nn.functional.cross_entropy(logits, y)
        optimizer.zero_grad()
        loss.backward()  # type: ignore[no-untyped-call]
        optimizer.step()
        seconds = time.monotonic() - started
    return seconds / batch


def plan_recipe(
    dataset: LocalDataset,
    flags: RecipeFlags,
    zoo: BackboneZoo,
    *,
    base: TrainConfig,
    max_minutes: float | None = None,
    searchable: bool = True,
) -> Recipe:
    """Chooses what ``flags`` leave open from ``dataset`` (see the module's docstring).

    ``base`` carries what is not the recipe's to choose (seed, threads, DP).
    ``searchable=False`` settles the recipe from the data alone.
    """
    budget = max_minutes if max_minutes is not None else DEFAULT_MAX_MINUTES
    n = len(dataset.train)
    reasons: dict[str, str] = {}
    backbone, weights = _backbone(flags, base, reasons)
    spec = zoo.get(backbone)
    batch = min(_batch_size(flags, n, reasons), n)
    lr = _rate(flags, weights, reasons)
    steps = max(1, math.ceil(n / batch))
    epochs = _epochs(flags, steps, reasons)
    flip = _flip(flags, dataset, reasons)
    head = _head(flags, dataset, base, reasons)
    native = int(dataset.train.images.shape[1])
    cost = _StepCosts(zoo, dataset.channels, len(dataset.task.labels), batch)
    size = _input_size(flags, spec, native, n, epochs, budget, cost, reasons)
    if flags.epochs is None and not spec.fixed_size:
        epochs = _epochs_in_budget(epochs, cost(backbone, size) * n, budget, reasons)
    patience = _patience(flags, epochs, reasons)
    config = replace(
        base,
        backbone=backbone,
        weights=weights,
        batch_size=batch,
        input_size=size,
        epochs=epochs,
        learning_rate=lr,
        patience=patience,
        flip=flip,
        augment=True,
        max_minutes=budget,
        head=head,
    )
    candidates = [config]
    rung = min(math.ceil(RUNG_STEPS / steps), max(1, epochs // 6))
    if not searchable:
        reasons["search"] = "not searched (DP-SGD or given initial weights)"
    elif epochs < 3 * rung:
        reasons["search"] = f"too few epochs ({epochs}) to search"
    else:
        candidates, left_out = _candidates(
            config, flags, zoo, native, dataset.task.task_type, cost, rung
        )
        if left_out:
            reasons["search_left_out"] = "; ".join(left_out)
        if len(candidates) == 1:
            reasons["search"] = "every choice the search makes was given" + (
                "" if not left_out else " or does not fit its share of the budget"
            )
    return Recipe(config, reasons, tuple(candidates), budget, rung_epochs=rung)


def _backbone(
    flags: RecipeFlags, base: TrainConfig, reasons: dict[str, str]
) -> tuple[str, WeightsPolicy]:
    backbone, weights = SCRATCH
    if flags.backbone is not None:
        reasons["backbone"] = "given"
        return flags.backbone, flags.weights or WeightsPolicy.DEFAULT
    if base.dp is not None:
        backbone, weights = PRETRAINED
        weights = flags.weights or weights
        reasons["backbone"] = f"{backbone} ({weights.value}): DP-SGD needs pretrained features"
        return backbone, weights
    weights = flags.weights or weights
    reasons["backbone"] = (
        f"{backbone} ({weights.value}) at the images' size, as MedMNIST's baselines"
    )
    return backbone, weights


def _batch_size(flags: RecipeFlags, n: int, reasons: dict[str, str]) -> int:
    if flags.batch_size is not None:
        reasons["batch_size"] = "given"
        return flags.batch_size
    floor = 64 if n >= 256 else 32
    reasons["batch_size"] = (
        f"about 30 steps per epoch for {n} training images, at least {floor} "
        "(a CPU step costs little more for a larger batch)"
    )
    return min(128, max(floor, _power_of_two(n / 30)))


def _rate(flags: RecipeFlags, weights: WeightsPolicy, reasons: dict[str, str]) -> float:
    if flags.learning_rate is not None:
        reasons["learning_rate"] = "given"
        return flags.learning_rate
    reasons["learning_rate"] = (
        f"{SCRATCH_RATE:g} from scratch, 5e-4 to fine-tune pretrained weights"
    )
    return _learning_rate(weights)


def _epochs(flags: RecipeFlags, steps: int, reasons: dict[str, str]) -> int:
    if flags.epochs is not None:
        reasons["epochs"] = "given"
        return flags.epochs
    reasons["epochs"] = (
        f"{_BASE_EPOCHS}, or enough for {MIN_STEPS} optimiser steps at {steps} per epoch"
    )
    return min(60, max(_BASE_EPOCHS, math.ceil(MIN_STEPS / steps)))


def _flip(flags: RecipeFlags, dataset: LocalDataset, reasons: dict[str, str]) -> bool:
    if flags.flip is not None:
        reasons["flip"] = "given"
        return flags.flip
    flip = dataset.task.mirroring
    reasons["flip"] = (
        "the task allows left-right mirroring"
        if flip
        else "the task does not say that left-right mirroring is allowed"
    )
    return flip


def _head(
    flags: RecipeFlags, dataset: LocalDataset, base: TrainConfig, reasons: dict[str, str]
) -> HeadKind:
    if flags.head is not None:
        reasons["head"] = "given"
    elif dataset.task.task_type is not TaskType.ORDINAL:
        reasons["head"] = "softmax: the labels are not ordered"
    elif base.dp is not None:
        reasons["head"] = "softmax: DP-SGD cannot train the ordinal head"
    else:
        reasons["head"] = "softmax first; the search also tries the cumulative-link head"
    return flags.head or HeadKind.SOFTMAX


def _input_size(
    flags: RecipeFlags,
    spec: BackboneSpec,
    native: int,
    n: int,
    epochs: int,
    budget: float,
    cost: _StepCosts,
    reasons: dict[str, str],
) -> int:
    """The images' own size, halved while half the budget cannot train that many epochs."""
    if flags.input_size is not None:
        reasons["input_size"] = "given"
        return flags.input_size
    if spec.fixed_size:
        reasons["input_size"] = f"{spec.name} is built for {spec.default_input_size} px"
        return spec.default_input_size
    size = max(native, spec.min_input_size)
    why = (
        f"the images' own size ({native} px)"
        if size == native
        else f"{spec.name}'s minimum ({size} px; the images are {native} px)"
    )
    while size > max(28, spec.min_input_size):
        per_image = cost(spec.name, size)
        planned_minutes = per_image * n * epochs * 1.3 / 60  # 1.3: validation, augmentation
        if planned_minutes <= budget / 2:
            break
        why = (
            f"halved from {native} px: {epochs} epochs at {size} px were measured at "
            f"{planned_minutes:.0f} min, over half the {budget:g} min budget"
        )
        size = max(size // 2, 28, spec.min_input_size)
    reasons["input_size"] = why
    return size


def _epochs_in_budget(
    epochs: int, seconds_per_epoch: float, budget: float, reasons: dict[str, str]
) -> int:
    """The epochs the whole schedule can run within the budget, the search's share included.

    A run cut by the deadline stops before its cosine schedule has annealed.
    """
    minutes = seconds_per_epoch * epochs * 1.3 * (1 + SEARCH_SHARE) / 60
    if minutes <= budget:
        return epochs
    fitted = max(1, int(epochs * budget / minutes))
    reasons["epochs"] += (
        f"; cut to {fitted}: {epochs} were measured at {minutes:.0f} min with the "
        f"search, over the {budget:g} min budget"
    )
    return fitted


def _patience(flags: RecipeFlags, epochs: int, reasons: dict[str, str]) -> int:
    if flags.patience is not None:
        reasons["patience"] = "given"
        return flags.patience
    reasons["patience"] = "half of the epochs, at least 4"
    return max(4, epochs // 2)


class _StepCosts:
    """Measured seconds per training image of each backbone and size, measured once."""

    def __init__(self, zoo: BackboneZoo, channels: int, classes: int, batch: int) -> None:
        self._zoo, self._channels, self._classes, self._batch = zoo, channels, classes, batch
        self._seen: dict[tuple[str, int], float] = {}

    def __call__(self, backbone: str, size: int) -> float:
        key = (backbone, size)
        if key not in self._seen:
            self._seen[key] = _seconds_per_image(
                self._zoo, backbone, self._batch, size, self._channels, self._classes
            )
        return self._seen[key]


def _learning_rate(weights: WeightsPolicy) -> float:
    return SCRATCH_RATE if weights is WeightsPolicy.SCRATCH else 5e-4


def _candidates(
    config: TrainConfig,
    flags: RecipeFlags,
    zoo: BackboneZoo,
    native: int,
    task_type: TaskType,
    cost: _StepCosts,
    rung: int,
) -> tuple[list[TrainConfig], list[str]]:
    """The base, then what fits :data:`SEARCH_SHARE`: another rate, the ordinal head, Lite0.

    Returns the candidates and, in words, those left out for their cost.
    """
    wanted: list[TrainConfig] = []
    if flags.learning_rate is None and config.weights is WeightsPolicy.SCRATCH:
        wanted.append(replace(config, learning_rate=SEARCH_RATE))
    if flags.head is None and task_type is TaskType.ORDINAL:
        wanted.append(replace(config, head=HeadKind.CUMULATIVE_LINK))
    if flags.backbone is None:
        name, weights = PRETRAINED if config.backbone != PRETRAINED[0] else SCRATCH
        spec = zoo.get(name)
        weights = flags.weights or weights
        size = config.input_size  # given, or the base's (possibly halved) size ...
        if flags.input_size is None:  # ... raised to this backbone's minimum
            size = max(min(native, size or native), spec.min_input_size)
        lr = flags.learning_rate or _learning_rate(weights)
        wanted.append(replace(config, backbone=name, weights=weights, input_size=size,
                              learning_rate=lr))  # fmt: skip
    out: list[TrainConfig] = [config]
    left_out: list[str] = []
    if not wanted:
        return out, left_out
    size = config.input_size or zoo.get(config.backbone).default_input_size
    base_cost = cost(config.backbone, size)
    allowance = SEARCH_SHARE * config.epochs * base_cost
    for candidate in wanted:
        same_network = candidate.backbone == config.backbone
        c_size = candidate.input_size or zoo.get(candidate.backbone).default_input_size
        c_cost = base_cost if same_network else cost(candidate.backbone, c_size)
        if c_cost > COST_CEILING * base_cost:
            left_out.append(
                f"{_name(candidate)}: a step costs {c_cost / base_cost:.1f}x the base's"
            )
        elif rung * c_cost > allowance:
            left_out.append(f"{_name(candidate)}: over the search's share of the budget")
        else:
            out.append(candidate)
            allowance -= rung * c_cost
    return out, left_out


def _name(config: TrainConfig) -> str:
    where = f"{config.backbone}/{config.weights.value}@{config.input_size}px"
    head = "" if config.head is HeadKind.SOFTMAX else f" {config.head.value}"
    return f"{where} lr={config.learning_rate:g}{head}"


def train_with_recipe(
    dataset: LocalDataset,
    recipe: Recipe,
    zoo: BackboneZoo,
    *,
    checkpoint_dir: Path | None = None,
    observer: TrainingObserver | None = None,
    on_trial: Callable[[Trial], None] | None = None,
    initial_state: Mapping[str, torch.Tensor] | None = None,
) -> tuple[TrainedSpecialist, Recipe]:
    """Runs the search (if any), continues the best candidate and returns it calibrated.

    The budget covers the search and the training together: the winner stops
    at ``recipe.max_minutes`` from the start of the first trial. Returns the
    trained specialist and the recipe with the chosen configuration and trials.
    """
    started = time.monotonic()
    deadline = started + recipe.max_minutes * 60
    inputs = InputCache(dataset)
    if len(recipe.candidates) == 1:
        run = TrainingRun(
            dataset,
            recipe.config,
            zoo,
            checkpoint_dir=checkpoint_dir,
            observer=observer,
            initial_state=initial_state,
            inputs=inputs,
        )
        with run:
            run.fit(deadline=deadline)
            return run.finish(), recipe
    runs: list[TrainingRun] = []
    try:
        for config in recipe.candidates:
            run = TrainingRun(dataset, config, zoo, observer=observer, inputs=inputs)
            runs.append(run.__enter__())
            run.fit(until=recipe.rung_epochs, deadline=deadline)
        best = min(runs, key=lambda r: r.best_loss)
        trials = []
        for run in runs:
            report = min(run.history, key=lambda h: h.val_loss)
            trial = Trial(
                name=_name(run.config),
                backbone=run.config.backbone,
                weights=run.config.weights.value,
                head=run.config.head.value,
                input_size=run.preprocessing.input_size[0],
                learning_rate=run.config.learning_rate,
                epochs=run.epochs_done,
                val_loss=round(run.best_loss, 5),
                val_accuracy=round(report.val_accuracy, 4),
                val_auc=None if report.val_auc is None else round(report.val_auc, 4),
                seconds=round(run.train_seconds, 1),
                kept=run is best,
            )
            trials.append(trial)
            if on_trial is not None:
                on_trial(trial)
        for run in [r for r in runs if r is not best]:
            runs.remove(run)  # before its exit: a run is never exited twice
            run.__exit__(None, None, None)
        best.attach_checkpoints(checkpoint_dir)
        best.fit(deadline=deadline)
        trained = best.finish()
    finally:
        for run in runs:
            run.__exit__(None, None, None)
    chosen = best.config
    reasons = dict(recipe.reasons)
    reasons["search"] = f"kept {_name(chosen)}: the lowest validation loss after its rung"
    return trained, replace(recipe, config=chosen, reasons=reasons, trials=tuple(trials))
