"""One simulation, end to end: sites on Flower, a registry, a hub, the generalist, the report.

1. The training split is partitioned across the sites; each site gets a home
   folder (identity, ECDSA key, egress ledger) and is enrolled in a registry
   started for the run (gRPC on loopback, storage in ``OUT/registry``).
2. Flower's simulation runtime runs one ClientApp per site: local training
   with the site agent, signing, publishing (or the site's scenario fault).
3. A hub (HTTP on loopback, state in ``OUT/hub``) syncs the registry through
   TUF and serves the verified specialists with the generalist.
4. The untouched test split (or a seeded subset) is diagnosed through the hub
   in every mode, and the report is written.

Everything started here is stopped here, also on errors and Ctrl-C.
"""

from __future__ import annotations

import json
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from fedapp._aggregation import AGGREGATIONS
from fedapp._evaluate import (
    HUB_MODES,
    Evaluation,
    evaluate_through_hub,
    policy_arrays,
    specialist_name,
)
from fedapp._runtime import FlowerRuntime
from fedapp._site_job import SiteJob, SiteOutcome
from fedapp._tune import adapter_card_template
from fedapp._tune_job import TuneJob
from protocol import FedAvgRequest, GscoError, Mode, RunRequest, TaskType, TuneRequest
from simulations._apps import APP_DIR
from simulations._faults import ADAPTER_FAULTS, FAULTS
from simulations._partition import Partition, PartitionSpec, partition
from simulations.errors import ScenarioError, SimulationFailedError

if TYPE_CHECKING:
    from generalist import EmbeddedServer, OpenAIConfig
    from hub import ServedAdapter
    from hub.web import Hub
    from protocol import ArbitrationPolicy
    from registry import Registry
    from site_agent.data import LocalDataset

__all__ = ["Progress", "Scenario", "SimulationResult", "run_scenario"]


