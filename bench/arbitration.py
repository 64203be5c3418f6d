"""Arbitration: zero-shot, calibrated, adapter and policy, on PneumoniaMNIST and BreastMNIST.

For each dataset, one full ``gsco simulate --tune-generalist`` run (the sites
train and publish specialists, tune the generalist's LoRA adapter with
FedAvg, the hub serves it) and the report's rows with their 95% bootstrap
intervals, the tuning time and peak memory per site. Then the embedded vLLM
server's start time and p50 latency on the GSCo prompt with LoRA off
(compiled) and on (eager; the base model and the tuned adapter).

Writes bench/results/arbitration.json. Takes 30-45 minutes on a 2-core CPU.

    python bench/arbitration.py [--datasets pneumoniamnist breastmnist] [--test-images 200]
    python bench/arbitration.py --option-order-only ADAPTER_BUNDLE   # the reversal checks alone
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
ROWS = (
    "voting",
    "ensemble",
    "gsco (zero-shot)",
    "gsco (calibrated)",
    "gsco (adapter)",
    "gsco",
    "moed",
    "rad",
    "generalist",
)
SETTINGS = {
    "pneumoniamnist": {"sites": 3, "partition": "iid", "max_minutes_per_site": 3.0},
    "breastmnist": {"sites": 5, "partition": "dirichlet:0.5", "max_minutes_per_site": 2.0},
}


class _Quiet:
    def stage(self, text: str) -> None:
        print(f"[arbitration] {text}", file=sys.stderr, flush=True)

    def line(self, text: str) -> None:
        pass

    def evaluated(self, done: int, total: int) -> None:
        pass


def _run_dataset(dataset: str, out: Path, test_images: int) -> dict[str, Any]:
    from simulations import Scenario, run_scenario, write_report

    scenario = Scenario(
        dataset=dataset,
        test_images=test_images,
        tune_generalist=True,
        **SETTINGS[dataset],  # type: ignore[arg-type]
    )
    started = time.monotonic()
    result = run_scenario(scenario, out / dataset, _Quiet())
    report = write_report(result, out / dataset)
    methods = {m["method"]: m for m in report["methods"]}
    adapter = report.get("adapter") or {}
    return {
        "scenario": report["scenario"],
        "test_images": report["test_images"],
        "seconds": round(time.monotonic() - started, 1),
        "timings_s": report["timings_s"],
        "methods": {
            name: {
                "accuracy": methods[name]["accuracy"],
                "macro_auc": methods[name]["macro_auc"],
                "macro_f1": methods[name]["macro_f1"],
            }
            for name in ROWS
            if name in methods
        },
        "policy": report.get("arbitration_policy"),
        "overturned_ensemble": report.get("overturned_ensemble"),
        "adapter": {
            "bundle_digest": adapter.get("digest"),
            "tuning_seconds": adapter.get("tuning_seconds"),
            "examples_per_site": adapter.get("examples_per_site"),
            "losses": adapter.get("losses"),
            "per_site": adapter.get("per_site"),
            "refused": adapter.get("refused") or adapter.get("error"),
        },
        "bundle": adapter.get("bundle"),
    }


async def _p50(url: str, model: str, n: int) -> float:
    from generalist import (
        ArbitrationRequest,
        MoedEvidence,
        OpenAICompatibleBackend,
        OpenAIConfig,
        RadEvidence,
    )
    from protocol import Mode
    from site_agent.data import default_catalog

    task = default_catalog().get("pneumonia-cxr").task
    request = ArbitrationRequest(
        task,
        Mode.GSCO,
        (
            MoedEvidence("pneumonia", 0.81),
            MoedEvidence("normal", 0.62),
            MoedEvidence("pneumonia", 0.7),
        ),
        tuple(RadEvidence(label, s) for label, s in [("pneumonia", 0.93), ("normal", 0.9)] * 2),
        adapter=None if model == "base" else model,
    )
    backend = OpenAICompatibleBackend(OpenAIConfig(url, "smollm2-135m-instruct", timeout_s=300))
    latencies = []
    try:
        await backend.arbitrate(request)  # warm-up
        for _ in range(n):
            started = time.perf_counter()
            await backend.arbitrate(request)
            latencies.append((time.perf_counter() - started) * 1000)
    finally:
        await backend.aclose()
    return round(statistics.median(latencies), 1)


async def _option_order(
    url: str, adapter: str | None, cases: int, *, averaged: bool = False
) -> dict[str, Any]:
    """How often reversing the option order in the prompt changes the calibrated decision.

    Synthetic MoED + RAD evidence over a grid of agreement levels; each case is
    asked with the task's label order and with it reversed, each order with
    its own content-free calibration, as the hub does. ``averaged``: through
    :class:`generalist.ReversedOrderAveraging`, as the hub asks by default.
    """
    import random

    from generalist import (
        ArbitrationRequest,
        MoedEvidence,
        OpenAICompatibleBackend,
        OpenAIConfig,
        RadEvidence,
        ReversedOrderAveraging,
        content_free,
    )
    from protocol import Mode
    from site_agent.data import default_catalog

    task = default_catalog().get("pneumonia-cxr").task
    reversed_task = task.model_copy(update={"labels": tuple(reversed(task.labels))})
    plain = OpenAICompatibleBackend(OpenAIConfig(url, "smollm2-135m-instruct", timeout_s=300))
    backend: Any = ReversedOrderAveraging(plain) if averaged else plain
    decisions: dict[str, list[str]] = {"forward": [], "reversed": []}
    raw: dict[str, list[str]] = {"forward": [], "reversed": []}
    try:
        for name, spec in (("forward", task), ("reversed", reversed_task)):
            prior = await backend.arbitrate(ArbitrationRequest(spec, Mode.GSCO, adapter=adapter))
            calibration = content_free(spec.labels, prior.scores)
            local = random.Random(0)  # the same cases in both orders
            for _ in range(cases):
                moed = tuple(
                    MoedEvidence(local.choice(task.labels), round(local.uniform(0.5, 0.99), 2))
                    for _ in range(3)
                )
                rad = tuple(
                    RadEvidence(local.choice(task.labels), round(local.uniform(0.8, 0.99), 2))
                    for _ in range(3)
                )
                answer = await backend.arbitrate(
                    ArbitrationRequest(spec, Mode.GSCO, moed, rad, adapter=adapter)
                )
                raw[name].append(answer.label)
                scores = calibration.apply(answer.scores) if answer.scores else None
                decisions[name].append(
                    max(scores, key=scores.__getitem__) if scores else answer.label
                )
    finally:
        await backend.aclose()
    flips = sum(a != b for a, b in zip(decisions["forward"], decisions["reversed"], strict=True))
    raw_flips = sum(a != b for a, b in zip(raw["forward"], raw["reversed"], strict=True))
    return {
        "cases": cases,
        "calibrated_decisions_changed": flips,
        "calibrated_changed_fraction": round(flips / cases, 3),
        "generated_labels_changed": raw_flips,
        "generated_changed_fraction": round(raw_flips / cases, 3),
    }


def _serving(bundle: str | None, requests: int) -> dict[str, Any]:
    """Start time and p50 latency with LoRA off and on (restarts the embedded server)."""
    from generalist import EmbeddedServer, OpenAICompatibleBackend, OpenAIConfig, cpu_dtype

    server = EmbeddedServer()
    server.stop()
    found: dict[str, Any] = {"dtype": cpu_dtype()}
    for lora in (False, True):
        started = time.monotonic()
        state = server.start(timeout_s=1800, lora=lora)
        entry: dict[str, Any] = {"start_s": round(time.monotonic() - started, 1)}
        entry["p50_ms_base"] = asyncio.run(_p50(state.url, "base", requests))
        if lora:
            for averaged, key in ((False, "option_order_base"), (True, "option_order_base_avg")):
                found[key] = asyncio.run(_option_order(state.url, None, 40, averaged=averaged))
        if lora and bundle:
            backend = OpenAICompatibleBackend(OpenAIConfig(state.url, "smollm2-135m-instruct"))
            backend.load_adapter("bench-adapter", str(Path(bundle).resolve()))
            entry["p50_ms_adapter"] = asyncio.run(_p50(state.url, "bench-adapter", requests))
            for averaged, key in (
                (False, "option_order_adapter"),
                (True, "option_order_adapter_avg"),
            ):
                found[key] = asyncio.run(
                    _option_order(state.url, "bench-adapter", 40, averaged=averaged)
                )
        found["lora_on" if lora else "lora_off"] = entry
        server.stop()
    server.start(timeout_s=900)  # leave it as the project runs it: LoRA on
    return found


def _option_orders_only(bundle: Path) -> None:
    """The four reversal checks on the running embedded server, merged into the results."""
    from generalist import EmbeddedServer, OpenAICompatibleBackend, OpenAIConfig

    state = EmbeddedServer().state() or EmbeddedServer().start(timeout_s=900)
    backend = OpenAICompatibleBackend(OpenAIConfig(state.url, "smollm2-135m-instruct"))
    backend.load_adapter("bench-adapter", str(bundle.resolve()))
    found: dict[str, Any] = {"option_order_date": datetime.now(UTC).isoformat(timespec="seconds")}
    for adapter, name in ((None, "base"), ("bench-adapter", "adapter")):
        for averaged in (False, True):
            key = f"option_order_{name}" + ("_avg" if averaged else "")
            found[key] = asyncio.run(_option_order(state.url, adapter, 40, averaged=averaged))
            print(key, found[key], file=sys.stderr, flush=True)
    target = ROOT / "bench" / "results" / "arbitration.json"
    results = json.loads(target.read_text()) if target.is_file() else {"benchmark": "arbitration"}
    results.setdefault("serving", {}).update(found)
    target.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {target}", file=sys.stderr)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--test-images", type=int, default=200)
    parser.add_argument("--latency-requests", type=int, default=20)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "arbitration")
    parser.add_argument("--skip-serving", action="store_true")
    parser.add_argument(
        "--option-order-only",
        metavar="ADAPTER_BUNDLE",
        type=Path,
        help="only the option-order reversal checks (base model and this adapter, each with "
        "and without averaging) against the running embedded server; merged into the JSON",
    )
    args = parser.parse_args()
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    if args.option_order_only is not None:
        _option_orders_only(args.option_order_only)
        return
    results: dict[str, Any] = {
        "benchmark": "arbitration",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
        "datasets": {},
    }
    target = ROOT / "bench" / "results" / "arbitration.json"
    if target.is_file() and set(args.datasets) != set(SETTINGS):
        # A partial rerun keeps the other datasets' earlier results (each with its own date).
        earlier = json.loads(target.read_text())
        for name, found in earlier.get("datasets", {}).items():
            if name not in args.datasets:
                results["datasets"][name] = {"date": earlier.get("date"), **found}
    bundle = None
    for dataset in args.datasets:
        found = _run_dataset(dataset, args.out, args.test_images)
        bundle = bundle or found.pop("bundle")
        found.pop("bundle", None)
        results["datasets"][dataset] = found
    if not args.skip_serving:
        results["serving"] = _serving(bundle, args.latency_requests)
    target.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))
    print(f"wrote {target}", file=sys.stderr)


if __name__ == "__main__":
    main()
