"""What one hospital does in a run: train on its data, sign, publish.

It uses the site agent's own library calls, as ``gsco site train/sign/publish``
do, on the site's home folder (identity, key, egress ledger). Where a
simulated attacker would act otherwise, it asks its
:class:`fedapp.SiteBehaviour` (the honest one, unless a simulation wired in
its own).
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from logging import INFO
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from fedapp._behaviour import SiteBehaviour
from fedapp.errors import SiteDroppedOutError
from protocol import FederatedTraining, GscoError, TaskSpec

if TYPE_CHECKING:
    from site_agent.train import EpochReport

__all__ = [
    "SiteJob",
    "SiteOutcome",
    "local_update",
    "run_site_job",
    "training_options",
    "usable_state",
]


@dataclass(frozen=True)
class SiteJob:
    """Everything one site needs; JSON-serialisable (it crosses into a Flower ClientApp)."""

    site_id: str
    home: str  # the site's home folder (key, ledger)
    data: str  # the site's share of the training set (.npz with val/test splits)
    task_id: str
    dataset: str | None  # MedMNIST name, for the card's data source (None: a declared task)
    registry: str  # host:port
    out_dir: str  # where the bundle is written
    backbone: str = "tf_efficientnet_lite0"
    epochs: int = 5
    max_minutes: float | None = 2.0
    batch_size: int = 32
    learning_rate: float = 1e-3
    input_size: int | None = None
    max_eval_images: int | None = 200
    seed: int = 0
    threads: int | None = None
    fault: str | None = None  # what a simulation's site acts out (simulations._faults)
    task: dict[str, Any] | None = None  # a declared task's TaskSpec (None: the catalog's)
    registry_ca: str | None = None  # CA certificate of the registry's TLS (None: plaintext)

    def to_json(self) -> str:
        """The job as JSON."""
        return json.dumps(asdict(self))

    def task_spec(self) -> TaskSpec:
        """The task the site trains for: declared with the job, or the catalog's."""
        from site_agent.data import default_catalog

        if self.task is not None:
            return TaskSpec.parse(self.task)
        return default_catalog().get(self.task_id).task

    def train_config(self, *, epochs: int | None = None, patience: int | None = None) -> Any:
        """The site agent's :class:`site_agent.train.TrainConfig` for this job (one place).

        ``epochs`` replaces the job's (a FedAvg round's local epochs, 0 to
        calibrate a shared model only); ``patience`` replaces the default.
        """
        from site_agent.train import TrainConfig

        settings: dict[str, Any] = {
            "backbone": self.backbone,
            "input_size": self.input_size,
            "epochs": self.epochs if epochs is None else epochs,
            "batch_size": self.batch_size,
            "learning_rate": self.learning_rate,
            "max_minutes": self.max_minutes,
            "seed": self.seed,
            "threads": self.threads,
        }
        if patience is not None:
            settings["patience"] = patience
        return TrainConfig(**settings)

    @classmethod
    def from_json(cls, text: str) -> SiteJob:
        """The job from :meth:`to_json`."""
        return cls(**json.loads(text))


@dataclass
class SiteOutcome:
    """What happened at one site."""

    site_id: str
    status: str  # published | rejected | dropped-out | failed
    detail: str = ""
    bundle_digest: str | None = None
    n_train: int = 0
    class_counts: dict[str, int] = field(default_factory=dict)
    test_accuracy: float | None = None  # the site's own held-out estimate (card)
    train_seconds: float = 0.0
    fault: str | None = None  # what a simulation's site acts out (simulations._faults)
    federated: bool = False  # the shared FedAvg specialist, published by this site

    def to_json(self) -> str:
        """The outcome as JSON."""
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> SiteOutcome:
        """The outcome from :meth:`to_json`."""
        return cls(**json.loads(text))