@dataclass(frozen=True)
class Scenario:
    """What to simulate. Times in minutes; ``faults`` maps a site number (1-based) to a fault."""

    dataset: str = "pneumoniamnist"
    data: Path | None = None  # the .npz; default: found like the site agent finds it
    # Your own task (YAML/JSON, see site_agent.data.load_task_file); then ``data`` is its
    # MedMNIST-style .npz (any size, grey or RGB) and ``dataset`` is not used.
    task_file: Path | None = None
    sites: int = 3
    partition: str = "iid"
    backbone: str = "tf_efficientnet_lite0"
    epochs: int = 5
    max_minutes_per_site: float = 2.0
    batch_size: int = 32
    learning_rate: float = 1e-3
    max_val_images: int = 200
    test_images: int | None = 200  # None: the whole test split
    seed: int = 0
    faults: dict[int, str] = field(default_factory=dict)  # the sites' stage (FAULTS)
    # The adapter stage's attackers (simulations._faults.ADAPTER_FAULTS): site -> faults.
    adapter_faults: dict[int, tuple[str, ...]] = field(default_factory=dict)
    # How every FedAvg combines the sites' updates (None: trimmed-mean from 3 sites up).
    aggregation: str | None = None
    # "embedded" (SmolLM2, text only), "tiny-meddr" (MedDr's architecture, random weights,
    # served with MedDr's recipe: it sees the images), "none", or an OpenAI base URL.
    generalist: str = "embedded"
    generalist_down: bool = False  # the generalist refuses connections during the evaluation
    concurrency: int = 4
    fedavg_rounds: int = 0  # > 0: the sites also co-train one shared specialist
    fedavg_local_epochs: int = 1
    dp_noise_multiplier: float = 0.0  # > 0: DP-FedAvg (server-side clipping and noise)
    dp_clipping_norm: float = 1.0
    dp_delta: float = 1e-5
    policy_images: int = 200  # validation images the arbitration policy is fitted on (0: none)
    # The generalist's evidence-tuned LoRA adapter, federated over the sites (see _tune_job).
    tune_generalist: bool = False
    tune_rounds: int = 2
    tune_local_epochs: int = 1
    tune_examples_per_site: int = 120
    tune_modes: tuple[str, ...] = ("gsco",)  # the prompts the adapter learns (and serves)
    tune_dp_noise_multiplier: float = 0.0  # > 0: DP-FedAvg of the adapter (server-side clipping)
    tune_dp_clipping_norm: float = 1.0

    def check(self) -> None:
        """Raises :class:`ScenarioError` for a scenario that cannot run."""
        if not 1 <= self.sites <= 500:
            raise ScenarioError("--sites must be between 1 and 500")
        if self.task_file is not None and self.data is None:
            raise ScenarioError("--task-file needs --data: the .npz of your task's images")
        PartitionSpec.parse(self.partition)
        for site, fault in self.faults.items():
            if not 1 <= site <= self.sites:
                raise ScenarioError(f"fault {fault!r} names site {site}; sites are 1..{self.sites}")
            if fault not in FAULTS:
                raise ScenarioError(f"unknown fault {fault!r}: use one of {', '.join(FAULTS)}")
        for site, kinds in self.adapter_faults.items():
            if not 1 <= site <= self.sites:
                raise ScenarioError(
                    f"fault {kinds[0]!r} names site {site}; sites are 1..{self.sites}"
                )
            strange = sorted(set(kinds) - set(ADAPTER_FAULTS))
            if strange:
                raise ScenarioError(
                    f"unknown fault {strange[0]!r}: use one of {', '.join(FAULTS + ADAPTER_FAULTS)}"
                )
            if not self.tune_generalist:
                raise ScenarioError(
                    f"fault {kinds[0]!r} attacks the adapter: pass --tune-generalist"
                )
        if self.aggregation is not None and self.aggregation not in AGGREGATIONS:
            raise ScenarioError(
                f"unknown aggregation {self.aggregation!r}: use one of {', '.join(AGGREGATIONS)}"
            )
        if self.epochs < 1 or self.max_minutes_per_site <= 0:
            raise ScenarioError("epochs and the time budget per site must be positive")
        if self.fedavg_rounds < 0 or self.fedavg_local_epochs < 1:
            raise ScenarioError("FedAvg needs rounds >= 0 and local epochs >= 1")
        if self.dp_noise_multiplier < 0 or self.dp_clipping_norm <= 0:
            raise ScenarioError("DP needs a noise multiplier >= 0 and a positive clipping norm")
        if self.dp_noise_multiplier > 0 and self.fedavg_rounds == 0:
            raise ScenarioError("DP noise applies to FedAvg: pass --fedavg-rounds too")
        if self.tune_generalist:
            if self.tune_rounds < 1 or self.tune_local_epochs < 1:
                raise ScenarioError("adapter tuning needs rounds >= 1 and local epochs >= 1")
            if self.tune_examples_per_site < 1:
                raise ScenarioError("adapter tuning needs at least one example per site")
            unknown = set(self.tune_modes) - {m.value for m in POLICY_MODES}
            if unknown or not self.tune_modes:
                raise ScenarioError(
                    f"adapter modes {sorted(unknown) or '(none)'}: use some of gsco, moed, rad"
                )
            if self.tune_dp_noise_multiplier < 0 or self.tune_dp_clipping_norm <= 0:
                raise ScenarioError(
                    "adapter DP needs a noise multiplier >= 0 and a positive clipping norm"
                )
            if self.generalist == "tiny-meddr":
                # The simulation's sites tune and score text-only prompts; the tiny MedDr's
                # adapter (with image prompts) is tuned and served in tests/hub/test_tiny_meddr.
                raise ScenarioError(
                    "--tune-generalist tunes the text-only embedded generalist: with "
                    "--generalist tiny-meddr pass --no-tune-generalist"
                )
            if self.generalist != "embedded":
                raise ScenarioError(
                    "--tune-generalist tunes the embedded generalist (its weights are here); "
                    "a remote generalist's adapter is tuned where its weights are"
                )


class Progress(Protocol):
    """Receives progress while a simulation runs."""

    def stage(self, text: str) -> None:
        """A new stage begins."""

    def line(self, text: str) -> None:
        """A line of detail (Flower's log, a site's outcome)."""

    def evaluated(self, done: int, total: int) -> None:
        """One more test image was diagnosed in every mode."""


@dataclass
class SimulationResult:
    """Everything the report is made from."""

    scenario: Scenario
    task_id: str
    labels: tuple[str, ...]
    sites: list[SiteOutcome]
    partition_counts: dict[str, list[int]]
    partition_moved: int
    hub_sites: list[str]  # specialists the hub verified and served: SITE or SITE (fedavg)
    hub_refused: dict[str, str]
    evaluation: Evaluation | None
    timings_s: dict[str, float]
    out_dir: Path
    policy: ArbitrationPolicy | None = None  # fitted on validation, if any
    adapter: dict[str, Any] | None = None  # the tuned adapter: digest, card, tuning outcome
    task_type: TaskType = TaskType.MULTICLASS


