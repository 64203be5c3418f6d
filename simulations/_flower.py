"""The Flower app: one ``ClientApp`` per simulated hospital, a ``ServerApp`` that coordinates.

Run through Flower's simulation runtime with ``flwr run`` (see
:mod:`simulations._runtime`); the app folder shipped in
``simulations/flower_app`` only points Flower at the two objects here.

- The ``ServerApp`` waits for one SuperNode per site, asks each which site it
  is, then tells all of them to train and collects what each did as it
  arrives. It writes the outcomes to the run's ``results-file``.
- The ``ClientApp`` is a hospital: its ``partition-id`` picks its site job
  (its own data share, home folder and key), and it runs
  :func:`simulations._site_job.run_site_job`: the site agent's own training
  and publishing use cases. A site that drops out answers with an error, as
  a crashed hospital would.

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
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from logging import INFO, WARNING
from pathlib import Path
from typing import Any

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
from flwr.serverapp import Grid, ServerApp

from simulations._aggregation import Screening, default_aggregation, robust_strategy
from simulations._faults import (
    INFLATED_EXAMPLES,
    lie_in_policy_answer,
    poison_update,
    rogue_publications,
)
from simulations._flower_tune import (
    adapter_card_template,
    deployed_tune_job,
    first_arrays,
    tune_adapter,
    tune_modes,
)
from simulations._site_job import SiteJob, SiteOutcome, local_update, run_site_job
from simulations._tune_job import (
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
from simulations.errors import ScenarioError

__all__ = ["client_app", "server_app"]

client_app = ClientApp()
server_app = ServerApp()


def _deployed(context: Context) -> bool:
    """Whether this SuperNode is a hospital's (no simulation's jobs file in the run config)."""
    return not context.run_config.get("jobs-file")


def _tuning_deployed(context: Context) -> bool:
    """Whether this adapter run is a hospital's (a simulation's names its jobs file)."""
    return not context.run_config.get("tune-jobs-file")


def _job(context: Context) -> SiteJob:
    """This SuperNode's site job: the simulation's, or (deployed) from its node config."""
    if _deployed(context):
        return deployed_job(context.node_config, context.run_config, context.run_id)
    jobs = json.loads(Path(str(context.run_config["jobs-file"])).read_text())
    return SiteJob.from_json(jobs[int(context.node_config["partition-id"])])


def deployed_job(node: Mapping[str, object], run: Mapping[str, object], run_id: int) -> SiteJob:
    """A deployed site's job, from its node config and the run config.

    The node config (written by ``gsco site join``) says where the site's
    home, data and registry are; the run config (``gsco federation run``)
    says what to train.

    Raises:
        ScenarioError: a node config key is missing, or its task file declares another task.
        DataError: the node config's task file cannot be read.
    """
    from site_agent import open_site

    missing = [k for k in ("home", "data", "task", "registry", "work") if not node.get(k)]
    if missing:
        raise ScenarioError(
            f"this SuperNode's node config lacks {', '.join(missing)}: start it with "
            f"'gsco site join'"
        )
    home = Path(str(node["home"]))
    task = str(node["task"])
    if run.get("task") and str(run["task"]) != task:
        raise ScenarioError(f"this site trains for {task!r}; the run is for {run['task']!r}")
    declared = None
    if node.get("task-file"):
        from site_agent.data import load_task_file

        entry = load_task_file(Path(str(node["task-file"])))
        if entry.task.task_id != task:
            raise ScenarioError(
                f"this SuperNode's task file declares {entry.task.task_id!r}, its node config "
                f"says {task!r}: start it again with 'gsco site join'"
            )
        declared = entry.task.model_dump(mode="json")
    work = Path(str(node["work"]))
    input_size = int(str(run.get("input-size", 0)))
    max_minutes = float(str(run.get("max-minutes", 0.0)))
    return SiteJob(
        site_id=open_site(home).config.site_id,
        home=str(home),
        data=str(node["data"]),
        task_id=task,
        dataset=None,
        registry=str(node["registry"]),
        registry_ca=str(node["registry-ca"]) if node.get("registry-ca") else None,
        out_dir=str(work / f"run-{run_id}" / task),
        backbone=str(run.get("backbone", SiteJob.backbone)),
        epochs=int(str(run.get("epochs", SiteJob.epochs))),
        max_minutes=max_minutes or None,
        batch_size=int(str(run.get("batch-size", SiteJob.batch_size))),
        learning_rate=float(str(run.get("learning-rate", SiteJob.learning_rate))),
        input_size=input_size or None,
        max_eval_images=int(str(run.get("max-eval-images", 0))) or None,
        seed=int(str(run.get("seed", 0))),
        task=declared,
    )


def _site_errors(
    handler: Callable[[Message, Context], Message],
) -> Callable[[Message, Context], Message]:
    """A deployed site's adapter handler whose failures leave without the site's local paths.

    The traceback stays in the SuperNode's own log; the SuperLink gets the
    error's type and message, each path replaced (:func:`without_paths`).
    """

    @functools.wraps(handler)
    def handle(message: Message, context: Context) -> Message:
        try:
            return handler(message, context)
        except Exception as exc:
            if not _tuning_deployed(context):
                raise
            log(WARNING, "gsco: %s failed", handler.__name__, exc_info=exc)
            raise RuntimeError(without_paths(f"{type(exc).__name__}: {exc}")) from None

    return handle


def _tune_job(context: Context) -> TuneJob:
    """This SuperNode's adapter job: the simulation's, or (deployed) from its node config."""
    if _tuning_deployed(context):
        return deployed_tune_job(context.node_config, context.run_config, context.run_id)
    jobs = json.loads(Path(str(context.run_config["tune-jobs-file"])).read_text())
    return TuneJob.from_json(jobs[int(context.node_config["partition-id"])])


@client_app.query("adapter_examples")
@_site_errors
def adapter_examples_query(message: Message, context: Context) -> Message:
    """Builds this site's evidence examples (kept at the site); declares how many.

    And how many validation cases it holds for the policy fit.
    """
    job = _tune_job(context)
    count = len(adapter_examples(job))
    if "inflate-examples" in job.faults:
        count = INFLATED_EXAMPLES
    declared = ConfigRecord(
        {"site-id": job.site_id, "count": count, "policy-cases": len(job.policy_rows)}
    )
    return Message(RecordDict({"examples": declared}), reply_to=message)


@client_app.query("adapter_initial_state")
@_site_errors
def adapter_initial_state_query(message: Message, context: Context) -> Message:
    """The adapter's starting weights (the recipe's seeded LoRA initialisation)."""
    job = _tune_job(context)
    return Message(
        RecordDict({"arrays": ArrayRecord(adapter_initial_state(job))}), reply_to=message
    )


@client_app.train("adapter")
@_site_errors
def adapter_train(message: Message, context: Context) -> Message:
    """One FedAvg round of the generalist's LoRA adapter at this site."""
    import torch  # noqa: F401  (ArrayRecord.to_torch_state_dict needs it imported)

    job = _tune_job(context)
    server_round = int(str(message.content.config_records["config"].get("server-round", 1)))

    def update(state: Any, epochs: int) -> tuple[dict[str, Any], int, float]:
        trained, examples, loss = adapter_update(job, state, epochs)
        if "poison-adapter" in job.faults:
            trained = poison_update(trained, state, server_round)
        if "inflate-examples" in job.faults:
            examples = INFLATED_EXAMPLES
        return trained, examples, loss

    return _fedavg_round(message, update)


