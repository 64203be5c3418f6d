"""``gsco simulate`` and ``gsco demo``: many hospitals on one machine, and the report."""

from __future__ import annotations

import signal
import sys
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from gsco.cli._common import (
    AggregationOption,
    DpClipOption,
    DpNoiseOption,
    FedAvgLocalEpochsOption,
    console,
)

#: Piped or logged, a long stage prints a line at least this often (seconds).
HEARTBEAT_S = 30.0


class ConsoleProgress:
    """Prints stages and details with the elapsed time; a bar while evaluating."""

    def __init__(self) -> None:
        self.console = console(stderr=True)
        self.started = time.monotonic()
        self._bar: Progress | None = None
        self._task: TaskID | None = None
        self._heard = self.started

    def _stamp(self) -> str:
        seconds = int(time.monotonic() - self.started)
        return f"[dim]{seconds // 60:02d}:{seconds % 60:02d}[/dim]"

    def stage(self, text: str) -> None:
        """A new stage."""
        self._close_bar()
        self.console.print(f"{self._stamp()} [bold]{text}[/bold]")

    def line(self, text: str) -> None:
        """A detail line."""
        text = text.split("gsco: ", 1)[-1]
        self.console.print(self._stamp(), end="   ")
        self.console.print(text, markup=False, highlight=False)

    def evaluated(self, done: int, total: int) -> None:
        """Evaluation progress: a bar at a terminal, a line every 30 s otherwise."""
        if not self.console.is_terminal:
            now = time.monotonic()
            if done >= total or now - self._heard >= HEARTBEAT_S:
                self._heard = now
                self.line(f"  images {done}/{total}")
            return
        if self._bar is None:
            self._bar = Progress(
                TextColumn("  test images"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=self.console,
            )
            self._bar.start()
            self._task = self._bar.add_task("eval", total=total)
        assert self._task is not None
        self._bar.update(self._task, completed=done)
        if done >= total:
            self._close_bar()

    def _close_bar(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None


def _faults(values: list[str] | None) -> tuple[dict[int, str], dict[int, tuple[str, ...]]]:
    """``--fault SITE:FAULT`` values: the sites' stage faults and the adapter stage's.

    SITE is a site's number (``3``) or its id as the simulation names it
    (``hospital-03``). A site has at most one fault of the sites' stage and any
    number of the adapter stage's.
    """
    from simulations import FAULTS, ScenarioError

    faults: dict[int, str] = {}
    adapter: dict[int, tuple[str, ...]] = {}
    for value in values or []:
        site, _, fault = value.partition(":")
        number = site.removeprefix("hospital-")
        if not number.isdigit() or not fault:
            raise ScenarioError(
                f"--fault {value!r}: use SITE:FAULT, e.g. 2:flip-labels or hospital-03:lie-policy"
            )
        if fault in FAULTS:
            if int(number) in faults:
                raise ScenarioError(f"--fault {value!r}: site {number} has a fault already")
            faults[int(number)] = fault
        else:
            adapter[int(number)] = (*adapter.get(int(number), ()), fault)
    return faults, adapter


def _print_table(report: dict[str, object], out: Path) -> None:
    out_console = console()
    table = Table(title="Methods on the test split (95% bootstrap CI)")
    ordinal = report.get("task_type") == "ordinal"
    grades = ("QWK", "MAE") if ordinal else ()
    for column in ("method", "ACC", "macro-AUC", "macro-F1", *grades, "degraded"):
        table.add_column(column)

    def fmt(entry: object) -> str:
        if not isinstance(entry, dict):
            return "n/a"
        return f"{entry['value']:.3f} [{entry['low']:.3f}, {entry['high']:.3f}]"

    degraded = report.get("degraded_answers") or {}
    assert isinstance(degraded, dict)
    methods = report.get("methods") or []
    assert isinstance(methods, list)
    for method in methods:
        table.add_row(
            method["method"],
            fmt(method["accuracy"]),
            fmt(method["macro_auc"]),
            fmt(method["macro_f1"]),
            *(
                (fmt(method["quadratic_weighted_kappa"]), fmt(method["mean_absolute_error"]))
                if ordinal
                else ()
            ),
            str(degraded.get(method["method"], "")),
        )
    out_console.print(table)
    sites = report.get("sites") or []
    assert isinstance(sites, list)
    for site in sites:
        if site["fault"] or site["status"] != "published":
            out_console.print(
                f"  {site['site_id']}: {site['fault'] or 'no fault'} -> {site['status']} "
                f"{site['detail'][:100]}",
                markup=False,
            )
    out_console.print(f"report: {out / 'report.md'}")


def simulate(
    dataset: Annotated[
        str, typer.Option(help="MedMNIST dataset, e.g. pneumoniamnist or breastmnist.")
    ] = "pneumoniamnist",
    data: Annotated[
        Path | None,
        typer.Option(
            help="The dataset's .npz (MedMNIST's keys; any size, grey or RGB) "
            "(default: $GSCO_DATA_DIR, ~/.medmnist)."
        ),
    ] = None,
    task_file: Annotated[
        Path | None,
        typer.Option(
            help="YAML/JSON file declaring your own task (docs/tutorial/your-own-task.md); "
            "needs --data."
        ),
    ] = None,
    sites: Annotated[int, typer.Option(min=1, max=500, help="Number of hospital sites.")] = 5,
    partition: Annotated[
        str, typer.Option(help="iid | dirichlet:ALPHA (label skew) | quantity:ALPHA.")
    ] = "iid",
    backbone: Annotated[str, typer.Option(help="Backbone every site trains.")] = (
        "tf_efficientnet_lite0"
    ),
    epochs: Annotated[int, typer.Option(min=1)] = 5,
    minutes_per_site: Annotated[
        float, typer.Option(min=0.1, help="Training time budget per site.")
    ] = 2.0,
    test_images: Annotated[
        int, typer.Option(min=0, help="Test images to evaluate (0: the whole test split).")
    ] = 200,
    fault: Annotated[
        list[str] | None,
        typer.Option(
            help="SITE:FAULT, repeatable; SITE is a number or an id (hospital-03). The sites' "
            "stage: flip-labels, drop-out, tamper, unsigned. The adapter's (with "
            "--tune-generalist): rogue-adapter, poison-adapter, inflate-examples, lie-policy."
        ),
    ] = None,
    aggregation: AggregationOption = None,
    generalist: Annotated[
        str,
        typer.Option(
            help="embedded (SmolLM2 on the CPU vLLM server, text only) | tiny-meddr (MedDr's "
            "architecture at tiny scale, random weights, served with MedDr's recipe: it sees "
            "the images; with --no-tune-generalist) | none | an OpenAI base URL."
        ),
    ] = "embedded",
    generalist_down: Annotated[
        bool, typer.Option(help="The generalist is unreachable during the evaluation (a fault).")
    ] = False,
    fedavg_rounds: Annotated[
        int,
        typer.Option(min=0, help="Also co-train one shared specialist with FedAvg (rounds)."),
    ] = 0,
    fedavg_local_epochs: FedAvgLocalEpochsOption = 1,
    dp_noise: DpNoiseOption = 0.0,
    dp_clip: DpClipOption = 1.0,
    tune_generalist: Annotated[
        bool,
        typer.Option(
            help="Tune the generalist's LoRA adapter on the sites' validation evidence "
            "(FedAvg with Flower), sign it, and serve it through the hub."
        ),
    ] = False,
    tune_rounds: Annotated[int, typer.Option(min=1, help="FedAvg rounds of the adapter.")] = 2,
    tune_mode: Annotated[
        list[str] | None,
        typer.Option(
            help="A mode whose prompts the adapter learns and answers (repeatable: gsco, moed, "
            "rad) (default: gsco)."
        ),
    ] = None,
    tune_dp_noise: Annotated[
        float, typer.Option(min=0.0, help="DP-FedAvg noise multiplier of the adapter (0: no DP).")
    ] = 0.0,
    tune_dp_clip: Annotated[
        float, typer.Option(min=0.0, help="DP-FedAvg clipping norm of the adapter's updates.")
    ] = 1.0,
    policy_images: Annotated[
        int,
        typer.Option(
            min=0,
            help="Validation images the arbitration policy is fitted on (0: no policy). With "
            "--tune-generalist the adapter's policy takes at most half the split and the rest "
            "tunes the adapter; the base model's policy may use the whole split.",
        ),
    ] = 200,
    tune_examples: Annotated[
        int, typer.Option(min=1, help="Evidence examples per site and round (at most).")
    ] = 120,
    seed: int = 0,
    out: Annotated[Path, typer.Option(help="Report folder.")] = Path("gsco-report"),
) -> None:
    """Simulate hospital sites with Flower, evaluate every method through the hub, report."""
    from simulations import Scenario, run_scenario, write_report

    site_faults, adapter_faults = _faults(fault)
    scenario = Scenario(
        dataset=dataset,
        data=data,
        task_file=task_file,
        sites=sites,
        partition=partition,
        backbone=backbone,
        epochs=epochs,
        max_minutes_per_site=minutes_per_site,
        test_images=test_images or None,
        seed=seed,
        faults=site_faults,
        adapter_faults=adapter_faults,
        aggregation=aggregation,
        generalist=generalist,
        generalist_down=generalist_down,
        fedavg_rounds=fedavg_rounds,
        fedavg_local_epochs=fedavg_local_epochs,
        dp_noise_multiplier=dp_noise,
        dp_clipping_norm=dp_clip,
        tune_generalist=tune_generalist,
        tune_rounds=tune_rounds,
        tune_examples_per_site=tune_examples,
        policy_images=policy_images,
        tune_modes=tuple(tune_mode or ("gsco",)),
        tune_dp_noise_multiplier=tune_dp_noise,
        tune_dp_clipping_norm=tune_dp_clip,
    )
    progress = ConsoleProgress()
    # SIGTERM (a CI timeout, kill) unwinds like Ctrl-C, so every process started is stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    result = run_scenario(scenario, out, progress)
    progress.stage("writing the report")
    report = write_report(result, out)
    elapsed = time.monotonic() - progress.started
    progress.console.print(f"done in {elapsed / 60:.1f} min")
    _print_table(report, out)


def demo(
    out: Annotated[Path, typer.Option(help="Report folder.")] = Path("gsco-demo-report"),
    test_images: Annotated[int, typer.Option(min=0, help="Test images to evaluate.")] = 200,
    tune_generalist: Annotated[
        bool, typer.Option(help="Tune, sign and serve the generalist's LoRA adapter (FedAvg).")
    ] = True,
    epochs: Annotated[int, typer.Option(min=1, help="Epochs each hospital trains.")] = 5,
    minutes_per_site: Annotated[
        float, typer.Option(min=0.1, help="Training time budget per site.")
    ] = 3.0,
    generalist: Annotated[
        str,
        typer.Option(
            help="embedded (SmolLM2 on the CPU vLLM server, text only) | tiny-meddr (MedDr's "
            "architecture at tiny scale, random weights, served with MedDr's recipe: it sees "
            "the images; with --no-tune-generalist) | none | an OpenAI base URL."
        ),
    ] = "embedded",
) -> None:
    """The whole system on this machine: 3 hospitals on PneumoniaMNIST, registry, hub, generalist.

    Everything it starts (Flower's SuperLink, the registry, the hub, the CPU
    generalist) is stopped before it returns. A first look in a few minutes:
    ``gsco demo --epochs 1 --minutes-per-site 0.5 --test-images 20
    --no-tune-generalist --generalist none``.
    """
    typer.echo(
        "GSCo demo: 3 simulated hospitals train specialists on PneumoniaMNIST, sign and publish "
        "them; a hub verifies them and diagnoses the test split with the CPU generalist.",
        err=True,
    )
    simulate(
        dataset="pneumoniamnist",
        data=None,
        task_file=None,
        sites=3,
        partition="iid",
        backbone="tf_efficientnet_lite0",
        epochs=epochs,
        minutes_per_site=minutes_per_site,
        test_images=test_images,
        fault=None,
        generalist=generalist,
        generalist_down=False,
        fedavg_rounds=0,
        fedavg_local_epochs=1,
        dp_noise=0.0,
        dp_clip=1.0,
        tune_generalist=tune_generalist,
        tune_rounds=2,
        tune_examples=120,
        tune_mode=None,
        tune_dp_noise=0.0,
        tune_dp_clip=1.0,
        policy_images=200,
        seed=0,
        out=out,
    )
