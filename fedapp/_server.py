"""The ServerApp: the SuperLink's side of a run.

It waits for the sites' SuperNodes, asks each which site it is, tells all of
them to train their specialists and collects what each did as it arrives;
with FedAvg rounds, a robust FedAvg of the shared specialist that every
participant then publishes; in a deployed run with tuning rounds, the
generalist's adapter tuned over the sites, its policy fitted at them and the
result co-signed by them (:mod:`fedapp._tune`). It writes the outcomes to the
run's ``results-file``.
"""

from __future__ import annotations

import functools
import json
import time
from dataclasses import replace
from logging import INFO, WARNING
from pathlib import Path
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.common import log
from flwr.serverapp import Grid, ServerApp

from fedapp._aggregation import Screening, default_aggregation, robust_strategy
from fedapp._site_job import SiteJob, SiteOutcome
from fedapp._tune import (
    adapter_card_template,
    first_arrays,
    run_request,
    tune_adapter,
    tune_modes,
    whole_count,
)
from fedapp._tune_job import TuneJob, adapter_initial_state
from fedapp.errors import JobError
from protocol import RunRequest

__all__ = ["make_server_app"]


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


def _main(grid: Grid, context: Context, *, simulated: bool) -> None:
    """Coordinates one run: the sites' specialists, or a simulation's adapter stage."""
    config = context.run_config
    results_file = Path(str(config["results-file"]))
    try:
        run = run_request(config)
    except JobError as exc:
        log(WARNING, "gsco: %s", exc)
        results_file.write_text(json.dumps({"error": str(exc)}))
        return
    if simulated and str(config.get("stage", "sites")) == "tune":
        _tune(grid, context, run)
        return
    jobs = json.loads(Path(str(config["jobs-file"])).read_text()) if simulated else []
    timeout_s = run.timeout_s
    wanted = len(jobs) or run.min_sites
    nodes = _wait_for_nodes(grid, wanted, run.wait_s)
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
    live = [n for n, site in site_of.items() if outcomes[site]["status"] != "dropped-out"]
    if run.fedavg.rounds:
        # a count that is not a whole number counts as none (the screening refuses it)
        declared = {
            n: whole_count(outcomes[site].get("n_train")) or 0 for n, site in site_of.items()
        }
        outcomes.update(_federated(grid, run, jobs, live, site_of, declared))
    report: dict[str, object] = dict(outcomes)
    if not jobs:  # deployed: the run succeeds while enough sites published
        published = sum(  # each site's own specialist; the shared FedAvg one is extra
            1 for o in outcomes.values() if o["status"] == "published" and not o.get("federated")
        )
        report["_run"] = {"min_sites": wanted, "connected": len(nodes), "published": published}
        if run.tune.rounds > 0 and published:
            report["_adapter"] = _deployed_tuning(grid, run, sorted(live))
    results_file.write_text(json.dumps(report, indent=2))


def _deployed_tuning(grid: Grid, run: RunRequest, nodes: list[int]) -> dict[str, Any]:
    """After the specialists: the adapter tuned over the sites, its policy fitted at them."""
    examples = run.tune.examples_per_site
    cases = run.tune.policy_cases_per_site
    log(INFO, "gsco: tuning the generalist's adapter over %d sites", len(nodes))
    split = (
        f"each site's own validation split: up to {examples} cases tune the adapter and up to "
        f"{cases} others (at most half the split) fit its arbitration policy at the site; the "
        "specialists' temperatures were fitted on the whole split"
    )
    return tune_adapter(
        grid,
        run,
        nodes,
        initial=None,
        training=adapter_card_template(tune_modes(run), split),
        fit_policy=cases > 0,
    )


def _federated(
    grid: Grid,
    run: RunRequest,
    jobs: list[str],
    nodes: list[int],
    site_of: dict[int, str],
    declared: dict[int, int],
) -> dict[str, dict[str, object]]:
    """Robust FedAvg over ``nodes``, then every participant publishes the shared specialist.

    ``declared``: the training images each site reported when it trained its
    own specialist; a round's ``num-examples`` counts for no more.
    """
    from fedapp._fedavg import federation_card, initial_state

    rounds = run.fedavg.rounds
    local_epochs = run.fedavg.local_epochs
    noise = run.fedavg.dp_noise_multiplier
    clip = run.fedavg.dp_clipping_norm
    delta = run.fedavg.dp_delta
    log(INFO, "gsco: FedAvg over %d sites, %d rounds", len(nodes), rounds)
    screening = Screening(site_of, {n: c for n, c in declared.items() if c > 0})
    strategy = robust_strategy(
        "fedavg",
        nodes,
        screening,
        aggregation=run.fedavg.aggregation,
        dp_noise=noise,
        dp_clip=clip,
    )
    if jobs:  # simulated: the first site's job is here
        initial = ArrayRecord(initial_state(SiteJob.from_json(jobs[0])))
    else:  # deployed: the first site makes them
        found = first_arrays(grid, nodes, "initial_state", run.timeout_s)
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
        timeout=run.timeout_s,
        train_config=ConfigRecord({"local-epochs": local_epochs}),
    )
    federation = federation_card(
        rounds,
        len(nodes),
        local_epochs,
        noise,
        clip,
        delta,
        run.fedavg.aggregation or default_aggregation(len(nodes)),
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
        timeout=run.timeout_s,
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


def _tune(grid: Grid, context: Context, run: RunRequest) -> None:
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
        run,
        nodes,
        initial=lambda: adapter_initial_state(first),
        training=json.loads(str(config["adapter-card"])),
        fit_policy=run.tune.policy_cases_per_site > 0,
        publish_without_policy=True,  # simulations/_run.py then fits it through its hub
    )
    Path(str(config["results-file"])).write_text(json.dumps(outcome, indent=2))


def make_server_app(*, simulated: bool = False) -> ServerApp:
    """The ServerApp: a consortium's (deployed), or a simulation's (its jobs file in the run).

    A deployed ServerApp never reads a jobs file, whatever the run config says.
    """
    app = ServerApp()
    app.main()(functools.partial(_main, simulated=simulated))
    return app
