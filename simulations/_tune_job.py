"""What one simulated hospital does to tune the generalist's adapter with the others.

1. ``examples``: the site syncs the registry through TUF (the hub's own sync
   and engine, used as a library), runs the task's verified specialists on
   its share of the validation split, and renders each case's evidence with
   the hub's prompt template. The examples stay in its home folder.
2. ``update``: one FedAvg round's local training of the LoRA adapter, from the
   global weights.
3. ``publish``: the site chosen to sign writes the final adapter as a signed
   adapter bundle (see :mod:`site_agent.adapter`).

Only adapter weights and example counts leave a site; images and prompts do not.
"""

from __future__ import annotations

import json
import shutil
from collections import OrderedDict
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from simulations.errors import SimulationError

if TYPE_CHECKING:
    from signing import VerifiedManifest
    from site_agent import SiteHome

__all__ = [
    "TuneJob",
    "adapter_examples",
    "adapter_update",
    "publish_adapter",
    "publish_adapter_policy",
]


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

    def to_json(self) -> str:
        """The job as JSON."""
        document = asdict(self)
        document["rows"] = list(self.rows)
        document["modes"] = list(self.modes)
        return json.dumps(document)

    @classmethod
    def from_json(cls, text: str) -> TuneJob:
        """The job from :meth:`to_json`."""
        document = json.loads(text)
        document["rows"] = tuple(document["rows"])
        document["modes"] = tuple(document.get("modes", ("gsco",)))
        return cls(**document)


def recipe_of(document: Mapping[str, Any]) -> Any:
    """An :class:`site_agent.adapter.AdapterRecipe` from its JSON fields."""
    from site_agent.adapter import AdapterRecipe

    values = dict(document)
    if "target_modules" in values:
        values["target_modules"] = tuple(values["target_modules"])
    return AdapterRecipe(**values)


#: Trainers by site, in this worker process (a model load costs seconds; rounds reuse it).
_TRAINERS: OrderedDict[str, Any] = OrderedDict()
_MAX_TRAINERS = 4


def _trainer(job: TuneJob) -> Any:
    from site_agent.adapter import AdapterTrainer

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
    return Path(job.home) / "adapter" / f"examples-{job.task_id}.json"


def adapter_examples(job: TuneJob) -> list[Any]:
    """The site's evidence examples (built once, then read from its home folder)."""
    from protocol import Mode, encode_png
    from site_agent.adapter import EvidenceExample, evidence_examples

    path = _examples_file(job)
    if path.is_file():
        return [
            EvidenceExample(e["prompt"], e["target"], e["system"], Mode(e["mode"]))
            for e in json.loads(path.read_text())
        ]
    from hub import DiagnosisEngine, RegistrySync
    from registry import RegistryClient, TrustedRegistry

    with np.load(job.data, allow_pickle=False) as data:
        images = data["val_images"][list(job.rows)]
        truth = data["val_labels"].reshape(-1)[list(job.rows)]
    client = RegistryClient(job.registry, timeout_s=60.0)
    try:
        trusted = TrustedRegistry(
            client, Path(job.home) / "adapter" / "tuf", Path(job.trusted_root).read_bytes()
        )
        sync = RegistrySync(client=client, trusted=trusted)
        report = sync.sync()
        if not report.ok:
            raise SimulationError(f"{job.site_id} could not sync the registry: {report.error}")
        with ThreadPoolExecutor(2) as pool:
            engine = DiagnosisEngine(lambda: sync.catalog, None, pool)
            labels = sync.catalog.task_spec(job.task_id).labels
            examples = evidence_examples(
                engine,
                job.task_id,
                [encode_png(image) for image in images],
                [labels[int(y)] for y in truth],
                modes=[Mode(m) for m in job.modes],
                shuffle_options=True,
                seed=sum(job.site_id.encode()),
            )
    finally:
        client.close()
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