def _site_id(number: int) -> str:
    return f"hospital-{number:02d}"


@contextmanager
def _registry(root: Path) -> Iterator[tuple[str, Registry]]:
    from registry import ServerConfig, start_server

    server, store, port = start_server(ServerConfig(root=root, port=0))
    try:
        yield f"127.0.0.1:{port}", store
    finally:
        server.stop(grace=5).wait()
        store.close()


#: The generalists a simulation serves itself, their weights on this machine.
LOCAL_GENERALISTS = ("embedded", "tiny-meddr")


def _local_generalist(scenario: Scenario) -> EmbeddedServer:
    """The embedded server the scenario names (SmolLM2, or the tiny MedDr)."""
    from generalist import EmbeddedServer, TinyMeddrServer

    return TinyMeddrServer() if scenario.generalist == "tiny-meddr" else EmbeddedServer()


@contextmanager
def _generalist(scenario: Scenario, progress: Progress) -> Iterator[OpenAIConfig | None]:
    """The generalist's backend config (None without one); stops what it started."""
    from generalist import MODEL_NAME, OpenAIConfig

    if scenario.generalist == "none":
        yield None
        return
    if scenario.generalist_down:
        # "Down" is a generalist that refuses connections: a loopback port held
        # bound, never listening. A shared server (the embedded one may serve
        # other processes too) is never stopped for this.
        with socket.socket() as closed:
            closed.bind(("127.0.0.1", 0))
            port = closed.getsockname()[1]
            yield OpenAIConfig(
                base_url=f"http://127.0.0.1:{port}/v1", model=MODEL_NAME, timeout_s=10.0
            )
        return
    if scenario.generalist not in LOCAL_GENERALISTS:
        yield OpenAIConfig(base_url=scenario.generalist, model=MODEL_NAME, timeout_s=120.0)
        return
    server = _local_generalist(scenario)
    already = server.state() is not None
    progress.stage(f"starting the CPU generalist ({scenario.generalist}: vLLM, about a minute)")
    state = server.start(timeout_s=900)
    try:
        yield server.backend_config(state)
    finally:
        if not already:
            server.stop()  # only what this run started


@contextmanager
def _hub(
    address: str, root: Path, state: Path, generalist: OpenAIConfig | None
) -> Iterator[tuple[str, Hub]]:
    from hub import HubConfigError
    from hub.web import Hub, HubConfig, serving

    hub = Hub(
        HubConfig(
            registry=address,
            trusted_root=root / "tuf" / "metadata" / "1.root.json",
            state_dir=state,
            allow_anonymous=True,  # loopback only, inside this process's run
            generalist=generalist,
            sync_interval_s=3600.0,
            max_in_flight=8,
            max_queue=256,
            generalist_timeout_s=120.0,
        )
    )
    with ExitStack() as stack:
        try:
            url = stack.enter_context(serving(hub))
        except HubConfigError as exc:
            raise SimulationFailedError(f"the hub did not start: {exc}") from exc
        yield url, hub


def _fedavg_request(scenario: Scenario) -> FedAvgRequest:
    """The scenario's FedAvg, as the Flower app reads it."""
    return FedAvgRequest.model_validate(
        {
            "rounds": scenario.fedavg_rounds,
            "local_epochs": scenario.fedavg_local_epochs,
            "aggregation": scenario.aggregation,
            "dp_noise_multiplier": scenario.dp_noise_multiplier,
            "dp_clipping_norm": scenario.dp_clipping_norm,
            "dp_delta": scenario.dp_delta,
        }
    )


def _load(scenario: Scenario) -> tuple[LocalDataset, Path]:
    from site_agent.data import default_catalog, find_medmnist, load_medmnist, load_task_file

    if scenario.task_file is not None:
        assert scenario.data is not None  # Scenario.check
        try:
            entry = load_task_file(scenario.task_file)
        except GscoError as exc:
            raise ScenarioError(str(exc)) from exc
        return load_medmnist(scenario.data, entry.task), scenario.data
    try:
        entry = default_catalog().for_medmnist(scenario.dataset)
    except Exception as exc:
        raise ScenarioError(f"no task for dataset {scenario.dataset!r}: {exc}") from exc
    path = scenario.data or find_medmnist(scenario.dataset)
    return load_medmnist(path, entry.task, dataset=scenario.dataset), path


def dataset_name(scenario: Scenario) -> str:
    """What the report calls the data: the MedMNIST name, or the file of a declared task."""
    if scenario.task_file is not None and scenario.data is not None:
        return scenario.data.name
    return scenario.dataset


