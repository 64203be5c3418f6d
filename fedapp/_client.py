"""The ClientApp: one hospital, its SuperNode's messages routed by action.

The same app runs in Flower's simulation runtime and on a hospital's deployed
SuperNode (Flower separates apps from runtimes). What differs is fixed when
the app is made, never by what a SuperLink sends:

- where the site's job comes from (:class:`NodeJobs`: the node's own
  configuration, written by ``gsco site join``; a simulation's :class:`ScenarioJobs`:
  the jobs file its run names, by partition), and
- how the site behaves (:class:`fedapp.SiteBehaviour`, the honest site; a
  simulation wires in its attackers).

Messages are routed by action, never by their content:

=================================  ============================================
``query.site_id``          which site this SuperNode is
``train.specialist``       train, sign and publish the site's specialist
``query.initial_state``    the seeded starting weights of FedAvg (deployed runs)
``train.fedavg``           one FedAvg round of the shared specialist
``query.publish_shared``   publish the shared specialist from this site
``query.adapter_examples`` build the adapter's evidence examples here
``query.adapter_initial_state``  the adapter's starting weights (deployed runs)
``train.adapter``          one FedAvg round of the generalist's adapter
``query.adapter_policy_evidence``  score this site's policy cases with the final adapter
``query.adapter_policy``   answer one question of the policy fit (sums and counts)
``query.prepare_adapter``  write and sign the adapter, propose its role version
``query.endorse_adapter``  check the adapter and co-sign its role version
``query.publish_adapter``  publish the adapter with the sites' co-signatures
=================================  ============================================

A message for any other action gets Flower's error reply.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from logging import WARNING
from pathlib import Path
from typing import Any, Protocol

from flwr.app import (
    ArrayRecord,
    ConfigRecord,
    Context,
    Message,
    MetricRecord,
    RecordDict,
)
from flwr.clientapp import ClientApp
from flwr.common import log

from fedapp._behaviour import SiteBehaviour
from fedapp._site_job import SiteJob, SiteOutcome, local_update, run_site_job
from fedapp._tune import deployed_tune_job, run_request
from fedapp._tune_job import (
    TuneJob,
    adapter_examples,
    adapter_initial_state,
    adapter_update,
    endorse_adapter,
    policy_answer,
    policy_evidence,
    prepare_adapter,
    publish_consortium_adapter,
)
from fedapp.errors import JobError

__all__ = [
    "JobSource",
    "NodeJobs",
    "ScenarioJobs",
    "deployed_job",
    "make_client_app",
    "without_paths",
]


class JobSource(Protocol):
    """Where a SuperNode's site learns its job."""

    #: A hospital's own node: what crosses to the SuperLink leaves without local paths.
    deployed: bool

    def job(self, context: Context) -> SiteJob:
        """The site's specialist job."""
        ...

    def tune_job(self, context: Context) -> TuneJob:
        """The site's adapter job."""
        ...


class NodeJobs:
    """A hospital's SuperNode: its places from its own node config, its work from the run."""

    deployed = True

    def job(self, context: Context) -> SiteJob:
        return deployed_job(context.node_config, context.run_config, context.run_id)

    def tune_job(self, context: Context) -> TuneJob:
        return deployed_tune_job(context.node_config, context.run_config, context.run_id)


class ScenarioJobs:
    """A simulated hospital: its job from the jobs file of the simulation's run, by partition.

    A node whose own config names a site home is a hospital's and never reads a
    jobs file, whatever the run config says.
    """

    deployed = False

    def _entry(self, context: Context, key: str) -> str:
        if "home" in context.node_config or "partition-id" not in context.node_config:
            raise JobError("a simulation's app runs on simulated nodes only")
        jobs = json.loads(Path(str(context.run_config[key])).read_text())
        return str(jobs[int(context.node_config["partition-id"])])

    def job(self, context: Context) -> SiteJob:
        return SiteJob.from_json(self._entry(context, "jobs-file"))

    def tune_job(self, context: Context) -> TuneJob:
        return TuneJob.from_json(self._entry(context, "tune-jobs-file"))


@dataclass(frozen=True)
class _Site:
    jobs: JobSource
    behaviour: SiteBehaviour = field(default_factory=SiteBehaviour)

    @property
    def deployed(self) -> bool:
        return self.jobs.deployed

    def job(self, context: Context) -> SiteJob:
        return self.jobs.job(context)

    def tune_job(self, context: Context) -> TuneJob:
        return self.jobs.tune_job(context)


