"""One federated run on the consortium's SuperLink: ``flwr run`` of the GSCo app, streamed.

The app is :mod:`fedapp`'s deployed ServerApp and ClientApp (the FAB in
``fedapp/flower_app``), the same app ``gsco simulate`` runs in Flower's
simulation runtime; here the SuperLink is the consortium's and each SuperNode
is a hospital's (``gsco site join``), taking its places from its own node config.
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
from protocol import RunRequest, flat_toml, flower_command, flower_environment

__all__ = ["RunResult", "recent_runs", "run_federation"]


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
    from fedapp import APP_DIR, FLOWER_QUIET_ENV

    runs = consortium.root / "runs"
    runs.mkdir(exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    results = (runs / f"{stamp}.json").resolve()
    config_file = runs / f"{stamp}.run-config.toml"
    run_config = {"results-file": str(results), **request.to_config()}
    config_file.write_text(flat_toml(run_config), encoding="utf-8")
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
    if request.tune.rounds and error is None:
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
