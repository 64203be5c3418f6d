"""The ServerApp's adapter stage: FedAvg of the generalist's LoRA adapter, its policy, its bundle.

The same stage runs in the simulation (``stage = "tune"``, each site's
:class:`TuneJob` from the run's jobs file) and in a deployed run (after the
sites' specialists, when ``tune-rounds`` > 0: each SuperNode makes its job
from its node config, :func:`deployed_tune_job`).

1. every site builds its evidence examples and says how many;
2. ``tune-rounds`` FedAvg rounds of the adapter's weights, weighted by examples
   (Flower's server-side DP clipping and noise when asked);
3. deployed: the arbitration policy of the final adapter, fitted across the
   sites without their cases meeting (:func:`hub.fit_policy_from_answers`:
   each site scores its own policy cases with its copy of the tuned
   generalist and answers with sums and counts);
4. one site signs and publishes the adapter bundle, the policy in its card.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from logging import INFO, WARNING
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, RecordDict
from flwr.common import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import DifferentialPrivacyServerSideFixedClipping, FedAvg

from simulations._tune_job import TuneJob
from simulations.errors import ScenarioError

__all__ = [
    "ActionFedAvg",
    "adapter_card_template",
    "deployed_tune_job",
    "first_arrays",
    "tune_adapter",
    "tune_modes",
]

#: Node config keys a deployed site needs to tune the adapter (``gsco site join`` options).
TUNE_NODE_KEYS = {"trusted-root": "--trusted-root", "generalist-model": "--generalist-model"}


def deployed_tune_job(
    node: Mapping[str, object], run: Mapping[str, object], run_id: int
) -> TuneJob:
    """A deployed site's adapter job, from its node config and the run config.

    The site's validation split (of its MedMNIST-layout ``.npz``) is shared
    out at the site: up to ``tune-policy-cases-per-site`` cases for the
    policy (at most half), up to ``tune-examples-per-site`` others for tuning.

    Raises:
        ScenarioError: the node config lacks what tuning needs, or the data is not an ``.npz``
            with a validation split.
    """
    from generalist import MODEL_NAME
    from site_agent import open_site
    from site_agent.adapter import AdapterRecipe
    from site_agent.data import default_catalog, load_task_file

    missing = [flag for key, flag in TUNE_NODE_KEYS.items() if not node.get(key)]
    missing += [k for k in ("home", "data", "task", "registry", "work") if not node.get(k)]
    if missing:
        raise ScenarioError(
            "this site cannot tune the generalist's adapter: start its SuperNode with "
            f"'gsco site join' and {', '.join(missing)}"
        )
    data = Path(str(node["data"]))
    if data.suffix.lower() != ".npz":
        raise ScenarioError(
            f"adapter tuning reads the site's validation split from a MedMNIST-layout .npz; "
            f"this site's data is {data.name}"
        )
    try:
        with np.load(data, allow_pickle=False) as archive:
            n = len(archive["val_labels"])
    except (OSError, KeyError, ValueError) as exc:
        raise ScenarioError(f"{data.name} has no readable validation split: {exc}") from exc
    task_id = str(node["task"])
    if node.get("task-file"):
        task = load_task_file(Path(str(node["task-file"]))).task
    else:
        task = default_catalog().get(task_id).task
    seed = int(str(run.get("seed", 0)))
    examples = int(str(run.get("tune-examples-per-site", 120)))
    policy_cases = min(int(str(run.get("tune-policy-cases-per-site", 0))), n // 2)
    order = np.random.default_rng(seed + 1).permutation(n)
    recipe = json.loads(str(run.get("tune-recipe", ""))) if run.get("tune-recipe") else None
    work = Path(str(node["work"])) / f"run-{run_id}"
    return TuneJob(
        site_id=open_site(Path(str(node["home"]))).config.site_id,
        home=str(node["home"]),
        data=str(data),
        rows=tuple(int(r) for r in np.sort(order[policy_cases:][:examples])),
        task_id=task_id,
        registry=str(node["registry"]),
        trusted_root=str(node["trusted-root"]),
        model_dir=str(node["generalist-model"]),
        base_model=str(run.get("tune-base-model", "")) or MODEL_NAME,
        out_dir=str(work / f"adapter-{task_id}"),
        recipe=recipe or AdapterRecipe(max_examples=examples, seed=seed).to_dict(),
        modes=tune_modes(run),
        registry_ca=str(node["registry-ca"]) if node.get("registry-ca") else None,
        policy_rows=tuple(int(r) for r in np.sort(order[:policy_cases])),
        scratch=str(work / f"adapter-scratch-{task_id}"),
        task=task.model_dump(mode="json"),
    )


def adapter_card_template(modes: Sequence[str], split: str) -> dict[str, Any]:
    """The adapter card's ``training`` record as far as it is known before tuning.

    :func:`tune_adapter` fills in the rest: the sites and their examples, the
    rounds and local epochs, the final loss and the privacy budget.
    """
    return {
        "training": {
            "framework": "flower",
            "strategy": "fedavg",
            "prompt_modes": list(modes),
            "option_order": "shuffled",
            "evidence_split": split,
        },
    }


#: What the sites' copies of the tuned generalist call themselves in their answers.
_LOCAL_NAME = "tuned-adapter-site-copy"


class ActionFedAvg(FedAvg):
    """FedAvg whose training rounds go to one named ``train`` action of the ClientApp."""

    def __init__(self, action: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.action = action

    def _construct_messages(  # type: ignore[no-untyped-def]
        self, record, node_ids, message_type
    ):
        if message_type == MessageType.TRAIN:
            message_type = f"{MessageType.TRAIN}.{self.action}"
        return super()._construct_messages(record, node_ids, message_type)


def _reason(reply: Message) -> str:
    return ((reply.error.reason if reply.has_error() else None) or "no reply")[-300:]


def first_arrays(
    grid: Grid, nodes: list[int], action: str, timeout_s: float
) -> ArrayRecord | list[str]:
    """The arrays of the first site that answers ``query.ACTION``, or why none did.

    How a SuperLink, which has no model, gets the starting weights of a
    FedAvg from the sites (the seeded initialisation every site would make).
    """
    reasons = []
    for node in nodes:
        ask = RecordDict({"ask": ConfigRecord({"what": "initial-state"})})
        for reply in grid.send_and_receive(
            [Message(ask, node, f"query.{action}")], timeout=timeout_s
        ):
            if reply.has_content() and "arrays" in reply.content.array_records:
                return reply.content.array_records["arrays"]
            reasons.append(_reason(reply))
    return reasons


def tune_modes(config: Mapping[str, Any]) -> tuple[str, ...]:
    """The prompt modes the adapter learns: the run config's comma-separated ``tune-modes``."""
    return tuple(m for m in str(config.get("tune-modes", "gsco")).split(",") if m)