def deployed_job(node: Mapping[str, object], run: Mapping[str, object], run_id: int) -> SiteJob:
    """A deployed site's job, from its node config and the run config.

    The node config (written by ``gsco site join``) says where the site's
    home, data and registry are; the run config (``gsco federation run``)
    says what to train.

    Raises:
        JobError: a node config key is missing, or its task file declares another task.
        DataError: the node config's task file cannot be read.
    """
    from site_agent import open_site

    missing = [k for k in ("home", "data", "task", "registry", "work") if not node.get(k)]
    if missing:
        raise JobError(
            f"this SuperNode's node config lacks {', '.join(missing)}: start it with "
            f"'gsco site join'"
        )
    home = Path(str(node["home"]))
    task = str(node["task"])
    training = run_request(run).training
    if training.task_id is not None and training.task_id != task:
        raise JobError(f"this site trains for {task!r}; the run is for {training.task_id!r}")
    declared = None
    if node.get("task-file"):
        from site_agent.data import load_task_file

        entry = load_task_file(Path(str(node["task-file"])))
        if entry.task.task_id != task:
            raise JobError(
                f"this SuperNode's task file declares {entry.task.task_id!r}, its node config "
                f"says {task!r}: start it again with 'gsco site join'"
            )
        declared = entry.task.model_dump(mode="json")
    work = Path(str(node["work"]))
    return SiteJob(
        site_id=open_site(home).config.site_id,
        home=str(home),
        data=str(node["data"]),
        task_id=task,
        dataset=None,
        registry=str(node["registry"]),
        registry_ca=str(node["registry-ca"]) if node.get("registry-ca") else None,
        out_dir=str(work / f"run-{run_id}" / task),
        backbone=training.backbone,
        epochs=training.epochs,
        max_minutes=training.max_minutes,
        batch_size=training.batch_size,
        learning_rate=training.learning_rate,
        input_size=training.input_size,
        max_eval_images=training.max_eval_images,
        seed=training.seed,
        task=declared,
    )


def _site_errors(
    handler: Callable[[_Site, Message, Context], Message],
) -> Callable[[_Site, Message, Context], Message]:
    """A deployed site's adapter handler whose failures leave without the site's local paths.

    The traceback stays in the SuperNode's own log; the SuperLink gets the
    error's type and message, each path replaced (:func:`without_paths`).
    """

    @functools.wraps(handler)
    def handle(site: _Site, message: Message, context: Context) -> Message:
        try:
            return handler(site, message, context)
        except Exception as exc:
            if not site.deployed:
                raise
            log(WARNING, "gsco: %s failed", handler.__name__, exc_info=exc)
            raise RuntimeError(without_paths(f"{type(exc).__name__}: {exc}")) from None

    return handle


@_site_errors
def adapter_examples_query(site: _Site, message: Message, context: Context) -> Message:
    """Builds this site's evidence examples (kept at the site); declares how many.

    And how many validation cases it holds for the policy fit.
    """
    job = site.tune_job(context)
    count = site.behaviour.examples_declared(job, len(adapter_examples(job)))
    declared = ConfigRecord(
        {"site-id": job.site_id, "count": count, "policy-cases": len(job.policy_rows)}
    )
    return Message(RecordDict({"examples": declared}), reply_to=message)


@_site_errors
def adapter_initial_state_query(site: _Site, message: Message, context: Context) -> Message:
    """The adapter's starting weights (the recipe's seeded LoRA initialisation)."""
    job = site.tune_job(context)
    return Message(
        RecordDict({"arrays": ArrayRecord(adapter_initial_state(job))}), reply_to=message
    )


@_site_errors
def adapter_train(site: _Site, message: Message, context: Context) -> Message:
    """One FedAvg round of the generalist's LoRA adapter at this site."""
    import torch  # noqa: F401  (ArrayRecord.to_torch_state_dict needs it imported)

    job = site.tune_job(context)
    server_round = int(str(message.content.config_records["config"].get("server-round", 1)))

    def update(state: Any, epochs: int) -> tuple[dict[str, Any], int, float]:
        trained, examples, loss = adapter_update(job, state, epochs)
        trained, examples = site.behaviour.adapter_update(
            job, trained, state, server_round, examples
        )
        return trained, examples, loss

    return _fedavg_round(message, update)