@client_app.query("adapter_policy_evidence")
@_site_errors
def adapter_policy_evidence_query(message: Message, context: Context) -> Message:
    """Scores this site's policy cases with the final adapter (kept here); says the task."""
    import torch  # noqa: F401  (ArrayRecord.to_torch_state_dict needs it imported)

    job = _tune_job(context)
    state = message.content.array_records["arrays"].to_torch_state_dict()
    task, cases = policy_evidence(job, state, str(message.content["policy"]["name"]))
    reply = ConfigRecord({"site-id": job.site_id, "task": task, "cases": cases})
    return Message(RecordDict({"policy": reply}), reply_to=message)


@client_app.query("adapter_policy")
@_site_errors
def adapter_policy_query(message: Message, context: Context) -> Message:
    """This site's answer to one question of the policy fit: sums and counts, nothing else."""
    job = _tune_job(context)
    question = json.loads(str(message.content["policy"]["question"]))
    answer = policy_answer(job, question)
    if "lie-policy" in job.faults:
        answer = lie_in_policy_answer(question, answer)
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


@client_app.query("prepare_adapter")
@_site_errors
def prepare_adapter_query(message: Message, context: Context) -> Message:
    """Writes and signs the federated adapter (its policy in the card); proposes its role."""
    import torch  # noqa: F401  (ArrayRecord.to_torch_state_dict needs it imported)

    from protocol import ArbitrationPolicy

    job = _tune_job(context)
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