def tune_adapter(
    grid: Grid,
    config: Mapping[str, Any],
    nodes: list[int],
    *,
    initial: Callable[[], dict[str, Any]] | None,
    training: dict[str, Any],
    fit_policy: bool,
    publish_without_policy: bool = False,
) -> dict[str, Any]:
    """The adapter stage over ``nodes``; its outcome (what the run's results record).

    ``initial`` makes the starting weights here (the simulation has the base
    model); ``None`` asks a site for them (a deployed SuperLink has none).
    ``training`` is the card's template (:func:`adapter_card_template`). When a
    policy was asked for (``fit_policy``) and cannot be fitted, the adapter is
    not published, unless ``publish_without_policy`` (the simulation then fits
    one through its own hub): a hub would let an adapter without a policy
    answer unchecked.
    """
    timeout_s = float(config["timeout-s"])
    rounds = int(config.get("tune-rounds", 1))
    local_epochs = int(config.get("tune-local-epochs", 1))
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
            log(WARNING, "gsco: a site could not build adapter examples: %s", _reason(reply))
    log(INFO, "gsco: adapter examples per site: %s", counts)
    outcome: dict[str, Any] = {"examples_per_site": counts, "rounds": rounds}
    if not live:
        outcome["error"] = "no site could build evidence examples"
        return outcome
    live.sort()
    if initial is not None:
        start = ArrayRecord(initial())
    else:
        found = first_arrays(grid, live, "adapter_initial_state", timeout_s)
        if isinstance(found, list):
            outcome["error"] = "no site could make the adapter's starting weights: " + "; ".join(
                found
            )
            return outcome
        start = found
    strategy: FedAvg | DifferentialPrivacyServerSideFixedClipping = ActionFedAvg(
        "adapter",
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
        initial_arrays=start,
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
    if len(losses) < rounds:  # a round in which no site trained leaves nothing to publish
        outcome["error"] = (
            f"no site trained the adapter in {rounds - len(losses)} of {rounds} rounds "
            "(see the SuperNodes' logs)"
        )
        log(WARNING, "gsco: %s", outcome["error"])
        return outcome
    log(INFO, "gsco: adapter FedAvg done in %.0f s; losses %s", outcome["tuning_seconds"], losses)
    card = json.loads(json.dumps(training))
    record = card["training"]
    record["examples"] = sum(counts.values())
    record["examples_per_site"] = counts
    record["sites"] = sorted(counts)
    record["rounds"] = rounds
    record["local_epochs"] = local_epochs
    if losses and losses[-1] == losses[-1]:
        record["final_loss"] = max(0.0, losses[-1])
    if noise > 0:
        from simulations._fedavg import federation_card

        privacy = federation_card(
            rounds, len(live), local_epochs, noise, clip, float(config.get("dp-delta", 1e-5))
        ).differential_privacy
        assert privacy is not None
        record["differential_privacy"] = privacy.model_dump(mode="json")
    policy = None
    if fit_policy:
        policy = _fit_policy(grid, live, result.arrays, config, outcome)
        if policy is None and not publish_without_policy:
            outcome["error"] = (
                f"the adapter's policy could not be fitted ({outcome.get('policy_error')}), so "
                "it was not published: a hub would let it answer unchecked"
            )
            log(WARNING, "gsco: %s", outcome["error"])
            return outcome
    _publish(grid, live, result.arrays, card, policy, timeout_s, outcome)
    return outcome


def _fit_policy(
    grid: Grid,
    nodes: list[int],
    arrays: ArrayRecord,
    config: Mapping[str, Any],
    outcome: dict[str, Any],
) -> Any:
    """The final adapter's policy, fitted across the sites (``None``, and why, if it cannot be).

    Each site scores its own policy cases with the adapter's final weights;
    then every question of the fit goes to the sites that could, and only
    their summed answers come back.
    """
    from hub import PolicyFitError, add_answers, fit_policy_from_answers
    from protocol import Mode, TaskSpec

    timeout_s = float(config["timeout-s"])
    log(INFO, "gsco: the sites score their policy cases with the tuned adapter")
    replies = grid.send_and_receive(
        [
            Message(
                RecordDict({"policy": ConfigRecord({"name": _LOCAL_NAME}), "arrays": arrays}),
                node,
                "query.adapter_policy_evidence",
            )
            for node in nodes
        ],
        timeout=timeout_s,
    )
    answering, tasks, left_out = [], set(), {}
    for reply in replies:
        if reply.has_content():
            record = reply.content["policy"]
            answering.append(reply.metadata.src_node_id)
            tasks.add(str(record["task"]))
        else:
            left_out[str(reply.metadata.src_node_id)] = _reason(reply)
            log(WARNING, "gsco: a site cannot answer for the policy: %s", _reason(reply))
    if left_out:
        outcome["policy_left_out"] = left_out
    if not answering or len(tasks) != 1:
        outcome["policy_error"] = (
            "no site could score policy cases"
            if not answering
            else "the sites describe the task differently"
        )
        return None
    task = TaskSpec.model_validate_json(tasks.pop())
    name = f"adapter-{task.task_id}"  # the hub names each mode after the adapter it serves
    questions = 0

    def ask(question: dict[str, Any]) -> dict[str, Any]:
        nonlocal questions
        questions += 1
        text = json.dumps(question)
        summed: Any = None
        for reply in grid.send_and_receive(
            [
                Message(
                    RecordDict({"policy": ConfigRecord({"question": text})}),
                    node,
                    "query.adapter_policy",
                )
                for node in answering
            ],
            timeout=timeout_s,
        ):
            if not reply.has_content():
                raise PolicyFitError(f"a site stopped answering the policy fit: {_reason(reply)}")
            answer = json.loads(str(reply.content["policy"]["answer"]))
            summed = answer if summed is None else add_answers(summed, answer)
        return dict(summed)

    modes = [Mode(m) for m in tune_modes(config)]
    try:
        policy = fit_policy_from_answers(task, ask, modes, model=name)
    except PolicyFitError as exc:
        outcome["policy_error"] = str(exc)[:500]
        log(WARNING, "gsco: no policy for the adapter: %s", exc)
        return None
    outcome["policy"] = json.loads(policy.model_dump_json())
    outcome["policy_sites"] = len(answering)
    outcome["policy_questions"] = questions
    log(
        INFO,
        "gsco: adapter policy fitted on %d cases at %d sites (%d questions): %s",
        policy.n_examples,
        len(answering),
        questions,
        ", ".join(f"{m.value} weight {p.generalist_weight:g}" for m, p in policy.modes.items()),
    )
    return policy


def _publish(
    grid: Grid,
    nodes: list[int],
    arrays: ArrayRecord,
    card: dict[str, Any],
    policy: Any,
    timeout_s: float,
    outcome: dict[str, Any],
) -> None:
    """The first site that succeeds signs and publishes the adapter (the policy in its card)."""
    adapter: dict[str, Any] = {"training": json.dumps(card)}
    if policy is not None:
        adapter["policy"] = policy.model_dump_json()
    for signer in nodes:
        replies = grid.send_and_receive(
            [
                Message(
                    RecordDict({"adapter": ConfigRecord(adapter), "arrays": arrays}),
                    signer,
                    "query.publish_adapter",
                )
            ],
            timeout=timeout_s,
        )
        for reply in replies:
            if reply.has_content():
                published = reply.content["adapter"]
                outcome["bundle"] = str(published["bundle"])
                outcome["published"] = str(published["digest"])
                outcome["signed_by"] = str(published["site-id"])
                outcome["version"] = int(str(published["version"]))
                outcome.pop("error", None)
                log(INFO, "gsco: adapter bundle %s", outcome["bundle"])
                return
            outcome["error"] = _reason(reply)[-500:]
            log(WARNING, "gsco: a site could not publish the adapter: %s", outcome["error"])
