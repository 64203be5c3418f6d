"""One federated run on the consortium's SuperLink: ``flwr run`` of the GSCo app, streamed.

The app is the same ServerApp and ClientApp that ``gsco simulate`` runs in
Flower's simulation runtime (``simulations._flower``); here the SuperLink is
the consortium's and each SuperNode is a hospital's (``gsco site join``).
Each site trains, signs and publishes its specialist; with FedAvg rounds, the
sites then co-train one shared specialist and each publishes it; with tuning
rounds, they then tune the generalist's LoRA adapter (FedAvg), fit its
arbitration policy without their cases meeting, and one publishes the
adapter with the policy in its card. The ServerApp writes what each did to
``ROOT/runs/<time>.json``.
"""

from __future__ import annotations

import json
import subprocess
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from federation._consortium import Consortium
from federation.errors import SuperLinkError
from protocol import flat_toml, flower_command, flower_environment

__all__ = ["RunRequest", "RunResult", "recent_runs", "run_federation"]


@dataclass(frozen=True)
class RunRequest:
    """What the consortium asks its sites to train."""

    task: str
    min_sites: int = 1
    wait_s: float = 120.0
    backbone: str = "tf_efficientnet_lite0"
    epochs: int = 5
    max_minutes: float | None = None
    batch_size: int = 32
    learning_rate: float = 1e-3
    input_size: int | None = None
    max_eval_images: int | None = None
    seed: int = 0
    timeout_s: float = 3600.0
    # FedAvg co-training of one shared specialist after the sites' own (0 rounds: none);
    # the sites' data must be MedMNIST-layout .npz files, as in gsco simulate.
    fedavg_rounds: int = 0
    fedavg_local_epochs: int = 1
    dp_noise_multiplier: float = 0.0  # DP-FedAvg (server-side fixed clipping); 0: no DP
    dp_clipping_norm: float = 1.0
    dp_delta: float = 1e-5
    # Then the generalist's LoRA adapter, tuned over the sites (0 rounds: none); each site
    # needs --trusted-root and --generalist-model at join, and .npz data.
    tune_rounds: int = 0
    tune_local_epochs: int = 1
    tune_examples_per_site: int = 120
    tune_policy_cases_per_site: int = 60  # 0: no policy (the hub then weighs nothing)
    tune_modes: tuple[str, ...] = ("gsco",)
    # How every FedAvg combines updates (None: trimmed-mean from 3 sites up, else fedavg).
    aggregation: str | None = None

    def run_config(self, results: Path) -> dict[str, object]:
        """The Flower run config (keys of ``simulations/flower_app/pyproject.toml``)."""
        return {
            "results-file": str(results),
            "task": self.task,
            "min-sites": self.min_sites,
            "wait-s": float(self.wait_s),
            "timeout-s": float(self.timeout_s),
            "backbone": self.backbone,
            "epochs": self.epochs,
            "max-minutes": float(self.max_minutes or 0.0),
            "batch-size": self.batch_size,
            "learning-rate": float(self.learning_rate),
            "input-size": self.input_size or 0,
            "max-eval-images": self.max_eval_images or 0,
            "seed": self.seed,
            "fedavg-rounds": self.fedavg_rounds,
            "fedavg-local-epochs": self.fedavg_local_epochs,
            "dp-noise-multiplier": float(self.dp_noise_multiplier),
            "dp-clipping-norm": float(self.dp_clipping_norm),
            "dp-delta": float(self.dp_delta),
            "tune-rounds": self.tune_rounds,
            "tune-local-epochs": self.tune_local_epochs,
            "tune-examples-per-site": self.tune_examples_per_site,
            "tune-policy-cases-per-site": self.tune_policy_cases_per_site,
            "tune-modes": ",".join(self.tune_modes),
            "aggregation": self.aggregation or "",
        }


@dataclass(frozen=True)
class RunResult:
    """Where the run's results are and what each site did."""

    path: Path
    sites: dict[str, dict[str, Any]]
    error: str | None
    adapter: dict[str, Any] | None = None  # the adapter stage's outcome, when it ran