@client_app.query("endorse_adapter")
@_site_errors
def endorse_adapter_query(message: Message, context: Context) -> Message:
    """Checks the consortium's adapter against what this site trained, then co-signs it."""
    import torch  # noqa: F401  (ArrayRecord.to_torch_state_dict needs it imported)

    job = _tune_job(context)
    files = _bundle_files(message)
    proposal = bytes(message.content["adapter"]["proposal"])  # type: ignore[arg-type]
    received = message.content.array_records["arrays"].to_torch_state_dict()
    if "rogue-adapter" in job.faults:
        refusals = rogue_publications(job, received, json.loads(files["adapter_card.json"]))
        reply = ConfigRecord(
            {"declined": "a rogue site: it wants its own adapter", "rogue": json.dumps(refusals)}
        )
        return Message(RecordDict({"endorsement": reply}), reply_to=message)
    endorsement = endorse_adapter(job, files, proposal, received)
    return Message(
        RecordDict({"endorsement": ConfigRecord({"json": endorsement.to_json()})}),
        reply_to=message,
    )


@client_app.query("publish_adapter")
@_site_errors
def publish_adapter_query(message: Message, context: Context) -> Message:
    """Publishes the adapter this site prepared, with the training sites' co-signatures."""
    from registry import Endorsement

    job = _tune_job(context)
    files = _bundle_files(message)
    record = message.content["adapter"]
    endorsements = [Endorsement.from_json(e) for e in json.loads(str(record["endorsements"]))]
    proposal = bytes(record["proposal"])  # type: ignore[arg-type]
    folder, digest, version = publish_consortium_adapter(job, files, proposal, endorsements)
    if _tuning_deployed(context):  # where the site keeps its files stays at the site
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


@client_app.query("site_id")
def site_id_query(message: Message, context: Context) -> Message:
    """Says which site this SuperNode is."""
    job = _job(context)
    return Message(RecordDict({"site": ConfigRecord({"site-id": job.site_id})}), reply_to=message)


@client_app.query("publish_shared")
def publish_shared_query(message: Message, context: Context) -> Message:
    """Calibrates, evaluates, indexes, signs and publishes the shared FedAvg specialist here."""
    import torch  # noqa: F401  (ArrayRecord.to_torch_state_dict needs it imported)

    from protocol import FederatedTraining

    job = _job(context)
    federation = FederatedTraining.parse(str(message.content["shared"]["federation"]))
    state = message.content.array_records["arrays"].to_torch_state_dict()
    return _answer(run_site_job(job, shared_state=state, federation=federation), context, message)


@client_app.train("specialist")
def specialist_train(message: Message, context: Context) -> Message:
    """Trains, signs and publishes this site's own specialist.

    A site acting out ``drop-out`` raises: Flower answers the server with an error.
    """
    return _answer(run_site_job(_job(context)), context, message)


def without_paths(text: str) -> str:
    """``text`` with every word that holds a path separator (not a URL) replaced.

    Errs on the side of saying less: a path with a space in it loses both halves.
    """
    return "".join(
        "<local path>" if ("/" in word or "\\" in word) and "://" not in word else word
        for word in re.split(r"(\s+)", text)
    )


def _answer(outcome: SiteOutcome, context: Context, message: Message) -> Message:
    """The outcome as the reply; a deployed site's failure leaves without its local paths.

    The full detail goes to this SuperNode's own log, at the site; what crosses
    to the SuperLink is the outcome, its counts and the error without its
    paths (:func:`without_paths`). A registry's refusal (``rejected``) names
    no local path and crosses whole.
    """
    if _deployed(context) and outcome.status == "failed":
        log(WARNING, "gsco: %s failed here: %s", outcome.site_id, outcome.detail)
        outcome = replace(outcome, detail=without_paths(outcome.detail))
    return Message(
        RecordDict({"outcome": ConfigRecord({"json": outcome.to_json()})}), reply_to=message
    )


@client_app.query("initial_state")
def initial_state_query(message: Message, context: Context) -> Message:
    """The seeded, untrained weights FedAvg starts from, made at this site.

    A deployed SuperLink has no data to learn the input's channels from, so it
    asks one site; only the untrained backbone's weights cross.
    """
    from simulations._fedavg import initial_state

    return Message(
        RecordDict({"arrays": ArrayRecord(initial_state(_job(context)))}), reply_to=message
    )


@client_app.train("fedavg")
def fedavg_train(message: Message, context: Context) -> Message:
    """One FedAvg round of the shared specialist at this site."""
    import torch  # noqa: F401  (ArrayRecord.to_torch_state_dict needs it imported)

    job = _job(context)
    return _fedavg_round(message, lambda state, epochs: local_update(job, state, epochs))


