"""The Flower app: one ``ClientApp`` per simulated hospital, a ``ServerApp`` that coordinates.

Run through Flower's simulation runtime with ``flwr run`` (see
:mod:`simulations._runtime`); the app folder shipped in
``simulations/flower_app`` only points Flower at the two objects here.

- The ``ServerApp`` waits for one SuperNode per site, asks each which site it
  is (``query``), then tells all of them to ``train`` and collects what each
  did as it arrives. It writes the outcomes to the run's ``results-file``.
- The ``ClientApp`` is a hospital: its ``partition-id`` picks its site job
  (its own data share, home folder and key), and it runs
  :func:`simulations._site_job.run_site_job`: local training with the site
  agent, signing and publishing to the registry. A site that drops out
  answers with an error, as a crashed hospital would.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from logging import INFO, WARNING
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.common import log
from flwr.serverapp import Grid, ServerApp

if TYPE_CHECKING:
    from site_agent.adapter import AdapterRecipe

from simulations._site_job import SiteJob, SiteOutcome, local_update, run_site_job
from simulations._tune_job import TuneJob, adapter_examples, adapter_update, publish_adapter

__all__ = ["client_app", "server_app"]

client_app = ClientApp()
server_app = ServerApp()


def _job(context: Context) -> SiteJob:
    jobs = json.loads(Path(str(context.run_config["jobs-file"])).read_text())
    return SiteJob.from_json(jobs[int(context.node_config["partition-id"])])


def _tune_job(context: Context) -> TuneJob:
    jobs = json.loads(Path(str(context.run_config["tune-jobs-file"])).read_text())
    return TuneJob.from_json(jobs[int(context.node_config["partition-id"])])


@client_app.query("adapter_examples")
def adapter_examples_query(message: Message, context: Context) -> Message:
    """Builds this site's evidence examples (kept at the site) and says how many."""
    job = _tune_job(context)
    examples = adapter_examples(job)
    return Message(
        RecordDict({"examples": ConfigRecord({"site-id": job.site_id, "count": len(examples)})}),
        reply_to=message,
    )


@client_app.train("adapter")
def adapter_train(message: Message, context: Context) -> Message:
    """One FedAvg round of the generalist's LoRA adapter at this site."""
    import torch  # noqa: F401  (ArrayRecord.to_torch_state_dict needs it imported)

    job = _tune_job(context)
    return _fedavg_round(message, lambda state, epochs: adapter_update(job, state, epochs))


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


@client_app.query("publish_adapter")
def publish_adapter_query(message: Message, context: Context) -> Message:
    """Writes, signs and publishes the federated adapter under this site's key."""
    import torch  # noqa: F401  (ArrayRecord.to_torch_state_dict needs it imported)

    job = _tune_job(context)
    training = json.loads(str(message.content["adapter"]["training"]))
    state = message.content.array_records["arrays"].to_torch_state_dict()
    folder, digest = publish_adapter(job, state, training)
    return Message(
        RecordDict(
            {"adapter": ConfigRecord({"bundle": folder, "digest": digest, "site-id": job.site_id})}
        ),
        reply_to=message,
    )


@client_app.query()
def query(message: Message, context: Context) -> Message:
    """Says which site this SuperNode is, or publishes the shared FedAvg specialist."""
    job = _job(context)
    if "publish-shared" not in message.content:
        return Message(
            RecordDict({"site": ConfigRecord({"site-id": job.site_id})}), reply_to=message
        )
    from protocol import FederatedTraining

    federation = FederatedTraining.parse(str(message.content["publish-shared"]["federation"]))
    state = message.content.array_records["arrays"].to_torch_state_dict()
    outcome = run_site_job(job, shared_state=state, federation=federation)
    return Message(
        RecordDict({"outcome": ConfigRecord({"json": outcome.to_json()})}), reply_to=message
    )


