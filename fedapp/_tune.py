"""The ServerApp's adapter stage: robust FedAvg of the adapter, its policy, its co-signatures.

The generalist's LoRA adapter is trained, its arbitration policy fitted, the
consortium's co-signatures gathered and the bundle published.

The same stage runs in the simulation (``stage = "tune"``, each site's
:class:`TuneJob` from the run's jobs file) and in a deployed run (after the
sites' specialists, when ``tune-rounds`` > 0: each SuperNode makes its job
from its node config, :func:`deployed_tune_job`).

1. every site builds its evidence examples and declares how many, and how
   many policy cases it holds; the run's own settings bound both;
2. ``tune-rounds`` rounds of the adapter's weights, each site's update
   screened, bounded and clipped, then aggregated by a robust strategy of
   Flower's (:mod:`fedapp._aggregation`; Flower's server-side DP
   clipping and noise when asked);
3. when asked, the arbitration policy of the final adapter, fitted across the
   sites without their cases meeting (:func:`hub.fit_policy_from_answers`:
   each site scores its own policy cases with its copy of the tuned
   generalist and answers with sums and counts, every answer checked, a site
   whose answers cannot be true excluded by name);
4. one site writes and signs the bundle (the policy in its card) and proposes
   the next version of the task's consortium adapter role; every training
   site checks it and co-signs (``registry._consortium``);
5. that site publishes it with the co-signatures; the registry accepts it
   only with enough of them, and hubs verify the same.

What a site did that was refused (an update, a count, a policy answer, its
own adapter) is in the outcome under ``refused``, by site.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from logging import INFO, WARNING
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.common import log
from flwr.serverapp import Grid

from fedapp._aggregation import Screening, default_aggregation, robust_strategy
from fedapp._tune_job import TuneJob
from fedapp.errors import JobError
from hub import PolicyFitError, fit_policy_from_answers
from protocol import ArbitrationPolicy, RunRequest, SchemaError, TaskSpec

__all__ = [
    "adapter_card_template",
    "deployed_tune_job",
    "first_arrays",
    "run_request",
    "tune_adapter",
    "tune_modes",
    "whole_count",
]

#: Node config keys a deployed site needs to tune the adapter (``gsco site join`` options).
TUNE_NODE_KEYS = {"trusted-root": "--trusted-root", "generalist-model": "--generalist-model"}


def deployed_tune_job(
    node: Mapping[str, object], config: Mapping[str, object], run_id: int
) -> TuneJob:
    """A deployed site's adapter job, from its node config and the run config.

    The site's validation split (of its MedMNIST-layout ``.npz``) is shared
    out at the site: up to ``tune-policy-cases-per-site`` cases for the
    policy (at most half), up to ``tune-examples-per-site`` others for tuning.

    Raises:
        JobError: the node config lacks what tuning needs, or the data is not an ``.npz``
            with a validation split.
    """
    from generalist import MODEL_NAME
    from site_agent import open_site
    from site_agent.adapter import AdapterRecipe
    from site_agent.data import default_catalog, load_task_file

    missing = [flag for key, flag in TUNE_NODE_KEYS.items() if not node.get(key)]
    missing += [k for k in ("home", "data", "task", "registry", "work") if not node.get(k)]
    if missing:
        raise JobError(
            "this site cannot tune the generalist's adapter: start its SuperNode with "
            f"'gsco site join' and {', '.join(missing)}"
        )
    data = Path(str(node["data"]))
    if data.suffix.lower() != ".npz":
        raise JobError(
            f"adapter tuning reads the site's validation split from a MedMNIST-layout .npz; "
            f"this site's data is {data.name}"
        )
    try:
        with np.load(data, allow_pickle=False) as archive:
            n = len(archive["val_labels"])
    except (OSError, KeyError, ValueError) as exc:
        raise JobError(f"{data.name} has no readable validation split: {exc}") from exc
    task_id = str(node["task"])
    if node.get("task-file"):
        task = load_task_file(Path(str(node["task-file"]))).task
    else:
        task = default_catalog().get(task_id).task
    run = run_request(config)
    seed = run.training.seed
    examples = run.tune.examples_per_site
    policy_cases = min(run.tune.policy_cases_per_site, n // 2)
    order = np.random.default_rng(seed + 1).permutation(n)
    recipe = run.tune.recipe
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
        base_model=run.tune.base_model or MODEL_NAME,
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


def _reason(reply: Message | None) -> str:
    """Why ``reply`` carries nothing: the site's error, or that none came."""
    if reply is None or not reply.has_error():
        return "no reply"
    return (reply.error.reason or "no reply")[-300:]


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