class _Laps:
    """Wall time per stage, in seconds, in the order the stages ran."""

    def __init__(self) -> None:
        self.timings: dict[str, float] = {}
        self._clock = time.monotonic()

    def __call__(self, name: str) -> None:
        now = time.monotonic()
        self.timings[name] = round(now - self._clock, 1)
        self._clock = now


@dataclass(frozen=True)
class _Prepared:
    """The dataset and its partition across the sites."""

    dataset: LocalDataset
    split: Partition
    counts: list[list[int]]


@dataclass(frozen=True)
class _Sites:
    """What the Flower run of the sites reported."""

    outcomes: list[SiteOutcome]
    published: list[SiteOutcome]


@dataclass
class _Arbitration:
    """The policies fitted on validation and the adapter tuned, if any."""

    policy: ArbitrationPolicy | None = None
    adapter: dict[str, Any] | None = None
    served: ServedAdapter | None = None
    adapter_policy: ArbitrationPolicy | None = None


def run_scenario(scenario: Scenario, out: Path, progress: Progress) -> SimulationResult:
    """Runs ``scenario`` and returns what the report needs (``out`` keeps the evidence).

    Raises:
        ScenarioError: the scenario cannot run.
        SimulationFailedError: a component did not start or the Flower run failed.
    """
    scenario.check()
    lap = _Laps()
    out.mkdir(parents=True, exist_ok=True)
    for stale in ("registry", "hub", "sites"):
        shutil.rmtree(out / stale, ignore_errors=True)
    prepared = _prepare(scenario, progress)
    lap("prepare")
    dataset = prepared.dataset
    with ExitStack() as stack:
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="gsco-sim-")))
        address, store = stack.enter_context(_registry(out / "registry"))
        progress.line(f"registry on {address}, storage {out / 'registry'}")
        jobs = site_jobs(scenario, prepared, work, out, address, store)
        lap("sites")
        flower_log = stack.enter_context((out / "flower.log").open("w"))

        def on_line(line: str) -> None:
            flower_log.write(line + "\n")
            if "gsco:" in line:
                progress.line(line)
            elif "ERROR" in line and "Traceback" not in line:
                progress.line(line.replace("\x1b[91m", "").replace("\x1b[0m", ""))

        sites = _train_sites(scenario, jobs, work, out, progress, on_line)
        lap("flower")
        generalist = stack.enter_context(_generalist(scenario, progress))
        lap("generalist")
        progress.stage("starting the hub and syncing the registry through TUF")
        url, hub = stack.enter_context(_hub(address, out / "registry", out / "hub", generalist))
        report = hub.last_sync
        hub_sites = sorted({specialist_name(s.provenance) for s in hub.catalog.all})
        refused = dict(report.rejected) if report else {}
        lap("hub")
        usable = generalist is not None and not scenario.generalist_down
        arbitration = _arbitrate(
            scenario, dataset, hub, url, address, work, out, sites, progress, on_line, lap, usable
        )
        evaluation, policy = _evaluate_all(scenario, dataset, hub, url, progress, arbitration)
        if policy is not None:
            (out / "policy.json").write_text(policy.model_dump_json(indent=2) + "\n")
        lap("evaluation")
    return SimulationResult(
        scenario=scenario,
        task_id=dataset.task.task_id,
        labels=dataset.task.labels,
        task_type=dataset.task.task_type,
        sites=sites.outcomes,
        partition_counts={_site_id(n): c for n, c in enumerate(prepared.counts, start=1)},
        partition_moved=prepared.split.moved,
        hub_sites=hub_sites,
        hub_refused=refused,
        evaluation=evaluation,
        timings_s=lap.timings,
        out_dir=out,
        policy=policy,
        adapter=arbitration.adapter,
    )


def _prepare(scenario: Scenario, progress: Progress) -> _Prepared:
    """Loads the dataset and partitions its training split across the sites."""
    progress.stage(
        f"loading {dataset_name(scenario)} and partitioning it across {scenario.sites} sites"
    )
    dataset, _ = _load(scenario)
    split = partition(
        dataset.train.labels,
        scenario.sites,
        PartitionSpec.parse(scenario.partition),
        seed=scenario.seed,
    )
    return _Prepared(
        dataset, split, split.class_counts(dataset.train.labels, len(dataset.task.labels))
    )