def _outcome(reply: Message, site: str, *, federated: bool = False) -> SiteOutcome:
    """The site's own outcome, or ``dropped-out`` when it answered with an error."""
    if reply.has_content():
        return SiteOutcome.from_json(str(reply.content["outcome"]["json"]))
    reason = (reply.error.reason or "error") if reply.has_error() else "no reply"
    return SiteOutcome(site, "dropped-out", reason[-500:], federated=federated)


def _wait_for_nodes(grid: Grid, count: int, timeout_s: float) -> list[int]:
    deadline = time.monotonic() + timeout_s
    while True:
        nodes = sorted(grid.get_node_ids())
        if len(nodes) >= count or time.monotonic() > deadline:
            return nodes
        time.sleep(0.2)


@server_app.main()
def main(grid: Grid, context: Context) -> None:
    """Coordinates one run: the sites' specialists, or (``stage = "tune"``) the adapter."""
    if str(context.run_config.get("stage", "sites")) == "tune":
        _tune(grid, context)
        return
    config = context.run_config
    jobs_file = str(config.get("jobs-file", ""))
    jobs = json.loads(Path(jobs_file).read_text()) if jobs_file else []
    results_file = Path(str(config["results-file"]))
    timeout_s = float(config["timeout-s"])
    wanted = len(jobs) or int(str(config.get("min-sites", 1)))
    nodes = _wait_for_nodes(grid, wanted, float(str(config.get("wait-s", 120.0))))
    log(INFO, "gsco: %d hospital sites connected", len(nodes))
    if len(nodes) < wanted:
        log(WARNING, "gsco: %d sites connected, fewer than the %d needed", len(nodes), wanted)
        results_file.write_text(
            json.dumps({"error": f"{len(nodes)} sites connected, {wanted} needed"})
        )
        return
    replies = grid.send_and_receive(
        [
            Message(RecordDict({"ask": ConfigRecord({"what": "site-id"})}), node, "query.site_id")
            for node in nodes
        ],
        timeout=120.0,
    )
    site_of = {
        reply.metadata.src_node_id: str(reply.content["site"]["site-id"])
        for reply in replies
        if reply.has_content()
    }
    outcomes: dict[str, dict[str, object]] = {}
    pending = grid.push_messages(
        [
            Message(RecordDict({"go": ConfigRecord({"round": 1})}), node, "train.specialist")
            for node in nodes
        ]
    )
    waiting = set(pending)
    deadline = time.monotonic() + timeout_s
    while waiting and time.monotonic() < deadline:
        for reply in grid.pull_messages(list(waiting)):
            waiting.discard(reply.metadata.reply_to_message_id)
            site = site_of.get(reply.metadata.src_node_id, f"node-{reply.metadata.src_node_id}")
            outcome = _outcome(reply, site)
            outcomes[site] = json.loads(outcome.to_json())
            log(
                INFO,
                "gsco: site %s %s (%d/%d) %s",
                site,
                outcome.status,
                len(outcomes),
                len(nodes),
                outcome.detail[:200],
            )
        time.sleep(0.5)
    for node, site in site_of.items():
        if site not in outcomes:
            log(WARNING, "gsco: site %s (node %s) did not answer in time", site, node)
            outcomes[site] = json.loads(SiteOutcome(site, "dropped-out", "timed out").to_json())
    rounds = int(context.run_config.get("fedavg-rounds", 0))
    live = [n for n, site in site_of.items() if outcomes[site]["status"] != "dropped-out"]
    if rounds:
        declared = {n: int(str(outcomes[site].get("n_train", 0))) for n, site in site_of.items()}
        outcomes.update(_federated(grid, context, jobs, live, site_of, rounds, declared))
    report: dict[str, object] = dict(outcomes)
    if not jobs:  # deployed: the run succeeds while enough sites published
        published = sum(  # each site's own specialist; the shared FedAvg one is extra
            1 for o in outcomes.values() if o["status"] == "published" and not o.get("federated")
        )
        report["_run"] = {"min_sites": wanted, "connected": len(nodes), "published": published}
        if int(str(config.get("tune-rounds", 0))) > 0 and published:
            report["_adapter"] = _deployed_tuning(grid, config, sorted(live))
    results_file.write_text(json.dumps(report, indent=2))


def _deployed_tuning(grid: Grid, config: Any, nodes: list[int]) -> dict[str, Any]:
    """After the specialists: the adapter tuned over the sites, its policy fitted at them."""
    examples = int(str(config.get("tune-examples-per-site", 120)))
    cases = int(str(config.get("tune-policy-cases-per-site", 0)))
    log(INFO, "gsco: tuning the generalist's adapter over %d sites", len(nodes))
    split = (
        f"each site's own validation split: up to {examples} cases tune the adapter and up to "
        f"{cases} others (at most half the split) fit its arbitration policy at the site; the "
        "specialists' temperatures were fitted on the whole split"
    )
    return tune_adapter(
        grid,
        config,
        nodes,
        initial=None,
        training=adapter_card_template(tune_modes(config), split),
        fit_policy=cases > 0,
    )