class EpochLog:
    """A training observer that logs each epoch as a ``gsco:`` line (relayed to the command).

    Flower streams the ClientApp's log to ``flwr run --stream``; the
    simulation shows every line that carries ``gsco:``.
    """

    def __init__(self, site_id: str, what: str = "") -> None:
        self._site = site_id
        self._what = f" {what}" if what else ""
        self._epochs = 0

    def on_start(self, epochs: int, steps_per_epoch: int) -> None:
        """Remembers the planned epochs."""
        self._epochs = epochs

    def on_step(self, epoch: int, step: int, loss: float) -> None:
        """Nothing per step: one line per epoch is enough."""

    def on_epoch(self, report: EpochReport) -> None:
        """Logs the epoch: losses, validation accuracy and AUC, time."""
        from flwr.common.logger import log

        auc = f"{report.val_auc:.3f}" if report.val_auc is not None else "n/a"
        log(
            INFO,
            "gsco: %s%s epoch %d/%d: train loss %.3f, val loss %.3f, val ACC %.3f, AUC %s (%.0f s)",
            self._site,
            self._what,
            report.epoch,
            self._epochs,
            report.train_loss,
            report.val_loss,
            report.val_accuracy,
            auc,
            report.seconds,
        )


def _load_share(job: SiteJob, behaviour: SiteBehaviour) -> Any:
    """The site's own data (as its behaviour trains on it)."""
    from site_agent.data import load_medmnist

    task = job.task_spec()
    dataset = load_medmnist(Path(job.data), task, dataset=job.dataset)
    return behaviour.training_data(job, dataset.subsample(None, job.max_eval_images, job.seed))


def _registry_ca(job: SiteJob) -> bytes | None:
    return Path(job.registry_ca).read_bytes() if job.registry_ca else None


def _task_file(job: SiteJob) -> Path:
    """Where a declared task is written for the site agent: beside the site's share."""
    return Path(job.data).with_suffix(".task.json")


def usable_state(state: Mapping[str, Any]) -> dict[str, Any]:
    """Federated weights made loadable: BatchNorm statistics repaired after DP noise.

    Flower's server-side DP adds Gaussian noise to every array it aggregates,
    BatchNorm's running statistics included; a running variance pushed below
    zero would turn every prediction into NaN. Variances are floored at 1e-3
    and batch counters made whole again; all other weights pass unchanged.
    """
    import torch

    fixed: dict[str, Any] = {}
    for name, tensor in state.items():
        if name.endswith("running_var"):
            tensor = torch.clamp(tensor, min=1e-3)
        elif name.endswith("num_batches_tracked"):
            tensor = torch.clamp(torch.round(tensor.float()), min=0).to(torch.int64)
        fixed[name] = tensor
    return fixed


def local_update(
    job: SiteJob,
    state: Mapping[str, Any],
    epochs: int,
    behaviour: SiteBehaviour | None = None,
) -> tuple[dict[str, Any], int, float]:
    """One FedAvg round at the site: ``epochs`` local epochs from the global weights.

    Returns the updated weights, the number of training images and the last
    training loss.

    Raises:
        SiteDroppedOutError: the site left the run (its behaviour says so).
    """
    from site_agent.train import default_zoo, train_specialist

    behaviour = behaviour or SiteBehaviour()
    behaviour.before_answering(job, federated=True)
    dataset = _load_share(job, behaviour)
    trained = train_specialist(
        dataset,
        job.train_config(epochs=epochs, patience=epochs + 1),  # every local epoch runs
        default_zoo(),
        initial_state=usable_state(state),
        observer=EpochLog(job.site_id, "FedAvg local"),
    )
    loss = trained.history[-1].train_loss if trained.history else 0.0
    return dict(trained.net.state_dict()), len(dataset.train), loss