@_site_errors
def adapter_policy_evidence_query(site: _Site, message: Message, context: Context) -> Message:
    """Scores this site's policy cases with the final adapter (kept here); says the task."""
    import torch  # noqa: F401  (ArrayRecord.to_torch_state_dict needs it imported)

    job = site.tune_job(context)
    state = message.content.array_records["arrays"].to_torch_state_dict()
    task, cases = policy_evidence(job, state, str(message.content["policy"]["name"]))
    reply = ConfigRecord({"site-id": job.site_id, "task": task, "cases": cases})
    return Message(RecordDict({"policy": reply}), reply_to=message)


@_site_errors
def adapter_policy_query(site: _Site, message: Message, context: Context) -> Message:
    """This site's answer to one question of the policy fit: sums and counts, nothing else."""
    job = site.tune_job(context)
    question = json.loads(str(message.content["policy"]["question"]))
    answer = site.behaviour.policy_answer(job, question, policy_answer(job, question))
    return Message(
        RecordDict({"policy": ConfigRecord({"answer": json.dumps(answer)})}), reply_to=message
    )


def _fedavg_round(
    message: Message, update: Callable[[Any, int], tuple[dict[str, Any], int, float]]
) -> Message:
    """One FedAvg round: ``update(global weights, local epochs)``, answered as FedAvg expects."""
    epochs = int(str(message.content.config_records["config"]["local-epochs"]))
    state, examples, loss = update(
        message.content.array_records["arrays"].to_torch_state_dict(), epochs
    )
    return Message(
        RecordDict(
            {
                "arrays": ArrayRecord(state),
                "metrics": MetricRecord({"num-examples": examples, "train-loss": loss}),
            }
        ),
        reply_to=message,
    )


@_site_errors
def prepare_adapter_query(site: _Site, message: Message, context: Context) -> Message:
    """Writes and signs the federated adapter (its policy in the card); proposes its role."""
    import torch  # noqa: F401  (ArrayRecord.to_torch_state_dict needs it imported)

    from protocol import ArbitrationPolicy

    job = site.tune_job(context)
    record = message.content["adapter"]
    training = json.loads(str(record["training"]))
    policy = ArbitrationPolicy.parse(str(record["policy"])) if "policy" in record else None
    state = message.content.array_records["arrays"].to_torch_state_dict()
    files, proposal = prepare_adapter(job, state, training, policy)
    return Message(
        RecordDict(
            {
                "bundle": ConfigRecord(dict(files)),
                "adapter": ConfigRecord({"proposal": proposal, "site-id": job.site_id}),
            }
        ),
        reply_to=message,
    )


def _bundle_files(message: Message) -> dict[str, bytes]:
    """The adapter bundle's files a message carries (``bundle``: name -> bytes)."""
    return {str(k): bytes(v) for k, v in message.content["bundle"].items()}  # type: ignore[arg-type]


@_site_errors
def endorse_adapter_query(site: _Site, message: Message, context: Context) -> Message:
    """Checks the consortium's adapter against what this site trained, then co-signs it."""
    import torch  # noqa: F401  (ArrayRecord.to_torch_state_dict needs it imported)

    job = site.tune_job(context)
    files = _bundle_files(message)
    proposal = bytes(message.content["adapter"]["proposal"])  # type: ignore[arg-type]
    received = message.content.array_records["arrays"].to_torch_state_dict()
    declined = site.behaviour.declined_endorsement(
        job, received, json.loads(files["adapter_card.json"])
    )
    if declined is not None:
        return Message(
            RecordDict({"endorsement": ConfigRecord(dict(declined.items()))}), reply_to=message
        )
    endorsement = endorse_adapter(job, files, proposal, received)
    return Message(
        RecordDict({"endorsement": ConfigRecord({"json": endorsement.to_json()})}),
        reply_to=message,
    )


@_site_errors
def publish_adapter_query(site: _Site, message: Message, context: Context) -> Message:
    """Publishes the adapter this site prepared, with the training sites' co-signatures."""
    from registry import Endorsement

    job = site.tune_job(context)
    files = _bundle_files(message)
    record = message.content["adapter"]
    endorsements = [Endorsement.from_json(e) for e in json.loads(str(record["endorsements"]))]
    proposal = bytes(record["proposal"])  # type: ignore[arg-type]
    folder, digest, version = publish_consortium_adapter(job, files, proposal, endorsements)
    if site.deployed:  # where the site keeps its files stays at the site
        folder = Path(folder).name
    return Message(
        RecordDict(
            {
                "adapter": ConfigRecord(
                    {"bundle": folder, "digest": digest, "site-id": job.site_id, "version": version}
                )
            }
        ),
        reply_to=message,
    )