def adapter_update(
    job: TuneJob, state: Mapping[str, Any], epochs: int
) -> tuple[dict[str, Any], int, float]:
    """One FedAvg round at the site: the adapter trained ``epochs`` from the global weights."""
    import resource

    trainer = _trainer(job)
    trainer.set_state(dict(state))
    update = trainer.train(adapter_examples(job), epochs=epochs)
    # What tuning cost this site, for the report and bench/arbitration.py.
    stats_path = Path(job.home) / "adapter" / f"stats-{job.task_id}.json"
    stats = json.loads(stats_path.read_text()) if stats_path.is_file() else {"rounds": []}
    stats["rounds"].append({"seconds": round(update.seconds, 1), "loss": update.loss})
    stats["examples"] = update.examples
    stats["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    stats_path.write_text(json.dumps(stats))
    return update.state, update.examples, update.loss


def publish_adapter(
    job: TuneJob, state: Mapping[str, Any], training: Mapping[str, Any]
) -> tuple[str, str]:
    """Writes, signs and publishes the federated adapter; returns its folder and digest.

    Published like a specialist (``gsco site publish``): through the registry's
    checks and TUF, recorded in the site's egress ledger.
    """
    from generalist import PROMPT_TEMPLATE_VERSION
    from protocol import AdapterCard, AdapterTraining, LoraSpec
    from site_agent import open_site
    from site_agent.adapter import write_adapter_bundle
    from site_agent.adapter._bundle import base_model_sha256

    trainer = _trainer(job)
    trainer.set_state(dict(state))
    home = open_site(Path(job.home))
    recipe = trainer.recipe
    layers = recipe.last_layers
    card = AdapterCard(
        task_id=job.task_id,
        modality=str(training["modality"]),
        labels=tuple(training["labels"]),
        task_type=str(training["task_type"]),  # type: ignore[arg-type]
        base_model=job.base_model,
        base_model_sha256=base_model_sha256(Path(job.model_dir)),
        prompt_template=PROMPT_TEMPLATE_VERSION,
        sees_image=False,
        lora=LoraSpec(
            rank=recipe.rank,
            alpha=recipe.alpha,
            target_modules=tuple(recipe.target_modules),
            layers=()
            if layers is None or layers >= trainer.num_layers
            else tuple(range(trainer.num_layers - layers, trainer.num_layers)),
        ),
        training=AdapterTraining.model_validate(training["training"]),
        site_id=job.site_id,
        version=int(training.get("version", 1)),
        license="Apache-2.0",
        created_at=datetime.now(UTC),
    )
    out = Path(job.out_dir)
    manifest = write_adapter_bundle(out, trainer, card, home.private_key)
    return str(out), _publish(home, job.registry, out, manifest)


def publish_adapter_policy(
    home_dir: Path, registry: str, source: Path, out_dir: Path, policy: Any
) -> tuple[int, str]:
    """The signing site publishes the next version of its adapter with ``policy`` in the card.

    The same weights (see :func:`site_agent.adapter.write_policy_version`),
    through the registry's checks, recorded in the site's egress ledger.
    Returns the new version and its bundle digest.

    Raises:
        AdapterTrainingError: the policy does not fit the adapter.
        RegistryError: the registry refused it.
    """
    from site_agent import open_site
    from site_agent.adapter import write_policy_version

    home = open_site(home_dir)
    shutil.rmtree(out_dir, ignore_errors=True)
    card, manifest = write_policy_version(source, out_dir, policy, home.private_key)
    return card.version, _publish(home, registry, out_dir, manifest)


def _publish(home: SiteHome, registry: str, folder: Path, manifest: VerifiedManifest) -> str:
    """Publishes the signed bundle ``folder``, records it in the egress ledger; its digest."""
    from registry import RegistryClient

    with RegistryClient(registry, timeout_s=120.0) as client:
        ref = client.publish(folder, home.private_key)
    home.ledger.record_publication(registry, ref, dict(manifest.files))
    return ref.bundle_digest
