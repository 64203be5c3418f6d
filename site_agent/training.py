"""The site's training use case: options in, a plan checked before any data is read, a bundle out.

Every caller (the command line, the Flower app's sites, simulated or
deployed) decides the same way, here:

- the options are checked first (:meth:`TrainingOptions.check`): a flag that
  needs another, a site identity, a key to sign with, a free output folder, a
  known task and backbone, all before the data is read;
- the plan then reads the data and settles what depends on it: the DP delta
  (``1 / (10 n)`` for ``n`` training images unless given) and the version (the
  site's last published one, from its egress ledger, plus one);
- :func:`run_training` trains, writes the bundle and signs it when asked.

The caller parses and prints; it decides nothing.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from protocol import FederatedTraining, IndexMode, TaskType
from site_agent._home import SiteHome, open_site
from site_agent.errors import OptionsError, SiteHomeError

if TYPE_CHECKING:
    import torch

    from signing import VerifiedManifest
    from site_agent.data import CatalogEntry, LocalDataset
    from site_agent.index import IndexSettings
    from site_agent.pipeline import BundleResult
    from site_agent.train import Recipe, TrainConfig, TrainingObserver, Trial

__all__ = ["DEFAULT_LICENSE", "TrainingOptions", "TrainingPlan", "plan_training", "run_training"]

#: The licence a consortium's specialists carry unless the site says otherwise.
DEFAULT_LICENSE = "LicenseRef-Consortium-Agreement"


@dataclass(frozen=True)
class TrainingOptions:
    """What a site asks for. ``None`` means the documented default."""

    out: Path
    task: str | None = None  # a catalog task id; None: the one ``task_file`` declares
    task_file: Path | None = None
    data: Path | None = None  # None: the task's MedMNIST file
    dataset: str | None = None  # the MedMNIST set a .npz is a share of (the card's source)
    # The recipe's choices: None lets it choose from the data (site_agent.train.plan_recipe).
    backbone: str | None = None
    weights: Literal["default", "scratch", "hub"] | None = None
    input_size: int | None = None
    image_size: int = 64  # images from folders, CSV and DICOM are stored at this size
    epochs: int | None = None
    batch_size: int | None = None
    learning_rate: float | None = None
    patience: int | None = None
    max_minutes: float | None = None  # None: DEFAULT_MAX_MINUTES, search and training together
    flip: bool | None = None
    head: Literal["softmax", "cumulative-link"] | None = None  # None: the recipe's
    threads: int | None = None  # torch CPU threads; None: every core
    max_train_images: int | None = None
    max_eval_images: int | None = None
    seed: int = 0
    index_mode: IndexMode = IndexMode.PROTOTYPE
    index_k: int = 10
    index_noise: float = 0.0
    dp_epsilon: float | None = None
    dp_delta: float | None = None
    dp_clip: float = 1.0
    dp_layers: Literal["head", "all"] | None = None
    version: int | None = None  # None: the last version the site published, plus one
    license_id: str = DEFAULT_LICENSE
    site_id: str | None = None  # None: the site home's
    sign: bool = False

    def check(self) -> None:
        """Checks the options among themselves (nothing is read).

        Raises:
            OptionsError: an option that needs another, or none of the task options.
        """
        if self.dp_epsilon is None and self.dp_delta is not None:
            raise OptionsError("--dp-delta needs --dp-epsilon")
        if self.dp_epsilon is None and self.dp_layers is not None:
            raise OptionsError("--dp-layers needs --dp-epsilon")
        if self.task is None and self.task_file is None:
            raise OptionsError("give --task, or --task-file declaring one")
        if self.head == "cumulative-link" and self.dp_epsilon is not None:
            raise OptionsError(
                "--head cumulative-link cannot be trained with DP-SGD (--dp-epsilon): "
                "Opacus has no per-example gradients for its cut points"
            )


@dataclass(frozen=True)
class TrainingPlan:
    """A checked training run: what will be trained, on what, under which version."""

    options: TrainingOptions
    site: SiteHome | None
    site_id: str
    entry: CatalogEntry
    dataset: LocalDataset
    config: TrainConfig
    index: IndexSettings
    version: int
    recipe: Recipe
    initial_state: Mapping[str, torch.Tensor] | None = None  # e.g. a FedAvg model
    federation: FederatedTraining | None = None  # how ``initial_state`` was trained

    def version_for(self, backbone: str) -> int:
        """The version of a bundle of ``backbone``: given, or the site's last plus one."""
        if self.options.version is not None:
            return self.options.version
        last = self.site.ledger.last_version(self.entry.task.task_id, backbone) if self.site else 0
        return last + 1