def site_id_query(site: _Site, message: Message, context: Context) -> Message:
    """Says which site this SuperNode is."""
    job = site.job(context)
    return Message(RecordDict({"site": ConfigRecord({"site-id": job.site_id})}), reply_to=message)


def publish_shared_query(site: _Site, message: Message, context: Context) -> Message:
    """Calibrates, evaluates, indexes, signs and publishes the shared FedAvg specialist here."""
    import torch  # noqa: F401  (ArrayRecord.to_torch_state_dict needs it imported)

    from protocol import FederatedTraining

    job = site.job(context)
    federation = FederatedTraining.parse(str(message.content["shared"]["federation"]))
    state = message.content.array_records["arrays"].to_torch_state_dict()
    return _answer(
        site,
        run_site_job(job, shared_state=state, federation=federation, behaviour=site.behaviour),
        message,
    )


def specialist_train(site: _Site, message: Message, context: Context) -> Message:
    """Trains, signs and publishes this site's own specialist.

    A site acting out ``drop-out`` raises: Flower answers the server with an error.
    """
    return _answer(site, run_site_job(site.job(context), behaviour=site.behaviour), message)


def without_paths(text: str) -> str:
    """``text`` with every word that holds a path separator (not a URL) replaced.

    Errs on the side of saying less: a path with a space in it loses both halves.
    """
    return "".join(
        "<local path>" if ("/" in word or "\\" in word) and "://" not in word else word
        for word in re.split(r"(\s+)", text)
    )


def _answer(site: _Site, outcome: SiteOutcome, message: Message) -> Message:
    """The outcome as the reply; a deployed site's failure leaves without its local paths.

    The full detail goes to this SuperNode's own log, at the site; what crosses
    to the SuperLink is the outcome, its counts and the error without its
    paths (:func:`without_paths`). A registry's refusal (``rejected``) names
    no local path and crosses whole.
    """
    if site.deployed and outcome.status == "failed":
        log(WARNING, "gsco: %s failed here: %s", outcome.site_id, outcome.detail)
        outcome = replace(outcome, detail=without_paths(outcome.detail))
    return Message(
        RecordDict({"outcome": ConfigRecord({"json": outcome.to_json()})}), reply_to=message
    )


def initial_state_query(site: _Site, message: Message, context: Context) -> Message:
    """The seeded, untrained weights FedAvg starts from, made at this site.

    A deployed SuperLink has no data to learn the input's channels from, so it
    asks one site; only the untrained backbone's weights cross.
    """
    from fedapp._fedavg import initial_state

    return Message(
        RecordDict({"arrays": ArrayRecord(initial_state(site.job(context)))}), reply_to=message
    )


def fedavg_train(site: _Site, message: Message, context: Context) -> Message:
    """One FedAvg round of the shared specialist at this site."""
    import torch  # noqa: F401  (ArrayRecord.to_torch_state_dict needs it imported)

    job = site.job(context)
    return _fedavg_round(
        message, lambda state, epochs: local_update(job, state, epochs, site.behaviour)
    )


_HANDLERS: tuple[tuple[str, str, Callable[[_Site, Message, Context], Message]], ...] = (
    ("query", "site_id", site_id_query),
    ("train", "specialist", specialist_train),
    ("query", "initial_state", initial_state_query),
    ("train", "fedavg", fedavg_train),
    ("query", "publish_shared", publish_shared_query),
    ("query", "adapter_examples", adapter_examples_query),
    ("query", "adapter_initial_state", adapter_initial_state_query),
    ("train", "adapter", adapter_train),
    ("query", "adapter_policy_evidence", adapter_policy_evidence_query),
    ("query", "adapter_policy", adapter_policy_query),
    ("query", "prepare_adapter", prepare_adapter_query),
    ("query", "endorse_adapter", endorse_adapter_query),
    ("query", "publish_adapter", publish_adapter_query),
)


def make_client_app(jobs: JobSource, behaviour: SiteBehaviour | None = None) -> ClientApp:
    """A ClientApp whose site takes its jobs from ``jobs`` and acts as ``behaviour`` says."""
    site = _Site(jobs, behaviour or SiteBehaviour())
    app = ClientApp()
    for kind, action, handler in _HANDLERS:
        register = app.query(action) if kind == "query" else app.train(action)
        register(functools.partial(handler, site))
    return app
