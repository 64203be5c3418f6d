"""What one hospital does to tune the generalist's adapter with the others.

1. ``examples``: the site syncs the registry through TUF (the hub's own sync
   and engine, used as a library), runs the task's verified specialists on
   its share of the validation split, and renders each case's evidence with
   the hub's prompt template. The examples stay in its home folder.
2. ``update``: one FedAvg round's local training of the LoRA adapter, from the
   global weights.
3. ``policy evidence`` (deployed runs): with the final weights, the site runs
   the hub's engine around its own copy of the tuned generalist
   (:class:`site_agent.adapter.LocalGeneralist`) on other validation cases of
   its own, keeps the scores, and answers the policy fit's questions with
   sums and counts (:class:`hub.PolicyEvidence`).
4. ``prepare``: the site chosen to sign writes the final adapter (with the
   fitted policy in its card, when there is one) as a signed adapter bundle
   (see :mod:`site_agent.adapter`) and proposes the next version of the
   task's consortium adapter role;
5. ``endorse``: every training site checks the bundle against the weights it
   received and what it reported, and co-signs the proposal with its key;
6. ``publish``: the signing site sends the bundle with the co-signed role to
   the registry, which accepts it only with enough co-signatures.

Only adapter weights, sums and counts leave a site; images, prompts, scores
and labels do not.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import resource
import shutil
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from fedapp._evaluate import evaluate_through_hub, policy_arrays
from fedapp.errors import SiteStepError
from generalist import PROMPT_TEMPLATE_VERSION, ReversedOrderAveraging
from hub import DiagnosisEngine, PolicyEvidence, RegistrySync
from protocol import AdapterCard, AdapterTraining, LoraSpec, Mode, TaskSpec, encode_png
from registry import (
    Endorsement,
    RegistryClient,
    TrustedRegistry,
    assemble_adapter_role,
    endorse,
    propose_adapter_role,
)
from signing import bundle_digest, digest_files
from site_agent import open_site
from site_agent.adapter import (
    AdapterRecipe,
    AdapterTrainer,
    EvidenceExample,
    LocalGeneralist,
    base_model_sha256,
    check_for_endorsement,
    evidence_examples,
    weights_digest,
    write_adapter_bundle,
)

if TYPE_CHECKING:
    from generalist import GeneralistBackend
    from protocol import ArbitrationPolicy, DiagnoseResponse

__all__ = [
    "MAX_POLICY_QUESTIONS",
    "MIN_POLICY_CASES",
    "TuneJob",
    "adapter_examples",
    "adapter_initial_state",
    "adapter_update",
    "endorse_adapter",
    "policy_answer",
    "policy_evidence",
    "prepare_adapter",
    "publish_consortium_adapter",
]

#: The fewest validation cases a site answers policy questions about: sums over fewer
#: would come too close to saying what each case is.
MIN_POLICY_CASES = 10
#: The most policy questions a site answers about one scoring of its cases (the fit asks
#: two more than its Newton steps, which stop at 100 and in practice within 10).
MAX_POLICY_QUESTIONS = 110


@dataclass(frozen=True)
class TuneJob:
    """Everything one site needs for adapter tuning; JSON-serialisable (crosses into Flower)."""

    site_id: str
    home: str
    data: str  # the site's .npz (val_images/val_labels are read)
    rows: tuple[int, ...]  # the site's share of the validation split
    task_id: str
    registry: str  # host:port
    trusted_root: str  # the registry's 1.root.json
    model_dir: str  # the base model (transformers format)
    base_model: str  # its served name
    out_dir: str  # where a published adapter bundle is written
    recipe: dict[str, Any] = field(default_factory=dict)  # AdapterRecipe fields
    modes: tuple[str, ...] = ("gsco",)  # the prompt templates it learns, in rotation
    registry_ca: str | None = None  # the registry's TLS CA (None: plain text)
    # Validation rows the adapter's policy is fitted on at the site (disjoint from ``rows``);
    # none: the policy is fitted elsewhere (the simulation fits it through its hub).
    policy_rows: tuple[int, ...] = ()
    scratch: str = ""  # the site's own working folder for this job (default: HOME/adapter)
    task: dict[str, Any] | None = None  # the task (TaskSpec fields), for the adapter's card
    # What this site does wrong (a simulation's attacker, simulations._faults); never deployed.
    faults: tuple[str, ...] = ()

    def to_json(self) -> str:
        """The job as JSON."""
        document = asdict(self)
        for name in ("rows", "modes", "policy_rows", "faults"):
            document[name] = list(document[name])
        return json.dumps(document)

    @classmethod
    def from_json(cls, text: str) -> TuneJob:
        """The job from :meth:`to_json`."""
        document = json.loads(text)
        document["rows"] = tuple(document["rows"])
        document["modes"] = tuple(document.get("modes", ("gsco",)))
        document["policy_rows"] = tuple(document.get("policy_rows", ()))
        document["faults"] = tuple(document.get("faults", ()))
        return cls(**document)

    @property
    def folder(self) -> Path:
        """Where the site keeps what this job makes (examples, scores, statistics)."""
        return Path(self.scratch) if self.scratch else Path(self.home) / "adapter"

    def registry_client(self, timeout_s: float = 60.0) -> RegistryClient:
        """A :class:`registry.RegistryClient` for the job's registry."""
        ca = Path(self.registry_ca).read_bytes() if self.registry_ca else None
        return RegistryClient(self.registry, root_certificates=ca, timeout_s=timeout_s)