def plan_training(
    options: TrainingOptions,
    home: Path,
    *,
    initial_state: Mapping[str, torch.Tensor] | None = None,
    federation: FederatedTraining | None = None,
) -> TrainingPlan:
    """Checks ``options`` against the site home at ``home``, then reads the data.

    ``initial_state`` starts training from given weights (a federated model;
    ``epochs=0`` only calibrates, evaluates and indexes it at this site), and
    ``federation`` says on the card how they were trained. Neither is searched.

    Raises:
        OptionsError: see :meth:`TrainingOptions.check`.
        SiteHomeError: no site identity, or ``sign`` without a key.
        BundleExistsError: ``options.out`` exists and is not empty.
        TaskNotFoundError, UnknownBackboneError: before any data is read.
        DataError: the data cannot be read.
    """
    from site_agent.data import default_catalog, load_local_data, load_task_file
    from site_agent.outputs import ensure_new_output

    options.check()
    site = open_site(home) if (home / "site.json").is_file() else None
    site_id = options.site_id or (site.config.site_id if site else None)
    if site_id is None:
        raise SiteHomeError(
            "no site identity: run 'gsco site init --site-id ID' first, or pass --site-id"
        )
    if options.sign and site is None:
        raise SiteHomeError(f"--sign needs a site home with a key ({home}): run 'gsco site init'")
    ensure_new_output(options.out)
    catalog = default_catalog()
    declared = load_task_file(options.task_file) if options.task_file is not None else None
    if declared is not None:
        catalog = catalog.with_task(declared)
    entry = catalog.get(options.task) if options.task is not None else declared
    assert entry is not None  # check() saw a task or a task file
    if options.head == "cumulative-link" and entry.task.task_type is not TaskType.ORDINAL:
        raise OptionsError(
            f"--head cumulative-link is for ordinal tasks; {entry.task.task_id!r} is "
            f"{entry.task.task_type.value}"
        )
    # Only now the heavy imports (torch, timm): every error above comes back at once.
    from site_agent.index import IndexSettings
    from site_agent.train import (
        DPConfig,
        HeadKind,
        RecipeFlags,
        TrainConfig,
        WeightsPolicy,
        default_zoo,
        plan_recipe,
    )

    zoo = default_zoo()
    if options.backbone is not None:
        zoo.get(options.backbone)  # an unknown backbone fails before the data is read

    dataset = load_local_data(
        options.data,
        entry,
        image_size=options.image_size,
        seed=options.seed,
        dataset=options.dataset,
    ).subsample(options.max_train_images, options.max_eval_images, options.seed)
    dp = None
    if options.dp_epsilon is not None:
        dp = DPConfig(
            epsilon=options.dp_epsilon,
            delta=options.dp_delta if options.dp_delta is not None else 0.1 / len(dataset.train),
            max_grad_norm=options.dp_clip,
            layers=options.dp_layers or "head",
        )
    flags = RecipeFlags(
        backbone=options.backbone,
        weights=WeightsPolicy(options.weights) if options.weights is not None else None,
        input_size=options.input_size,
        batch_size=options.batch_size,
        learning_rate=options.learning_rate,
        epochs=options.epochs,
        patience=options.patience,
        flip=options.flip,
        head=HeadKind(options.head) if options.head is not None else None,
    )
    base = TrainConfig(seed=options.seed, threads=options.threads, dp=dp)
    recipe = plan_recipe(
        dataset,
        flags,
        zoo,
        base=base,
        max_minutes=options.max_minutes,
        searchable=dp is None and initial_state is None,
    )
    config = recipe.config
    index = IndexSettings(options.index_mode, options.index_k, options.index_noise, options.seed)
    plan = TrainingPlan(
        options, site, site_id, entry, dataset, config, index, 0, recipe, initial_state, federation
    )
    return replace(plan, version=plan.version_for(config.backbone))


def run_training(
    plan: TrainingPlan,
    observer: TrainingObserver | None = None,
    on_trial: Callable[[Trial], None] | None = None,
) -> tuple[BundleResult, VerifiedManifest | None]:
    """Runs the recipe (its search, then training), writes the bundle and signs it if asked.

    ``plan.version`` is the version for the recipe's first backbone; when the
    search keeps another, the bundle gets that backbone's next version.

    Raises:
        SiteError: a step failed (see :func:`site_agent.pipeline.write_bundle`).
        SigningError: signing failed.
    """
    from signing import sign_bundle
    from site_agent.pipeline import write_bundle

    result = write_bundle(
        plan.dataset,
        plan.options.out,
        site_id=plan.site_id,
        version=plan.version_for,
        license_id=plan.options.license_id,
        config=plan.config,
        index=plan.index,
        observer=observer,
        initial_state=plan.initial_state,
        federation=plan.federation,
        recipe=plan.recipe,
        on_trial=on_trial,
    )
    manifest = None
    if plan.options.sign and plan.site is not None:
        try:
            manifest = sign_bundle(result.path, plan.site.private_key)
        except KeyboardInterrupt:
            # Interrupted at any stage, no bundle is left: an unsigned one where a signed one
            # was asked for would pass for the finished result.
            shutil.rmtree(result.path, ignore_errors=True)
            raise
    return result, manifest