def run_request(config: Mapping[str, object]) -> RunRequest:
    """The run a Flower run config carries.

    Raises:
        JobError: a value of the wrong type or out of bounds.
    """
    try:
        return RunRequest.from_config(config)
    except SchemaError as exc:
        raise JobError(f"the run's configuration: {exc}") from exc


def tune_modes(run: RunRequest) -> tuple[str, ...]:
    """The prompt modes the adapter learns."""
    return tuple(mode.value for mode in run.tune.modes)


def whole_count(value: object) -> int | None:
    """A count a site sent: a non-negative integer (a bool, a float, a string are not)."""
    if type(value) is int and value >= 0:
        return value
    return None


class _Refusals:
    """What was refused of each site, for the outcome and the report."""

    def __init__(self) -> None:
        self.by_site: dict[str, list[str]] = {}

    def add(self, site: str, what: str) -> None:
        self.by_site.setdefault(site, []).append(what[:300])
        log(WARNING, "gsco: refused of %s: %s", site, what[:300])


def _declarations(
    grid: Grid,
    nodes: list[int],
    run: RunRequest,
    refused: _Refusals,
    timeout_s: float,
) -> tuple[dict[int, str], dict[int, int], dict[int, int]]:
    """Each site's id, examples and policy cases as it declared them, bounded by the run.

    A site that declares more than the run asks for counts as the run's
    bound; a malformed declaration, or a site id already taken, leaves the
    site out.
    """
    max_examples = run.tune.examples_per_site
    max_cases = run.tune.policy_cases_per_site
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
    site_of: dict[int, str] = {}
    examples: dict[int, int] = {}
    cases: dict[int, int] = {}
    for reply in replies:
        node = reply.metadata.src_node_id
        if not reply.has_content():
            log(WARNING, "gsco: a site could not build adapter examples: %s", _reason(reply))
            continue
        record = reply.content["examples"]
        site = str(record.get("site-id", ""))[:64] or f"node-{node}"
        if site in site_of.values():
            refused.add(site, "a second SuperNode claimed this site id; left out")
            continue
        count = whole_count(record.get("count"))
        policy_cases = whole_count(record.get("policy-cases", 0))
        if count is None or count < 1 or policy_cases is None:
            refused.add(
                site, f"declared {record.get('count')!r} examples: not a positive integer; left out"
            )
            continue
        if count > max_examples:
            refused.add(
                site,
                f"claimed {count:,} examples; counted as the run's {max_examples} at most",
            )
            count = max_examples
        if policy_cases > max_cases:
            refused.add(site, f"claimed {policy_cases:,} policy cases; the run allows {max_cases}")
            policy_cases = max_cases
        site_of[node], examples[node], cases[node] = site, count, policy_cases
    return site_of, examples, cases