def recipe_of(document: Mapping[str, Any]) -> AdapterRecipe:
    """An :class:`site_agent.adapter.AdapterRecipe` from its JSON fields."""
    values = dict(document)
    if "target_modules" in values:
        values["target_modules"] = tuple(values["target_modules"])
    return AdapterRecipe(**values)


#: Trainers by site, in this worker process (a model load costs seconds; rounds reuse it).
_TRAINERS: OrderedDict[str, AdapterTrainer] = OrderedDict()
_MAX_TRAINERS = 4


def _trainer(job: TuneJob) -> AdapterTrainer:

    key = f"{job.site_id}:{job.model_dir}:{json.dumps(job.recipe, sort_keys=True)}"
    if key in _TRAINERS:
        _TRAINERS.move_to_end(key)
        return _TRAINERS[key]
    trainer = AdapterTrainer(Path(job.model_dir), recipe_of(job.recipe))
    _TRAINERS[key] = trainer
    while len(_TRAINERS) > _MAX_TRAINERS:
        _TRAINERS.popitem(last=False)
    return trainer


def _examples_file(job: TuneJob) -> Path:
    return job.folder / f"examples-{job.task_id}.json"


def _validation(job: TuneJob, rows: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """The site's validation images and true label indices at ``rows``."""
    with np.load(job.data, allow_pickle=False) as data:
        images = data["val_images"][list(rows)]
        truth = data["val_labels"].reshape(-1)[list(rows)]
    return images, truth.astype(np.int64)


@contextlib.contextmanager
def _synced_engine(
    job: TuneJob, generalist: GeneralistBackend | None = None
) -> Iterator[tuple[DiagnosisEngine, TaskSpec]]:
    """The hub's engine over the task's specialists, synced from the registry through TUF.

    With it, the task as the specialists' cards describe it.
    """
    client = job.registry_client()
    try:
        trusted = TrustedRegistry(client, job.folder / "tuf", Path(job.trusted_root).read_bytes())
        sync = RegistrySync(client=client, trusted=trusted)
        report = sync.sync()
        if not report.ok:
            raise SiteStepError(f"{job.site_id} could not sync the registry: {report.error}")
        with ThreadPoolExecutor(2) as pool:
            engine = DiagnosisEngine(lambda: sync.catalog, generalist, pool)
            yield engine, sync.catalog.task_spec(job.task_id)
    finally:
        client.close()


def adapter_examples(job: TuneJob) -> list[EvidenceExample]:
    """The site's evidence examples (built once, then read from its folder)."""
    path = _examples_file(job)
    if path.is_file():
        return [
            EvidenceExample(e["prompt"], e["target"], e["system"], Mode(e["mode"]))
            for e in json.loads(path.read_text())
        ]
    images, truth = _validation(job, job.rows)
    with _synced_engine(job) as (engine, task):
        labels = task.labels
        examples = evidence_examples(
            engine,
            job.task_id,
            [encode_png(image) for image in images],
            [labels[int(y)] for y in truth],
            modes=[Mode(m) for m in job.modes],
            shuffle_options=True,
            seed=sum(job.site_id.encode()),
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        json.dumps(
            [
                {"prompt": e.prompt, "target": e.target, "system": e.system, "mode": e.mode.value}
                for e in examples
            ]
        )
    )
    return examples


def _evidence_file(job: TuneJob) -> Path:
    return job.folder / f"policy-evidence-{job.task_id}.npz"


def policy_evidence(job: TuneJob, state: Mapping[str, Any], name: str) -> tuple[str, int]:
    """Scores the site's policy cases with the tuned adapter; the task (JSON) and their count.

    The hub's engine runs around the site's own copy of the generalist with
    the adapter's final weights ``state`` (answering as ``name``), with the
    options asked in both orders as the hub asks them; the scores stay in
    the site's folder for :func:`policy_answer`.

    Raises:
        SiteStepError: the job has fewer than :data:`MIN_POLICY_CASES` policy cases,
            or the registry cannot be synced.
    """
    if len(job.policy_rows) < MIN_POLICY_CASES:
        raise SiteStepError(
            f"{job.site_id} has {len(job.policy_rows)} validation cases for the policy, fewer "
            f"than the {MIN_POLICY_CASES} a site answers about"
        )
    trainer = _trainer(job)
    trainer.set_state(dict(state))
    images, truth = _validation(job, job.policy_rows)
    modes = tuple(Mode(m) for m in job.modes)
    generalist = ReversedOrderAveraging(LocalGeneralist(trainer, name))
    with (
        _synced_engine(job, generalist) as (engine, task),
        _engine_diagnose(engine, job.task_id) as diagnose,
    ):
        evaluation = evaluate_through_hub(
            diagnose,
            images,
            truth,
            task.labels,
            task_type=task.task_type,
            modes=(Mode.ENSEMBLE, *modes),
            concurrency=1,
        )
    ensemble, generalist_scores, specialists = policy_arrays(evaluation, modes)
    evidence = PolicyEvidence.of(task, ensemble, generalist_scores, evaluation.truth, specialists)
    path = _evidence_file(job)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {"ensemble": evidence.ensemble, "truth": evidence.truth}
    arrays.update({f"generalist-{mode}": scores for mode, scores in evidence.generalist.items()})
    if evidence.voting is not None:
        arrays["voting"] = evidence.voting
    np.savez(path, **arrays)  # type: ignore[arg-type]
    path.with_suffix(".asked").unlink(missing_ok=True)  # a new scoring: a new allowance
    # What it scored with: it co-signs an adapter only with exactly these weights.
    _scored_file(job).write_text(weights_digest(state))
    return task.model_dump_json(), evidence.cases


def _scored_file(job: TuneJob) -> Path:
    return job.folder / f"policy-weights-{job.task_id}.sha256"


@contextlib.contextmanager
def _engine_diagnose(
    engine: DiagnosisEngine, task_id: str
) -> Iterator[Callable[[bytes, Mode], DiagnoseResponse]]:
    """``diagnose(png, mode)`` on ``engine`` from any thread, on an event loop of its own."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="policy-evidence", daemon=True)
    thread.start()
    counter = iter(range(1 << 62))

    def diagnose(png: bytes, mode: Mode) -> DiagnoseResponse:
        work = engine.diagnose(
            request_id=f"policy-{next(counter)}",
            task_id=task_id,
            image=png,
            media_type=None,
            mode=mode,
        )
        return asyncio.run_coroutine_threadsafe(work, loop).result().response

    try:
        yield diagnose
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join()
        loop.close()


def policy_answer(job: TuneJob, question: Mapping[str, Any]) -> dict[str, Any]:
    """The site's answer (sums and counts) to one question of the policy fit.

    A site answers at most :data:`MAX_POLICY_QUESTIONS` questions about one
    scoring of its cases: enough for the fit (Newton's method stops well
    before), and a bound on what a SuperLink that asks on and on, varying its
    questions, could learn about single cases from the differences of sums.

    Raises:
        SiteStepError: the site has not scored its policy cases (:func:`policy_evidence`),
            or has answered its share of questions.
        hub.PolicyFitError: the question is malformed.
    """
    path = _evidence_file(job)
    if not path.is_file():
        raise SiteStepError(f"{job.site_id} has no policy evidence for {job.task_id}")
    asked_file = path.with_suffix(".asked")
    asked = int(asked_file.read_text()) if asked_file.is_file() else 0
    if asked >= MAX_POLICY_QUESTIONS:
        raise SiteStepError(
            f"{job.site_id} has answered the {MAX_POLICY_QUESTIONS} policy questions a site "
            "answers about one scoring of its cases"
        )
    asked_file.write_text(str(asked + 1))
    with np.load(path, allow_pickle=False) as stored:
        arrays = {key: stored[key] for key in stored.files}
    evidence = PolicyEvidence(
        arrays["ensemble"],
        {
            k.removeprefix("generalist-"): v
            for k, v in arrays.items()
            if k.startswith("generalist-")
        },
        arrays["truth"],
        arrays.get("voting"),
    )
    return evidence.answer(question)


def adapter_initial_state(job: TuneJob) -> dict[str, Any]:
    """The adapter's starting weights: the recipe's seeded LoRA initialisation of the base model."""
    state: dict[str, Any] = AdapterTrainer(Path(job.model_dir), recipe_of(job.recipe)).state()
    return state


def adapter_update(
    job: TuneJob, state: Mapping[str, Any], epochs: int
) -> tuple[dict[str, Any], int, float]:
    """One FedAvg round at the site: the adapter trained ``epochs`` from the global weights."""
    trainer = _trainer(job)
    trainer.set_state(dict(state))
    update = trainer.train(adapter_examples(job), epochs=epochs)
    # What tuning cost this site, for the report and bench/arbitration.py.
    stats_path = job.folder / f"stats-{job.task_id}.json"
    stats_path.parent.mkdir(parents=True, exist_ok=True)
    stats = json.loads(stats_path.read_text()) if stats_path.is_file() else {"rounds": []}
    stats["rounds"].append({"seconds": round(update.seconds, 1), "loss": update.loss})
    stats["examples"] = update.examples
    stats["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    stats_path.write_text(json.dumps(stats))
    return update.state, update.examples, update.loss


def _card(
    job: TuneJob,
    trainer: AdapterTrainer,
    training: Mapping[str, Any],
    policy: ArbitrationPolicy | None,
    version: int,
) -> AdapterCard:
    """The adapter card of ``trainer``'s weights.

    ``training``: the card's ``training`` record and task fields; ``policy``
    is bound to this adapter.
    """
    recipe = trainer.recipe
    layers = recipe.last_layers
    task = {**(job.task or {}), **training}
    if policy is not None:
        unbound = {m: f.model_copy(update={"model": None}) for m, f in policy.modes.items()}
        policy = policy.model_copy(update={"modes": unbound})
    return AdapterCard(
        task_id=job.task_id,
        modality=str(task["modality"]),
        labels=tuple(task["labels"]),
        task_type=str(task["task_type"]),  # type: ignore[arg-type]
        base_model=job.base_model,
        base_model_sha256=_base_sha256(job.model_dir),
        prompt_template=PROMPT_TEMPLATE_VERSION,
        sees_image=False,
        lora=LoraSpec.model_validate(  # the schema checks the recipe's module names again
            {
                "rank": recipe.rank,
                "alpha": recipe.alpha,
                "target_modules": list(recipe.target_modules),
                "layers": []
                if layers is None or layers >= trainer.num_layers
                else list(range(trainer.num_layers - layers, trainer.num_layers)),
            }
        ),
        training=AdapterTraining.model_validate(training["training"]),
        site_id=job.site_id,
        version=version,
        license="Apache-2.0",
        created_at=datetime.now(UTC),
        policy=policy,
    )


_BASE_SHA256: dict[str, str] = {}


def _base_sha256(model_dir: str) -> str:
    """The base model's weights hash (hundreds of MB: computed once per process)."""
    if model_dir not in _BASE_SHA256:
        _BASE_SHA256[model_dir] = base_model_sha256(Path(model_dir))
    return _BASE_SHA256[model_dir]


def prepare_adapter(
    job: TuneJob,
    state: Mapping[str, Any],
    training: Mapping[str, Any],
    policy: ArbitrationPolicy | None = None,
) -> tuple[dict[str, bytes], bytes]:
    """Writes and signs the federated adapter here; its files and the proposed role version.

    The card's version is the next of the task's consortium adapter role (as
    the registry serves it now); the proposal lists exactly this bundle.
    ``training`` holds the card's task fields (``modality``, ``labels``,
    ``task_type``; else the job's ``task``) and its ``training`` record.
    """
    trainer = _trainer(job)
    trainer.set_state(dict(state))
    home = open_site(Path(job.home))
    with job.registry_client() as client:
        previous = client.adapter_role(job.task_id)
    version = 1 if previous is None else _role_version(previous) + 1
    card = _card(job, trainer, training, policy, version)
    out = Path(job.out_dir)
    shutil.rmtree(out, ignore_errors=True)
    write_adapter_bundle(out, trainer, card, home.private_key)
    files = {p.name: p.read_bytes() for p in sorted(out.iterdir()) if p.is_file()}
    digest = bundle_digest(digest_files(files))
    return files, propose_adapter_role(previous, job.task_id, digest, files)


def _role_version(role: bytes) -> int:
    version = json.loads(role)["signed"]["version"]
    if type(version) is not int or version < 1:
        raise SiteStepError("the registry serves an adapter role without a valid version")
    return version


def endorse_adapter(
    job: TuneJob, files: Mapping[str, bytes], proposal: bytes, received: Mapping[str, Any]
) -> Endorsement:
    """This site's checks of the adapter, then its co-signature of ``proposal``.

    The checks are :func:`site_agent.adapter.check_for_endorsement`; the result
    a :class:`registry.Endorsement`.

    Raises:
        EndorsementRefusedError: a check failed.
    """
    scored = _scored_file(job)
    with job.registry_client() as client:
        trusted = TrustedRegistry(client, job.folder / "tuf", Path(job.trusted_root).read_bytes())
        sync = RegistrySync(client=client, trusted=trusted)
        report = sync.sync()
        if not report.ok:
            raise SiteStepError(f"{job.site_id} could not sync the registry: {report.error}")
        task = (
            TaskSpec.model_validate(job.task) if job.task else sync.catalog.task_spec(job.task_id)
        )
        previous = client.adapter_role(job.task_id)
    check_for_endorsement(
        files,
        proposal,
        site_id=job.site_id,
        task=task,
        base_model=job.base_model,
        base_model_sha256=_base_sha256(job.model_dir),
        examples=len(adapter_examples(job)),
        received=received,
        keyring=sync.keyring,
        previous_role=previous,
        scored_digest=scored.read_text().strip() if scored.is_file() else None,
    )
    return endorse(proposal, open_site(Path(job.home)).private_key)


def publish_consortium_adapter(
    job: TuneJob, files: Mapping[str, bytes], proposal: bytes, endorsements: list[Any]
) -> tuple[str, str, int]:
    """Publishes the adapter with its co-signed role version; its folder, digest and version.

    Recorded in this site's egress ledger, like every publication.

    Raises:
        RegistryError: the registry refused it (too few co-signatures, say).
    """
    home = open_site(Path(job.home))
    role = assemble_adapter_role(proposal, endorsements)
    with job.registry_client(timeout_s=120.0) as client:
        ref = client.publish_adapter(dict(files), role)
    home.ledger.record_publication(job.registry, ref, digest_files(files))
    return job.out_dir, str(ref.bundle_digest), int(ref.version)