def site_jobs(
    scenario: Scenario,
    prepared: _Prepared,
    work: Path,
    out: Path,
    address: str,
    store: Registry,
) -> list[SiteJob]:
    """Every site's job, from the scenario (the one place its settings reach the sites).

    Each site gets a home folder (identity, key, ledger) enrolled in ``store``
    and its share of the training split (with the shared validation and test
    splits) as ``WORK/SITE.npz``; ``WORK/jobs.json`` holds the jobs for Flower.
    """
    from site_agent import init_site

    dataset = prepared.dataset
    jobs = []
    for number, rows in enumerate(prepared.split.sites, start=1):
        site_id = _site_id(number)
        home = init_site(out / "sites" / site_id, site_id)
        store.enroll(site_id, home.public_key().pem)
        data = work / f"{site_id}.npz"
        np.savez(
            data,
            train_images=_squeeze(dataset.train.images[rows]),
            train_labels=dataset.train.labels[rows][:, None],
            val_images=_squeeze(dataset.val.images),
            val_labels=dataset.val.labels[:, None],
            test_images=_squeeze(dataset.test.images),
            test_labels=dataset.test.labels[:, None],
        )
        jobs.append(
            SiteJob(
                site_id=site_id,
                home=str(home.root),
                data=str(data),
                task_id=dataset.task.task_id,
                dataset=scenario.dataset if scenario.task_file is None else None,
                task=dataset.task.model_dump(mode="json") if scenario.task_file else None,
                registry=address,
                out_dir=str(work / "bundles" / site_id),
                backbone=scenario.backbone,
                epochs=scenario.epochs,
                max_minutes=scenario.max_minutes_per_site,
                batch_size=scenario.batch_size,
                learning_rate=scenario.learning_rate,
                max_eval_images=scenario.max_val_images,
                seed=scenario.seed + number,
                fault=scenario.faults.get(number),
            )
        )
    (work / "jobs.json").write_text(json.dumps([job.to_json() for job in jobs]))
    return jobs


def _train_sites(
    scenario: Scenario,
    jobs: list[SiteJob],
    work: Path,
    out: Path,
    progress: Progress,
    on_line: Callable[[str], None],
) -> _Sites:
    """The Flower run of the sites: each trains, signs and publishes (or acts out its fault).

    Raises:
        SimulationFailedError: the run gave no outcomes, or no site published.
    """
    progress.stage(f"Flower simulation: {scenario.sites} hospital sites train and publish")
    with FlowerRuntime(work) as runtime:
        runtime.run(
            scenario.sites,
            {
                "jobs-file": str(work / "jobs.json"),
                "results-file": str(work / "outcomes.json"),
                **RunRequest(
                    timeout_s=60.0
                    * (
                        scenario.max_minutes_per_site
                        * scenario.sites
                        * (1 + scenario.fedavg_rounds)
                        + 10
                    ),
                    fedavg=_fedavg_request(scenario),
                ).to_config(),
            },
            on_line,
            APP_DIR,
        )
    if not (work / "outcomes.json").is_file():
        raise SimulationFailedError(
            f"the Flower run ended without the sites' outcomes; see {out / 'flower.log'}"
        )
    reported = json.loads((work / "outcomes.json").read_text())
    outcomes = [
        SiteOutcome(**reported[_site_id(n)])
        if _site_id(n) in reported
        else SiteOutcome(_site_id(n), "dropped-out", "no reply")
        for n in range(1, scenario.sites + 1)
    ] + [SiteOutcome(**value) for key, value in sorted(reported.items()) if "(fedavg)" in key]
    published = [o for o in outcomes if o.status == "published"]
    if not published:
        raise SimulationFailedError(
            "no site published a specialist: "
            + "; ".join(f"{o.site_id} {o.status} {o.detail}" for o in outcomes)
        )
    return _Sites(outcomes, published)