def _federated(
    grid: Grid,
    context: Context,
    jobs: list[str],
    nodes: list[int],
    site_of: dict[int, str],
    rounds: int,
    declared: dict[int, int],
) -> dict[str, dict[str, object]]:
    """Robust FedAvg over ``nodes``, then every participant publishes the shared specialist.

    ``declared``: the training images each site reported when it trained its
    own specialist; a round's ``num-examples`` counts for no more.
    """
    from simulations._fedavg import federation_card, initial_state

    config = context.run_config
    local_epochs = int(config.get("fedavg-local-epochs", 1))
    noise = float(config.get("dp-noise-multiplier", 0.0))
    clip = float(config.get("dp-clipping-norm", 1.0))
    delta = float(config.get("dp-delta", 1e-5))
    log(INFO, "gsco: FedAvg over %d sites, %d rounds", len(nodes), rounds)
    screening = Screening(site_of, {n: c for n, c in declared.items() if c > 0})
    strategy = robust_strategy(
        "fedavg",
        nodes,
        screening,
        aggregation=str(config.get("aggregation", "")) or None,
        dp_noise=noise,
        dp_clip=clip,
    )
    if jobs:  # simulated: the first site's job is here
        initial = ArrayRecord(initial_state(SiteJob.from_json(jobs[0])))
    else:  # deployed: the first site makes them
        found = first_arrays(grid, nodes, "initial_state", float(config["timeout-s"]))
        if isinstance(found, list):
            problem = "no site could make the starting weights (see the SuperNodes' logs)"
            log(WARNING, "gsco: no FedAvg: %s", problem)
            return {
                f"{site} (fedavg)": json.loads(
                    SiteOutcome(site, "failed", problem, federated=True).to_json()
                )
                for site in (site_of.get(n, "?") for n in nodes)
            }
        initial = found
    result = strategy.start(
        grid=grid,
        initial_arrays=initial,
        num_rounds=rounds,
        timeout=float(config["timeout-s"]),
        train_config=ConfigRecord({"local-epochs": local_epochs}),
    )
    federation = federation_card(
        rounds,
        len(nodes),
        local_epochs,
        noise,
        clip,
        delta,
        str(config.get("aggregation", "")) or default_aggregation(len(nodes)),
    )
    log(INFO, "gsco: FedAvg done; %d sites publish the shared specialist", len(nodes))
    replies = grid.send_and_receive(
        [
            Message(
                RecordDict(
                    {
                        "shared": ConfigRecord({"federation": federation.model_dump_json()}),
                        "arrays": result.arrays,
                    }
                ),
                node,
                "query.publish_shared",
            )
            for node in nodes
        ],
        timeout=float(config["timeout-s"]),
    )
    shared: dict[str, dict[str, object]] = {}
    for reply in replies:
        site = site_of.get(reply.metadata.src_node_id, "?")
        outcome = _outcome(reply, site, federated=True)
        if site in screening.events:  # what of its updates was refused or clipped
            notes = "; ".join(screening.events[site])
            outcome = replace(outcome, detail=f"{outcome.detail} [FedAvg: {notes}]"[:2000])
        shared[f"{site} (fedavg)"] = json.loads(outcome.to_json())
        log(INFO, "gsco: site %s shared specialist %s %s", site, outcome.status, outcome.detail)
    return shared


def _tune(grid: Grid, context: Context) -> None:
    """The simulation's adapter run: FedAvg of the adapter, its policy, a site signs the result.

    The policy is fitted at the sites, as in a deployed run, when the jobs give
    them policy cases (``tune-policy-cases-per-site``).
    """
    config = context.run_config
    jobs = [
        TuneJob.from_json(j) for j in json.loads(Path(str(config["tune-jobs-file"])).read_text())
    ]
    nodes = _wait_for_nodes(grid, len(jobs), 120.0)
    log(INFO, "gsco: adapter tuning, %d sites connected", len(nodes))
    first = jobs[0]
    outcome = tune_adapter(
        grid,
        config,
        nodes,
        initial=lambda: adapter_initial_state(first),
        training=json.loads(str(config["adapter-card"])),
        fit_policy=int(str(config.get("tune-policy-cases-per-site", 0))) > 0,
        publish_without_policy=True,  # simulations/_run.py then fits it through its hub
    )
    Path(str(config["results-file"])).write_text(json.dumps(outcome, indent=2))