def run_federation(
    consortium: Consortium,
    request: RunRequest,
    *,
    on_line: Callable[[str], None] = lambda line: None,
) -> RunResult:
    """Submits the GSCo app to the consortium's SuperLink and waits for it, streaming its log.

    ``on_line`` receives each ``gsco:`` line of the run's log.

    Raises:
        SuperLinkError: ``flwr run`` failed, or the run wrote no results.
    """
    from simulations._compat import FLOWER_QUIET_ENV
    from simulations._runtime import APP_DIR

    runs = consortium.root / "runs"
    runs.mkdir(exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    results = (runs / f"{stamp}.json").resolve()
    config_file = runs / f"{stamp}.run-config.toml"
    config_file.write_text(flat_toml(request.run_config(results)), encoding="utf-8")
    command = [
        flower_command("flwr"),
        "run",
        str(APP_DIR),
        consortium.config.name,
        "--run-config",
        str(config_file),
        "--stream",
    ]
    env = flower_environment(consortium.flwr_home, FLOWER_QUIET_ENV)
    process = subprocess.Popen(  # noqa: S603 - Flower's CLI, our own fixed arguments
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
    )
    assert process.stdout is not None
    tail: list[str] = []
    # The whole run is bounded, even when flwr prints nothing: waiting for the sites, their
    # training, and five minutes for Flower's own start and stop.
    limit_s = request.wait_s + request.timeout_s + 300
    watchdog = threading.Timer(limit_s, process.kill)
    watchdog.start()
    try:
        for line in process.stdout:
            line = line.rstrip("\n")
            if "gsco:" in line:
                on_line(line[line.index("gsco:") :])
            tail = [*tail[-29:], line]
    finally:
        watchdog.cancel()
    if process.wait() != 0 or not results.is_file():
        raise SuperLinkError(
            f"flwr run exited with {process.returncode} and wrote no results:\n" + "\n".join(tail)
        )
    answer = json.loads(results.read_text())
    if "error" in answer and isinstance(answer["error"], str):
        return RunResult(results, {}, answer["error"])
    sites = _site_outcomes(answer)
    summary = answer.get("_run")  # the ServerApp's own count of the sites that published
    published = summary.get("published") if isinstance(summary, dict) else None
    if not isinstance(published, int) or isinstance(published, bool):
        raise SuperLinkError(f"{results}: the run's results have no '_run' summary")
    error = None
    if published < request.min_sites:
        error = (
            f"{published} sites published, fewer than the {request.min_sites} the run needs "
            f"(--min-sites)"
        )
    adapter = answer.get("_adapter")
    if request.tune_rounds and error is None:
        if not isinstance(adapter, dict):
            error = "the generalist's adapter was not tuned (no site published a specialist)"
        elif not adapter.get("published"):
            error = f"the generalist's adapter was not published: {adapter.get('error', '?')}"
    return RunResult(results, sites, error, adapter if isinstance(adapter, dict) else None)


def _site_outcomes(answer: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """What each site did, from a run's results (``_run`` and ``_adapter`` are the run's own)."""
    return {str(k): v for k, v in answer.items() if isinstance(v, dict) and not k.startswith("_")}


def recent_runs(consortium: Consortium) -> list[str]:
    """One line per run this consortium started, latest first: when, task, what the sites did."""
    lines = []
    for results in sorted((consortium.root / "runs").glob("*Z.json"), reverse=True):
        config = results.with_name(results.name.replace(".json", ".run-config.toml"))
        task = "?"
        if config.is_file():
            for line in config.read_text(encoding="utf-8").splitlines():
                if line.startswith('"task" = '):
                    task = json.loads(line.split(" = ", 1)[1])
        try:
            answer = json.loads(results.read_text())
        except (OSError, json.JSONDecodeError):
            lines.append(f"{results.stem}  {task}: results unreadable")
            continue
        if not isinstance(answer, dict):
            continue
        if isinstance(answer.get("error"), str):
            lines.append(f"{results.stem}  {task}: {answer['error']}")
            continue
        statuses = [v.get("status") for v in _site_outcomes(answer).values()]
        counts = {s: statuses.count(s) for s in sorted({str(s) for s in statuses})}
        lines.append(f"{results.stem}  {task}: " + ", ".join(f"{n} {s}" for s, n in counts.items()))
    return lines
