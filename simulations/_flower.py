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
from logging import INFO, WARNING
from pathlib import Path

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.common import log
from flwr.serverapp import Grid, ServerApp

from simulations._site_job import SiteJob, SiteOutcome, local_update, run_site_job

__all__ = ["client_app", "server_app"]

client_app = ClientApp()
server_app = ServerApp()


def _job(context: Context) -> SiteJob:
    jobs = json.loads(Path(str(context.run_config["jobs-file"])).read_text())
    return SiteJob.from_json(jobs[int(context.node_config["partition-id"])])


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
        epochs = int(str(message.content.config_records["config"]["local-epochs"]))
        state, examples, loss = local_update(
            job, message.content.array_records["arrays"].to_torch_state_dict(), epochs
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
    """Coordinates one round: identify every site, then train and publish everywhere."""
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