@client_app.train()
def train(message: Message, context: Context) -> Message:
    """Trains, signs and publishes this site's own specialist, or runs one FedAvg round.

    A site acting out ``drop-out`` raises: Flower answers the server with an error.
    """
    job = _job(context)
    if "arrays" in message.content:  # a FedAvg round from the strategy
        import torch  # noqa: F401  (ArrayRecord.to_torch_state_dict needs it imported)

        return _fedavg_round(message, lambda state, epochs: local_update(job, state, epochs))
    outcome = run_site_job(job)
    return Message(
        RecordDict({"outcome": ConfigRecord({"json": outcome.to_json()})}), reply_to=message
    )


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
    jobs = json.loads(Path(str(context.run_config["jobs-file"])).read_text())
    results_file = Path(str(context.run_config["results-file"]))
    timeout_s = float(context.run_config["timeout-s"])
    nodes = _wait_for_nodes(grid, len(jobs), 120.0)
    log(INFO, "gsco: %d hospital sites connected", len(nodes))
    replies = grid.send_and_receive(
        [
            Message(RecordDict({"ask": ConfigRecord({"what": "site-id"})}), node, "query")
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
        [Message(RecordDict({"go": ConfigRecord({"round": 1})}), node, "train") for node in nodes]
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
    if rounds:
        live = [n for n, site in site_of.items() if outcomes[site]["status"] != "dropped-out"]
        outcomes.update(_federated(grid, context, jobs, live, site_of, rounds))
    results_file.write_text(json.dumps(outcomes, indent=2))


def _federated(
    grid: Grid,
    context: Context,
    jobs: list[str],
    nodes: list[int],
    site_of: dict[int, str],
    rounds: int,
) -> dict[str, dict[str, object]]:
    """FedAvg over ``nodes``, then every participant publishes the shared specialist."""
    from flwr.serverapp.strategy import DifferentialPrivacyServerSideFixedClipping, FedAvg

    from simulations._fedavg import federation_card, initial_state

    config = context.run_config
    local_epochs = int(config.get("fedavg-local-epochs", 1))
    noise = float(config.get("dp-noise-multiplier", 0.0))
    clip = float(config.get("dp-clipping-norm", 1.0))
    delta = float(config.get("dp-delta", 1e-5))
    log(INFO, "gsco: FedAvg over %d sites, %d rounds", len(nodes), rounds)
    strategy: FedAvg | DifferentialPrivacyServerSideFixedClipping = FedAvg(
        fraction_train=1.0,
        fraction_evaluate=0.0,
        min_train_nodes=max(1, len(nodes)),
        min_available_nodes=max(1, len(nodes)),
    )
    if noise > 0:
        strategy = DifferentialPrivacyServerSideFixedClipping(
            strategy, noise, clip, num_sampled_clients=max(1, len(nodes))
        )
    result = strategy.start(
        grid=grid,
        initial_arrays=ArrayRecord(initial_state(SiteJob.from_json(jobs[0]))),
        num_rounds=rounds,
        timeout=float(config["timeout-s"]),
        train_config=ConfigRecord({"local-epochs": local_epochs}),
    )
    federation = federation_card(rounds, len(nodes), local_epochs, noise, clip, delta)
    log(INFO, "gsco: FedAvg done; %d sites publish the shared specialist", len(nodes))
    replies = grid.send_and_receive(
        [
            Message(
                RecordDict(
                    {
                        "publish-shared": ConfigRecord(
                            {"federation": federation.model_dump_json()}
                        ),
                        "arrays": result.arrays,
                    }
                ),
                node,
                "query",
            )
            for node in nodes
        ],
        timeout=float(config["timeout-s"]),
    )
    shared: dict[str, dict[str, object]] = {}
    for reply in replies:
        site = site_of.get(reply.metadata.src_node_id, "?")
        outcome = _outcome(reply, site, federated=True)
        shared[f"{site} (fedavg)"] = json.loads(outcome.to_json())
        log(INFO, "gsco: site %s shared specialist %s %s", site, outcome.status, outcome.detail)
    return shared


def _tune(grid: Grid, context: Context) -> None:
    """FedAvg of the generalist's LoRA adapter; the first site signs the result.

    Every site first builds its evidence examples (and says how many); then
    ``tune-rounds`` FedAvg rounds (messages ``train.adapter``, weighted by
    examples); then one site writes and signs the adapter bundle.
    """
    from flwr.app import MessageType
    from flwr.serverapp.strategy import DifferentialPrivacyServerSideFixedClipping, FedAvg

    from site_agent.adapter import AdapterTrainer

    config = context.run_config
    jobs = [
        TuneJob.from_json(j) for j in json.loads(Path(str(config["tune-jobs-file"])).read_text())
    ]
    results_file = Path(str(config["results-file"]))
    timeout_s = float(config["timeout-s"])
    rounds = int(config.get("tune-rounds", 1))
    local_epochs = int(config.get("tune-local-epochs", 1))
    nodes = _wait_for_nodes(grid, len(jobs), 120.0)
    log(INFO, "gsco: adapter tuning, %d sites connected", len(nodes))
    replies = grid.send_and_receive(
        [
            Message(
                RecordDict({"ask": ConfigRecord({"what": "examples"})}),
                node,
                "query.adapter_examples",
            )
            for node in nodes
        ],
        timeout=timeout_s,
    )
    counts: dict[str, int] = {}
    live = []
    for reply in replies:
        if reply.has_content():
            record = reply.content["examples"]
            counts[str(record["site-id"])] = int(str(record["count"]))
            live.append(reply.metadata.src_node_id)
        else:
            reason = (reply.error.reason if reply.has_error() else None) or "no reply"
            log(WARNING, "gsco: a site could not build adapter examples: %s", reason[-300:])
    log(INFO, "gsco: adapter examples per site: %s", counts)
    outcome: dict[str, object] = {"examples_per_site": counts, "rounds": rounds}
    if not live:
        outcome["error"] = "no site could build evidence examples"
        results_file.write_text(json.dumps(outcome))
        return

    class AdapterFedAvg(FedAvg):
        """FedAvg whose rounds go to the ClientApp's ``train.adapter`` action."""

        def _construct_messages(self, record, node_ids, message_type):  # type: ignore[no-untyped-def]
            if message_type == MessageType.TRAIN:
                message_type = f"{MessageType.TRAIN}.adapter"
            return super()._construct_messages(record, node_ids, message_type)

    first = jobs[0]
    initial = AdapterTrainer(Path(first.model_dir), _recipe(first)).state()
    strategy: FedAvg | DifferentialPrivacyServerSideFixedClipping = AdapterFedAvg(
        fraction_train=1.0,
        fraction_evaluate=0.0,
        min_train_nodes=len(live),
        min_available_nodes=len(live),
    )
    noise = float(config.get("tune-dp-noise-multiplier", 0.0))
    clip = float(config.get("tune-dp-clipping-norm", 1.0))
    if noise > 0:  # Flower's DP wrapper: the server clips each site's update and adds noise
        strategy = DifferentialPrivacyServerSideFixedClipping(
            strategy, noise, clip, num_sampled_clients=len(live)
        )
    started = time.monotonic()
    result = strategy.start(
        grid=grid,
        initial_arrays=ArrayRecord(initial),
        num_rounds=rounds,
        timeout=timeout_s,
        train_config=ConfigRecord({"local-epochs": local_epochs}),
    )
    losses = [
        float(str(metrics.get("train-loss", "nan")))
        for metrics in (result.train_metrics_clientapp or {}).values()
    ]
    outcome["tuning_seconds"] = round(time.monotonic() - started, 1)
    outcome["losses"] = losses
    log(INFO, "gsco: adapter FedAvg done in %.0f s; losses %s", outcome["tuning_seconds"], losses)
    training = json.loads(str(config["adapter-card"]))
    training["training"]["examples"] = sum(counts.values())
    training["training"]["examples_per_site"] = counts
    training["training"]["sites"] = sorted(counts)
    training["training"]["rounds"] = rounds
    training["training"]["local_epochs"] = local_epochs
    if losses and losses[-1] == losses[-1]:
        training["training"]["final_loss"] = max(0.0, losses[-1])
    if noise > 0:
        from simulations._fedavg import federation_card

        privacy = federation_card(
            rounds, len(live), local_epochs, noise, clip, float(config.get("dp-delta", 1e-5))
        ).differential_privacy
        assert privacy is not None
        training["training"]["differential_privacy"] = privacy.model_dump(mode="json")
    signer = live[0]
    replies = grid.send_and_receive(
        [
            Message(
                RecordDict(
                    {
                        "adapter": ConfigRecord({"training": json.dumps(training)}),
                        "arrays": result.arrays,
                    }
                ),
                signer,
                "query.publish_adapter",
            )
        ],
        timeout=timeout_s,
    )
    for reply in replies:
        if reply.has_content():
            outcome["bundle"] = str(reply.content["adapter"]["bundle"])
            outcome["published"] = str(reply.content["adapter"]["digest"])
            outcome["signed_by"] = str(reply.content["adapter"]["site-id"])
        else:
            reason = (reply.error.reason if reply.has_error() else None) or "no reply"
            outcome["error"] = reason[-500:]
    log(INFO, "gsco: adapter bundle %s", outcome.get("bundle", outcome.get("error")))
    results_file.write_text(json.dumps(outcome, indent=2))


def _recipe(job: TuneJob) -> AdapterRecipe:
    from simulations._tune_job import recipe_of

    recipe: AdapterRecipe = recipe_of(job.recipe)
    return recipe