def _arbitrate(
    scenario: Scenario,
    dataset: LocalDataset,
    hub: Hub,
    url: str,
    address: str,
    work: Path,
    out: Path,
    sites: _Sites,
    progress: Progress,
    on_line: Callable[[str], None],
    lap: _Laps,
    usable: bool,
) -> _Arbitration:
    """The base model's policy, then the adapter: tuned, co-signed, published and served."""
    from hub import with_modes_of

    found = _Arbitration()
    rows = _validation_rows(scenario, len(dataset.val))
    if usable and len(rows.base_policy):
        found.policy = _fit_policy(scenario, dataset, url, progress, rows.base_policy)
        hub.set_policy(found.policy)
        lap("policy")
    if not (usable and scenario.tune_generalist):
        return found
    adapter_modes = tuple(Mode(m) for m in scenario.tune_modes)
    found.adapter = _tune_adapter(
        scenario, dataset, work, out, sites.published, address, rows, progress, on_line
    )
    lap("tuning")
    if found.adapter.get("published"):
        found.served = _serve_adapter(
            hub, dataset.task.task_id, found.adapter, found.adapter["published"], progress
        )
        lap("adapter sync")
    if found.served is not None and found.served.card.policy is not None:
        # Fitted at the sites, as deployed hospitals fit it, and published in the card.
        assert hub.engine is not None  # started
        found.adapter_policy = hub.engine.policy_in_service(dataset.task.task_id)
        return found
    if found.served is not None and len(rows.adapter_policy):
        # The sites could not fit it (too few cases each): the hub operator fits it through
        # the hub and puts it in service (hub.set_policy); only the sites' co-signatures
        # could put a policy in the adapter's card.
        fitted = _fit_policy(
            scenario, dataset, url, progress, rows.adapter_policy, modes=adapter_modes
        )
        lap("adapter policy")
        named = fitted.model_copy(update={"model": found.served.name})
        merged = with_modes_of(found.policy, named) if found.policy is not None else named
        hub.set_policy(merged)
        found.adapter["policy_set_by_operator"] = True
        assert hub.engine is not None  # started
        found.adapter_policy = hub.engine.policy_in_service(dataset.task.task_id)
        progress.line("the sites could not fit the adapter's policy; the hub operator set it")
    return found


def _evaluate_all(
    scenario: Scenario,
    dataset: LocalDataset,
    hub: Hub,
    url: str,
    progress: Progress,
    arbitration: _Arbitration,
) -> tuple[Evaluation, ArbitrationPolicy | None]:
    """The test split through the hub: the base model's rows, then the adapter's, if one serves.

    Returns the evaluation and the policy its answers were given under.
    """
    served = arbitration.served
    if served is None:
        return _evaluate(scenario, dataset, url, progress), arbitration.policy
    assert hub.engine is not None
    task_id = dataset.task.task_id
    adapter_modes = tuple(Mode(m) for m in scenario.tune_modes)
    hub.engine.adapters.pop(task_id, None)
    evaluation = _evaluate(scenario, dataset, url, progress)
    hub.engine.adapters[task_id] = served
    adapted = _evaluate(scenario, dataset, url, progress, modes=adapter_modes)
    evaluation.merge_adapter(adapted, adapter_modes)
    return evaluation, arbitration.adapter_policy or arbitration.policy


def _squeeze(images: np.ndarray) -> np.ndarray:
    return images[..., 0] if images.shape[-1] == 1 else images


def _evaluate(
    scenario: Scenario,
    dataset: LocalDataset,
    url: str,
    progress: Progress,
    modes: tuple[Mode, ...] = HUB_MODES,
) -> Evaluation:
    from hub.web import HubClient

    n = len(dataset.test)
    rows = np.arange(n)
    if scenario.test_images is not None and scenario.test_images < n:
        rng = np.random.default_rng(scenario.seed)
        rows = np.sort(rng.permutation(n)[: scenario.test_images])
    progress.stage(
        f"evaluating {len(rows)} test images through the hub in {len(modes)} modes"
        + (" (the adapter)" if modes != HUB_MODES else "")
    )
    done = 0
    lock = threading.Lock()

    def tick(_: int) -> None:
        nonlocal done
        with lock:
            done += 1
            progress.evaluated(done, len(rows))

    clients = threading.local()

    def diagnose(png: bytes, mode: Mode) -> Any:
        if not hasattr(clients, "client"):
            clients.client = HubClient(url, timeout_s=300)
        return clients.client.diagnose(png, dataset.task.task_id, mode=mode)

    return evaluate_through_hub(
        diagnose,
        dataset.test.images[rows],
        dataset.test.labels[rows],
        dataset.task.labels,
        task_type=dataset.task.task_type,
        modes=modes,
        concurrency=scenario.concurrency,
        on_image=tick,
    )


#: The generalist modes a policy weighs against the ensemble.
POLICY_MODES = (Mode.GSCO, Mode.MOED, Mode.RAD)


