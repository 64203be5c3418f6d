"""What a simulated attacker does (``gsco simulate --fault SITE:KIND``).

Only the simulation's own ClientApp acts these out (:class:`ScenarioBehaviour`,
wired in :mod:`simulations._apps`); the deployed app has the honest
:class:`fedapp.SiteBehaviour` and no way to select another.

The sites' stage (one per site, ``SiteJob.fault``):

``flip-labels``
    trains on its labels moved to the next class;
``drop-out``
    trains, then leaves before publishing (or before its FedAvg round);
``tamper``
    changes ``model.onnx`` after signing and publishes anyway, past its own agent;
``unsigned``
    publishes without a signature, past its own agent.

The adapter stage (any number per site, ``TuneJob.faults``), each one enrolled
hospital's key used against the consortium:

``rogue-adapter``
    the site publishes an adapter of its own, version 4294967295, with a
    policy that trusts the generalist fully (weight 100, label bias +-20),
    once on its own metadata and once as the consortium's role signed by it
    alone; and it declines to co-sign the consortium's adapter.
``poison-adapter``
    its adapter updates are scaled by 10^6 (odd rounds) or NaN (even rounds).
``inflate-examples``
    it claims 10^9 evidence examples, when it declares them and in every round.
``lie-policy``
    its policy answers claim 10,000 more cases on which weight 4 fixes 4,000
    and breaks none, with loss and gradient terms that drag the label bias.
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedapp import SiteBehaviour, SiteJob, TuneJob
from fedapp.errors import SiteDroppedOutError
from registry import RegistryClient
from signing import digest_files

if TYPE_CHECKING:
    from protocol import BundleRef
    from site_agent import SiteHome
    from site_agent.data import LocalDataset

__all__ = [
    "ADAPTER_FAULTS",
    "FAULTS",
    "INFLATED_EXAMPLES",
    "ScenarioBehaviour",
    "lie_in_policy_answer",
    "poison_update",
    "rogue_publications",
]

#: Faults of the sites' stage: one per site.
FAULTS = ("flip-labels", "drop-out", "tamper", "unsigned")
ADAPTER_FAULTS = ("rogue-adapter", "poison-adapter", "inflate-examples", "lie-policy")
INFLATED_EXAMPLES = 10**9


def poison_update(
    state: Mapping[str, Any], received: Mapping[str, Any], server_round: int
) -> dict[str, Any]:
    """The update made huge (odd rounds: 10^6 times the honest step) or NaN (even rounds)."""
    import torch

    poisoned = {}
    for name, value in state.items():
        if server_round % 2:
            poisoned[name] = received[name] + 1e6 * (value - received[name])
        else:
            poisoned[name] = torch.full_like(value, math.nan)
    return poisoned


def lie_in_policy_answer(question: Mapping[str, Any], honest: dict[str, Any]) -> dict[str, Any]:
    """The policy answer crafted to force trust in the generalist (see the module docstring)."""
    answer: dict[str, Any] = json.loads(json.dumps(honest))
    what = question.get("what")
    if what == "counts":
        answer["n"] += 10_000
        answer["labels"][0] += 10_000
        answer["ensemble"] += 5_000
        if answer.get("voting") is not None:
            answer["voting"] += 5_000
    elif what == "bias":
        for entry in answer.values():
            entry["loss"] = [loss * 1e4 for loss in entry["loss"]]
            entry["gradient"] = [
                [g * 1e4 + (1e3 if i == 0 else -1e3) for i, g in enumerate(row)]
                for row in entry["gradient"]
            ]
    elif what == "weights":
        for entry in answer.values():
            for tried in entry["bases"].values():
                for key, row in (tried or {}).items():
                    if float(key) == 4.0:
                        tried[key] = [row[0] + 4_000, row[1] + 4_000, row[2]]
    return answer


def rogue_publications(
    job: Any, state: Mapping[str, Any], training: Mapping[str, Any]
) -> list[str]:
    """The site tries to put its own full-trust adapter in service; what the registry said.

    ``job`` is the site's :class:`fedapp.TuneJob`, ``state``
    its own adapter weights, ``training`` the card's training record as the
    consortium's (the rogue claims only itself as trainer).
    """
    from fedapp._tune_job import _card, _trainer
    from protocol import ArbitrationPolicy, GscoError, Mode, ModePolicy
    from registry import assemble_adapter_role, endorse, propose_adapter_role
    from signing import bundle_digest, digest_files
    from site_agent import open_site
    from site_agent.adapter import write_adapter_bundle

    trainer = _trainer(job)
    trainer.set_state(dict(state))
    record = json.loads(json.dumps(dict(training)))
    labels = tuple({**(job.task or {}), **record}["labels"])
    record["training"].update(
        sites=[job.site_id],
        examples=120,
        examples_per_site={job.site_id: 120},
    )
    full_trust = ModePolicy(
        generalist_weight=100.0,
        validation_accuracy={"policy": 1.0},
        weights_tried={},
        label_bias=tuple(20.0 if i == 0 else -20.0 for i in range(len(labels))),
    )
    policy = ArbitrationPolicy(
        task_id=job.task_id,
        labels=labels,
        model="rogue",
        n_examples=10,
        modes={Mode(m): full_trust for m in record["training"]["prompt_modes"]},
    )
    card = _card(job, trainer, record, policy, 2**32 - 1)
    out = Path(job.folder) / "rogue-adapter"
    shutil.rmtree(out, ignore_errors=True)
    home = open_site(Path(job.home))
    write_adapter_bundle(out, trainer, card, home.private_key)
    refusals = []
    with job.registry_client() as client:
        try:
            client.publish(out, home.private_key)
            refusals.append("its own adapter on its own metadata: ACCEPTED (this is a failure)")
        except GscoError as exc:
            refusals.append(f"its own adapter (v4294967295, weight 100) refused: {exc}")
        files = {p.name: p.read_bytes() for p in sorted(out.iterdir()) if p.is_file()}
        proposal = json.loads(
            propose_adapter_role(
                client.adapter_role(job.task_id),
                job.task_id,
                bundle_digest(digest_files(files)),
                files,
            )
        )
        proposal["signed"]["version"] = 2**32 - 1
        raw = json.dumps(proposal).encode()
        try:
            client.publish_adapter(
                files, assemble_adapter_role(raw, [endorse(raw, home.private_key)])
            )
            refusals.append("its own adapter as the consortium's: ACCEPTED (this is a failure)")
        except GscoError as exc:
            refusals.append(f"its own adapter as the consortium's, signed by it alone: {exc}")
    return refusals


def flipped(dataset: Any) -> Any:
    """``dataset`` with every training label moved to the next class (the label fault)."""
    from site_agent.data import Split

    flipped = (dataset.train.labels + 1) % len(dataset.task.labels)
    return replace(dataset, train=Split(dataset.train.images, flipped))


class ScenarioBehaviour(SiteBehaviour):
    """A simulated site: honest, except for the faults its job names."""

    def training_data(self, job: SiteJob, dataset: LocalDataset) -> LocalDataset:
        return flipped(dataset) if job.fault == "flip-labels" else dataset

    def signs(self, job: SiteJob) -> bool:
        return job.fault != "unsigned"

    def before_answering(self, job: SiteJob, *, federated: bool) -> None:
        if job.fault == "drop-out":
            when = "of federated training" if federated else "after training, before publishing"
            raise SiteDroppedOutError(f"{job.site_id} dropped out {when}")

    def publish(self, job: SiteJob, site: SiteHome, bundle: Path) -> BundleRef | None:
        if job.fault not in ("tamper", "unsigned"):
            return None
        # An attacker talks to the registry itself, past its own agent's check.
        if job.fault == "tamper":
            model = bundle / "model.onnx"
            data = bytearray(model.read_bytes())
            data[-1] ^= 0x01  # one flipped bit in the weights, after signing
            model.write_bytes(bytes(data))
        files = {p.name: p.read_bytes() for p in sorted(bundle.iterdir()) if p.is_file()}
        with RegistryClient(job.registry, timeout_s=300) as client:
            ref = client.publish_files(files, site.private_key)
        site.ledger.record_publication(job.registry, ref, digest_files(files))
        return ref

    def examples_declared(self, job: TuneJob, count: int) -> int:
        return INFLATED_EXAMPLES if "inflate-examples" in job.faults else count

    def adapter_update(
        self,
        job: TuneJob,
        trained: dict[str, Any],
        received: Mapping[str, Any],
        server_round: int,
        examples: int,
    ) -> tuple[dict[str, Any], int]:
        if "poison-adapter" in job.faults:
            trained = poison_update(trained, received, server_round)
        if "inflate-examples" in job.faults:
            examples = INFLATED_EXAMPLES
        return trained, examples

    def policy_answer(
        self, job: TuneJob, question: Mapping[str, Any], answer: dict[str, Any]
    ) -> dict[str, Any]:
        return lie_in_policy_answer(question, answer) if "lie-policy" in job.faults else answer

    def declined_endorsement(
        self, job: TuneJob, received: Mapping[str, Any], card: Mapping[str, Any]
    ) -> dict[str, str] | None:
        if "rogue-adapter" not in job.faults:
            return None
        refusals = rogue_publications(job, received, card)
        return {"declined": "a rogue site: it wants its own adapter", "rogue": json.dumps(refusals)}