def tune_adapter(
    grid: Grid,
    run: RunRequest,
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
    not published, unless ``publish_without_policy`` (the simulation's hub
    operator then fits and sets one): a hub would let an adapter without a
    policy answer unchecked.
    """
    timeout_s = run.timeout_s
    rounds = run.tune.rounds or 1
    local_epochs = run.tune.local_epochs
    refused = _Refusals()
    site_of, declared, cases = _declarations(grid, nodes, run, refused, timeout_s)
    counts = {site_of[node]: declared[node] for node in declared}
    log(INFO, "gsco: adapter examples per site: %s", counts)
    outcome: dict[str, Any] = {
        "examples_per_site": counts,
        "rounds": rounds,
        "refused": refused.by_site,
    }
    live = sorted(site_of)
    if not live:
        outcome["error"] = "no site could build evidence examples"
        return outcome
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
    screening = Screening(site_of, declared)
    strategy = robust_strategy(
        "adapter",
        live,
        screening,
        aggregation=run.fedavg.aggregation,
        dp_noise=run.tune.dp_noise_multiplier,
        dp_clip=run.tune.dp_clipping_norm,
    )
    started = time.monotonic()
    result = strategy.start(
        grid=grid,
        initial_arrays=start,
        num_rounds=rounds,
        timeout=timeout_s,
        train_config=ConfigRecord({"local-epochs": local_epochs}),
    )
    for site, events in screening.events.items():
        for event in events:
            refused.add(site, event)
    losses = [
        float(str(metrics.get("train-loss", "nan")))
        for metrics in (result.train_metrics_clientapp or {}).values()
    ]
    outcome["aggregation"] = run.fedavg.aggregation or default_aggregation(len(live))
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
    card = _card_training(training, counts, rounds, local_epochs, losses, run, len(live))
    card["training"]["strategy"] = outcome["aggregation"]
    policy = None
    if fit_policy:
        policy = _fit_policy(grid, live, site_of, cases, result.arrays, run, outcome, refused)
        if policy is None and not publish_without_policy:
            outcome["error"] = (
                f"the adapter's policy could not be fitted ({outcome.get('policy_error')}), so "
                "it was not published: a hub would let it answer unchecked"
            )
            log(WARNING, "gsco: %s", outcome["error"])
            return outcome
    _co_sign_and_publish(grid, live, site_of, result.arrays, card, policy, timeout_s, outcome)
    outcome["refused"] = refused.by_site
    return outcome


def _card_training(
    training: dict[str, Any],
    counts: Mapping[str, int],
    rounds: int,
    local_epochs: int,
    losses: list[float],
    run: RunRequest,
    sites: int,
) -> dict[str, Any]:
    """The card's ``training`` record, filled in with what the run did."""
    card: dict[str, Any] = json.loads(json.dumps(training))
    record = card["training"]
    record["examples"] = sum(counts.values())
    record["examples_per_site"] = dict(counts)
    record["sites"] = sorted(counts)
    record["rounds"] = rounds
    record["local_epochs"] = local_epochs
    if losses and losses[-1] == losses[-1]:
        record["final_loss"] = min(1e6, max(0.0, losses[-1]))
    noise = run.tune.dp_noise_multiplier
    if noise > 0:
        from fedapp._fedavg import federation_card

        privacy = federation_card(
            rounds,
            sites,
            local_epochs,
            noise,
            run.tune.dp_clipping_norm,
            run.fedavg.dp_delta,
        ).differential_privacy
        assert privacy is not None
        record["differential_privacy"] = privacy.model_dump(mode="json")
    return card


def _fit_policy(
    grid: Grid,
    nodes: list[int],
    site_of: Mapping[int, str],
    declared: Mapping[int, int],
    arrays: ArrayRecord,
    run: RunRequest,
    outcome: dict[str, Any],
    refused: _Refusals,
) -> ArbitrationPolicy | None:
    """The final adapter's policy, fitted across the sites (``None``, and why, if it cannot be).

    Each site scores its own policy cases with the adapter's final weights
    and says how many it scored (no more than it declared); then every
    question of the fit goes to the sites that could, each answer is checked
    (:func:`hub.fit_policy_from_answers`), and a site whose answers cannot be
    true is excluded by name.
    """
    scoring = _scored_sites(grid, nodes, site_of, declared, arrays, run.timeout_s, refused)
    if scoring.left_out:
        outcome["policy_left_out"] = scoring.left_out
    described = set(scoring.tasks.values())
    if not scoring.node_of or len(described) != 1:
        outcome["policy_error"] = (
            "no site could score policy cases"
            if not scoring.node_of
            else "the sites describe the task differently"
        )
        return None
    task = TaskSpec.model_validate_json(described.pop())
    name = f"adapter-{task.task_id}"  # the hub names each mode after the adapter it serves
    asker = _Asker(grid, scoring.node_of, site_of, run.timeout_s)
    try:
        policy = fit_policy_from_answers(
            task,
            asker.ask,
            list(run.tune.modes),
            model=name,
            parties=sorted(scoring.node_of),
            declared=scoring.scored,
        )
    except PolicyFitError as exc:
        outcome["policy_error"] = str(exc)[:500]
        log(WARNING, "gsco: no policy for the adapter: %s", exc)
        return None
    for site, reason in policy.sites_excluded.items():
        refused.add(site, f"policy answers excluded: {reason}")
    outcome["policy"] = json.loads(policy.model_dump_json())
    outcome["policy_sites"] = len(policy.sites)
    outcome["policy_questions"] = asker.questions
    log(
        INFO,
        "gsco: adapter policy fitted on %d cases at %d sites (%d questions): %s",
        policy.n_examples,
        len(policy.sites),
        asker.questions,
        ", ".join(f"{m.value} weight {p.generalist_weight:g}" for m, p in policy.modes.items()),
    )
    return policy


@dataclass
class _Scoring:
    """Which sites scored their policy cases: their nodes, counts and tasks; who could not."""

    node_of: dict[str, int] = field(default_factory=dict)
    scored: dict[str, int] = field(default_factory=dict)
    tasks: dict[str, str] = field(default_factory=dict)
    left_out: dict[str, str] = field(default_factory=dict)


def _scored_sites(
    grid: Grid,
    nodes: list[int],
    site_of: Mapping[int, str],
    declared: Mapping[int, int],
    arrays: ArrayRecord,
    timeout_s: float,
    refused: _Refusals,
) -> _Scoring:
    """Each site scores its own policy cases with the final weights and says how many."""
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
    found = _Scoring()
    for reply in replies:
        node = reply.metadata.src_node_id
        site = site_of.get(node, f"node-{node}")
        if not reply.has_content():
            found.left_out[site] = _reason(reply)
            log(WARNING, "gsco: %s cannot answer for the policy: %s", site, _reason(reply))
            continue
        record = reply.content["policy"]
        n = whole_count(record.get("cases"))
        if n is None or n < 1 or n > declared.get(node, 0):
            refused.add(
                site,
                f"scored {record.get('cases')!r} policy cases, having declared "
                f"{declared.get(node, 0)}; left out of the policy",
            )
            continue
        found.node_of[site], found.scored[site] = node, n
        found.tasks[site] = str(record.get("task", ""))
    return found


class _Asker:
    """Puts each question of the fit to the sites it names; counts the questions."""

    def __init__(
        self, grid: Grid, node_of: Mapping[str, int], site_of: Mapping[int, str], timeout_s: float
    ) -> None:
        self._grid, self._node_of, self._site_of = grid, node_of, site_of
        self._timeout_s = timeout_s
        self.questions = 0

    def ask(self, question: dict[str, Any], asked: Sequence[str]) -> dict[str, Any]:
        self.questions += 1
        text = json.dumps(question)
        answers: dict[str, Any] = {}
        for reply in self._grid.send_and_receive(
            [
                Message(
                    RecordDict({"policy": ConfigRecord({"question": text})}),
                    self._node_of[site],
                    "query.adapter_policy",
                )
                for site in asked
            ],
            timeout=self._timeout_s,
        ):
            site = self._site_of.get(reply.metadata.src_node_id, "")
            if not reply.has_content() or site not in asked:
                continue  # the fit excludes a site that does not answer, by name
            try:
                answers[site] = json.loads(str(reply.content["policy"]["answer"]))
            except (KeyError, ValueError, RecursionError):
                answers[site] = None  # fails the fit's checks: excluded by name
        return answers


def _one(grid: Grid, message: Message, timeout_s: float) -> Message | None:
    """The reply to one message (None: none came)."""
    replies = list(grid.send_and_receive([message], timeout=timeout_s))
    return replies[0] if replies else None


def _co_sign_and_publish(
    grid: Grid,
    nodes: list[int],
    site_of: Mapping[int, str],
    arrays: ArrayRecord,
    card: dict[str, Any],
    policy: Any,
    timeout_s: float,
    outcome: dict[str, Any],
) -> None:
    """One site writes, signs and proposes; every trainer checks and co-signs; it publishes.

    The signing site must be among the co-signers: when the one that prepared
    the bundle does not co-sign it (a site that wants its own adapter, say),
    the next site prepares another, until one is co-signed or every site has
    tried.
    """
    from registry import MIN_SIGNERS

    adapter: dict[str, Any] = {"training": json.dumps(card)}
    if policy is not None:
        adapter["policy"] = policy.model_dump_json()
    needed = max(MIN_SIGNERS, len(nodes) // 2 + 1)
    for signer in nodes:
        reply = _one(
            grid,
            Message(
                RecordDict({"adapter": ConfigRecord(adapter), "arrays": arrays}),
                signer,
                "query.prepare_adapter",
            ),
            timeout_s,
        )
        if reply is None or not reply.has_content():
            outcome["error"] = _reason(reply)
            log(WARNING, "gsco: a site could not prepare the adapter: %s", outcome["error"])
            continue
        bundle = reply.content["bundle"]
        proposal = bytes(reply.content["adapter"]["proposal"])  # type: ignore[arg-type]
        endorsements = _endorsements(
            grid, nodes, site_of, (bundle, proposal, arrays), timeout_s, outcome
        )
        co_signers = sorted(endorsements)
        outcome["co_signed_by"] = co_signers
        log(INFO, "gsco: %d of %d sites co-signed the adapter", len(co_signers), len(nodes))
        if site_of[signer] not in endorsements:
            outcome["error"] = f"{site_of[signer]}, which prepared it, did not co-sign it"
            log(WARNING, "gsco: %s: another site prepares the adapter", outcome["error"])
            continue
        if len(co_signers) < needed:
            outcome["error"] = (
                f"only {len(co_signers)} of {len(nodes)} training sites co-signed the adapter; "
                f"it takes effect with {needed}: not published"
            )
            log(WARNING, "gsco: %s", outcome["error"])
            return
        _publish(grid, signer, bundle, proposal, list(endorsements.values()), timeout_s, outcome)
        return


def _endorsements(
    grid: Grid,
    nodes: list[int],
    site_of: Mapping[int, str],
    prepared: tuple[Any, bytes, ArrayRecord],
    timeout_s: float,
    outcome: dict[str, Any],
) -> dict[str, str]:
    """Each training site's co-signature (JSON), by site, of the prepared bundle's proposal.

    ``prepared``: the bundle's files, the proposed role version and the final
    weights each site checks the bundle against. Who declined, and why, goes
    to the outcome.
    """
    from registry import Endorsement

    bundle, proposal, arrays = prepared
    replies = grid.send_and_receive(
        [
            Message(
                RecordDict(
                    {
                        "bundle": bundle,
                        "adapter": ConfigRecord({"proposal": proposal}),
                        "arrays": arrays,
                    }
                ),
                node,
                "query.endorse_adapter",
            )
            for node in nodes
        ],
        timeout=timeout_s,
    )
    endorsements: dict[str, str] = {}
    declined: dict[str, str] = {}
    for reply in replies:
        site = site_of.get(reply.metadata.src_node_id, "?")
        if not reply.has_content():
            declined[site] = _reason(reply)
            continue
        record = reply.content["endorsement"]
        if "rogue" in record:  # a simulated attacker's own publications, refused
            refused = outcome.setdefault("refused", {}).setdefault(site, [])
            for refusal in json.loads(str(record["rogue"])):
                if refusal[:300] not in refused:
                    refused.append(refusal[:300])
        if "declined" in record:
            declined[site] = str(record["declined"])[:300]
            continue
        try:
            Endorsement.from_json(str(record["json"]))
        except (KeyError, ValueError) as exc:
            declined[site] = f"a malformed co-signature: {exc}"
            continue
        endorsements[site] = str(record["json"])
    if declined:
        outcome["declined_to_co_sign"] = declined
    return endorsements


def _publish(
    grid: Grid,
    signer: int,
    bundle: Any,
    proposal: bytes,
    endorsements: list[str],
    timeout_s: float,
    outcome: dict[str, Any],
) -> None:
    """The signing site publishes the bundle with the co-signatures; the outcome records it."""
    reply = _one(
        grid,
        Message(
            RecordDict(
                {
                    "bundle": bundle,
                    "adapter": ConfigRecord(
                        {"proposal": proposal, "endorsements": json.dumps(endorsements)}
                    ),
                }
            ),
            signer,
            "query.publish_adapter",
        ),
        timeout_s,
    )
    if reply is None or not reply.has_content():
        outcome["error"] = _reason(reply)
        log(WARNING, "gsco: the adapter was not published: %s", outcome["error"])
        return
    published = reply.content["adapter"]
    outcome["bundle"] = str(published["bundle"])
    outcome["published"] = str(published["digest"])
    outcome["signed_by"] = str(published["site-id"])
    outcome["version"] = int(str(published["version"]))
    outcome.pop("error", None)
    log(
        INFO,
        "gsco: adapter bundle %s published, co-signed by %s",
        outcome["published"][:12],
        ", ".join(outcome.get("co_signed_by", [])),
    )