def _validation_rows(scenario: Scenario, n: int) -> _ValidationRows:
    """Which validation rows fit which policy, and which the adapter is tuned on.

    The base model was tuned on none of them, so its policy takes up to
    ``policy_images`` of the whole split. The adapter's policy and its tuning
    cases are disjoint (a policy fitted on the adapter's own training cases
    would trust it more than it deserves): with tuning, the adapter's policy
    takes at most half of the split, and the tuning the rest.
    """
    order = np.random.default_rng(scenario.seed + 1).permutation(n)
    base = np.sort(order[: min(scenario.policy_images, n)])
    if not scenario.tune_generalist:
        return _ValidationRows(base, np.arange(0), np.arange(0))
    take = min(scenario.policy_images, n // 2)
    return _ValidationRows(base, np.sort(order[:take]), np.sort(order[take:]))


@dataclass(frozen=True)
class _ValidationRows:
    base_policy: np.ndarray  # the base model's policy
    adapter_policy: np.ndarray  # the adapter's policy (disjoint from tuning)
    tuning: np.ndarray  # the adapter's tuning examples


def _tune_adapter(
    scenario: Scenario,
    dataset: LocalDataset,
    work: Path,
    out: Path,
    published: list[SiteOutcome],
    address: str,
    split: _ValidationRows,
    progress: Progress,
    on_line: Callable[[str], None],
) -> dict[str, Any]:
    """Federated tuning of the generalist's adapter (a second Flower run); its outcome.

    Each site tunes on its share of ``split.tuning`` and, as deployed sites do,
    scores its share of ``split.adapter_policy`` for the policy fitted from
    the sites' sums and counts (a site with fewer than
    :data:`fedapp._tune_job.MIN_POLICY_CASES` answers nothing).
    """
    sites = sorted({o.site_id for o in published if "(fedavg)" not in o.site_id})
    jobs = _tune_jobs(scenario, dataset, work, out, sites, address, split)
    if not jobs:
        return {"error": "no validation cases are left for tuning"}
    tune_dir = work / "tune"
    tune_dir.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(out / "adapter", ignore_errors=True)
    (tune_dir / "jobs.json").write_text(json.dumps([job.to_json() for job in jobs]))
    card_template = {
        "modality": dataset.task.modality,
        "labels": list(dataset.task.labels),
        "task_type": dataset.task.task_type.value,
        "version": 1,
        **adapter_card_template(
            scenario.tune_modes,
            f"each site's share of the validation split ({len(split.tuning)} cases, disjoint "
            "from the cases the adapter's arbitration policy is fitted on); the "
            "specialists' temperatures were fitted on the whole split",
        ),
    }
    progress.stage(
        f"tuning the generalist's LoRA adapter: {len(jobs)} sites, "
        f"{scenario.tune_rounds} FedAvg rounds (Flower)"
    )
    run = RunRequest(
        timeout_s=60.0 * (10 + 5 * len(jobs) * scenario.tune_rounds),
        fedavg=_fedavg_request(scenario),
        tune=TuneRequest.model_validate(
            {
                "rounds": scenario.tune_rounds,
                "local_epochs": scenario.tune_local_epochs,
                "policy_cases_per_site": max((len(j.policy_rows) for j in jobs), default=0),
                "examples_per_site": scenario.tune_examples_per_site,
                # The modes the sites fit the adapter's policy for: all it learns.
                "modes": scenario.tune_modes,
                "dp_noise_multiplier": scenario.tune_dp_noise_multiplier,
                "dp_clipping_norm": scenario.tune_dp_clipping_norm,
            }
        ),
    )
    with FlowerRuntime(tune_dir) as runtime:
        runtime.run(
            len(jobs),
            {
                "stage": "tune",
                "jobs-file": "",
                "tune-jobs-file": str(tune_dir / "jobs.json"),
                "results-file": str(tune_dir / "outcome.json"),
                "adapter-card": json.dumps(card_template),
                **run.to_config(),
            },
            on_line,
            APP_DIR,
        )
    if not (tune_dir / "outcome.json").is_file():
        return {"error": "the tuning run ended without an outcome"}
    outcome: dict[str, Any] = json.loads((tune_dir / "outcome.json").read_text())
    outcome["per_site"] = {}
    for site in sites:
        stats = out / "sites" / site / "adapter" / f"stats-{dataset.task.task_id}.json"
        if stats.is_file():
            outcome["per_site"][site] = json.loads(stats.read_text())
    return outcome


def _tune_jobs(
    scenario: Scenario,
    dataset: LocalDataset,
    work: Path,
    out: Path,
    sites: list[str],
    address: str,
    split: _ValidationRows,
) -> list[TuneJob]:
    """Each site's adapter job: its share of the tuning cases and of the policy's cases."""
    from generalist import MODEL_NAME, EmbeddedServer
    from site_agent.adapter import AdapterRecipe

    shares = np.array_split(
        np.random.default_rng(scenario.seed + 2).permutation(split.tuning), len(sites)
    )
    policy_shares = np.array_split(
        np.random.default_rng(scenario.seed + 3).permutation(split.adapter_policy), len(sites)
    )
    recipe = AdapterRecipe(max_examples=scenario.tune_examples_per_site, seed=scenario.seed)
    return [
        TuneJob(
            site_id=site,
            home=str(out / "sites" / site),
            data=str(work / f"{site}.npz"),
            rows=tuple(int(r) for r in np.sort(share)[: scenario.tune_examples_per_site]),
            task_id=dataset.task.task_id,
            registry=address,
            trusted_root=str(out / "registry" / "tuf" / "metadata" / "1.root.json"),
            model_dir=str(EmbeddedServer().model_dir),
            base_model=MODEL_NAME,
            out_dir=str(out / "adapter"),
            recipe=recipe.to_dict(),
            modes=tuple(scenario.tune_modes),
            policy_rows=tuple(int(r) for r in np.sort(policy_share)),
            faults=scenario.adapter_faults.get(int(site.rsplit("-", 1)[1]), ()),
        )
        for site, share, policy_share in zip(sites, shares, policy_shares, strict=True)
        if len(share)
    ]


def _serve_adapter(
    hub: Hub, task_id: str, adapter: dict[str, Any], digest: str, progress: Progress
) -> ServedAdapter | None:
    """The hub's next sync takes the adapter bundle ``digest`` through its own checks.

    What it serves is recorded in ``adapter`` (digest, name, card); a refusal
    as ``adapter["not_served"]``, and then ``None`` is returned.
    """
    hub.sync_now()
    assert hub.engine is not None  # started
    served = hub.engine.adapters.get(task_id)
    if served is None or served.digest != digest:
        adapter["not_served"] = hub.adapter_warnings.get(task_id) or "the hub did not serve it"
        progress.line(f"the hub does not serve the adapter: {adapter['not_served']}")
        return None
    adapter["digest"] = served.digest
    adapter["name"] = served.name
    adapter["card"] = served.card.model_dump(mode="json")
    progress.line(f"adapter {served.name} in service (bundle {served.digest[:12]})")
    return served


def _fit_policy(
    scenario: Scenario,
    dataset: LocalDataset,
    url: str,
    progress: Progress,
    rows: np.ndarray,
    modes: tuple[Mode, ...] = (Mode.GSCO, Mode.MOED, Mode.RAD),
) -> ArbitrationPolicy:
    """The task's arbitration policy, fitted on validation images through the hub.

    The specialists' temperatures were fitted on this same validation split,
    which flatters the ensemble there: the bias is towards trusting the
    generalist less, never more. Test images are never used.
    """
    from hub import fit_policy
    from hub.web import HubClient

    progress.stage(
        f"fitting the arbitration policy on {len(rows)} validation images "
        f"({', '.join(m.value for m in modes)})"
    )
    clients = threading.local()

    def diagnose(png: bytes, mode: Mode) -> Any:
        if not hasattr(clients, "client"):
            clients.client = HubClient(url, timeout_s=300)
        return clients.client.diagnose(png, dataset.task.task_id, mode=mode)

    evaluation = evaluate_through_hub(
        diagnose,
        dataset.val.images[rows],
        dataset.val.labels[rows],
        dataset.task.labels,
        task_type=dataset.task.task_type,
        modes=(Mode.ENSEMBLE, *modes),
        concurrency=scenario.concurrency,
    )
    ensemble, calibrated, specialists = policy_arrays(evaluation, modes)
    return fit_policy(
        dataset.task,
        ensemble,
        calibrated,
        evaluation.truth,
        model=evaluation.generalist_model,
        specialists=specialists,
    )


def scenario_dict(scenario: Scenario) -> dict[str, Any]:
    """The scenario as JSON-ready data."""
    document = asdict(scenario)
    document["data"] = str(scenario.data) if scenario.data else None
    document["task_file"] = str(scenario.task_file) if scenario.task_file else None
    if scenario.task_file is not None:
        document["dataset"] = dataset_name(scenario)
    document["faults"] = {str(k): v for k, v in scenario.faults.items()}
    document["adapter_faults"] = {str(k): list(v) for k, v in scenario.adapter_faults.items()}
    return document