def training_options(job: SiteJob, *, shared: bool = False, sign: bool = True) -> Any:
    """The site agent's :class:`site_agent.training.TrainingOptions` for this job.

    What the scenario fixes for every site (backbone, epochs, batch, rate,
    budget, threads) is given; the rest (patience, mirroring, the ordinal
    head) is the site agent's recipe to choose, as for ``gsco site train``.
    ``shared`` is the FedAvg model's bundle: no local epochs, its own folder.
    """
    from site_agent.train import default_zoo
    from site_agent.training import TrainingOptions

    input_size = job.input_size or default_zoo().get(job.backbone).default_input_size
    return TrainingOptions(
        out=Path(job.out_dir + ("-fedavg" if shared else "")),
        task=job.task_id if job.task is None else None,
        task_file=_task_file(job) if job.task is not None else None,
        data=Path(job.data),
        dataset=job.dataset,
        backbone=job.backbone,
        input_size=input_size,
        epochs=0 if shared else job.epochs,
        batch_size=job.batch_size,
        learning_rate=job.learning_rate,
        max_minutes=job.max_minutes,
        threads=job.threads,
        max_eval_images=job.max_eval_images,
        seed=job.seed,
        sign=sign,
    )


def run_site_job(
    job: SiteJob,
    *,
    shared_state: Mapping[str, Any] | None = None,
    federation: FederatedTraining | None = None,
    behaviour: SiteBehaviour | None = None,
) -> SiteOutcome:
    """Runs ``job``. Never raises for the site's own failures: they are the outcome.

    The site runs the site agent's own use cases, as ``gsco site train
    --sign`` and ``gsco site publish`` do: :func:`site_agent.training.plan_training`,
    :func:`site_agent.training.run_training`, then
    :func:`site_agent.publishing.publish_bundle` (its own signature checked,
    the egress ledger written), unless its ``behaviour`` publishes another way.

    With ``shared_state`` the site publishes the federated model instead of
    training its own: calibrated on its validation images, evaluated on its
    test images and indexed over its own training images.

    Raises:
        SiteDroppedOutError: the site left the run after training (its behaviour says so).
    """
    from registry import RejectedError
    from site_agent.publishing import publish_bundle
    from site_agent.training import plan_training, run_training

    behaviour = behaviour or SiteBehaviour()
    started = time.monotonic()
    outcome = SiteOutcome(
        job.site_id, "failed", fault=job.fault, federated=shared_state is not None
    )
    try:
        if job.task is not None:  # a declared task travels with the job, as a task file
            _task_file(job).write_text(json.dumps(job.task))
        plan = plan_training(
            training_options(job, shared=shared_state is not None, sign=behaviour.signs(job)),
            Path(job.home),
            initial_state=usable_state(shared_state) if shared_state is not None else None,
            federation=federation,
        )
        plan = replace(plan, dataset=behaviour.training_data(job, plan.dataset))
        labels = plan.entry.task.labels
        outcome.n_train = len(plan.dataset.train)
        outcome.class_counts = {
            label: int(count)
            for label, count in zip(
                labels,
                np.bincount(plan.dataset.train.labels, minlength=len(labels)),
                strict=True,
            )
        }
        result, _ = run_training(plan, EpochLog(job.site_id))
        outcome.test_accuracy = result.card.metrics.accuracy
        outcome.train_seconds = time.monotonic() - started
        behaviour.before_answering(job, federated=shared_state is not None)
        bundle = result.path
        site = plan.site
        assert site is not None  # plan_training found the home's identity
        try:
            ref = (
                behaviour.publish(job, site, bundle)
                or publish_bundle(
                    site, bundle, job.registry, root_certificates=_registry_ca(job)
                ).ref
            )
        except RejectedError as exc:
            outcome.status, outcome.detail = "rejected", str(exc)
            return outcome
        outcome.status, outcome.bundle_digest = "published", ref.bundle_digest
        outcome.detail = f"{ref.backbone} v{ref.version}"
    except SiteDroppedOutError:
        raise
    except GscoError as exc:
        outcome.detail = f"{type(exc).__name__}: {exc}"
    outcome.train_seconds = outcome.train_seconds or time.monotonic() - started
    return outcome
