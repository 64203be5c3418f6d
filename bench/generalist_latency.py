"""Generalist latency (p50/p95) and throughput at concurrency 1, 4 and 16, or per configuration.

Uses the embedded CPU generalist (vLLM + SmolLM2; started if needed, stopped
afterwards if this script started it) or --url for another OpenAI-compatible
server. Sends GSCo prompts for the pneumonia-cxr task, constrained to its
labels, and writes bench/results/generalist_latency.json.

``--compare`` starts the embedded server once per configuration, one after
the other (dtype bfloat16 or float32; torch.compile or ``--enforce-eager``;
and the hub's own: the dtype chosen from this CPU's flags with LoRA on),
records each one's start time (process start to the first answer of
``/v1/models``) and its latency and throughput at concurrency 1 and 4 with
the same GSCo prompt, and writes bench/results/generalist_configs.json. A
running embedded server is stopped first.

    python bench/generalist_latency.py --compare --requests-per-level 16
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

from generalist import (
    MODEL_NAME,
    ArbitrationRequest,
    EmbeddedServer,
    MoedEvidence,
    OpenAICompatibleBackend,
    OpenAIConfig,
    RadEvidence,
    cpu_dtype,
)
from protocol import Mode
from site_agent.data import default_catalog

ROOT = Path(__file__).resolve().parents[1]


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def _level(url: str, model: str, concurrency: int, requests: int) -> dict[str, float]:
    task = default_catalog().get("pneumonia-cxr").task
    request = ArbitrationRequest(
        task,
        Mode.GSCO,
        (MoedEvidence("pneumonia", 0.8), MoedEvidence("normal", 0.6)),
        (RadEvidence("pneumonia", 0.93), RadEvidence("normal", 0.9)),
    )
    backend = OpenAICompatibleBackend(
        OpenAIConfig(url, model, timeout_s=300, max_concurrency=concurrency)
    )
    latencies: list[float] = []

    async def client(count: int) -> None:
        """One client: sends its requests one after another (no queueing in the backend)."""
        for _ in range(count):
            started = time.perf_counter()
            await backend.arbitrate(request)
            latencies.append((time.perf_counter() - started) * 1000)

    try:
        await client(1)  # warm-up, not counted
        latencies.clear()
        started = time.perf_counter()
        share, extra = divmod(requests, concurrency)
        await asyncio.gather(*(client(share + (i < extra)) for i in range(concurrency)))
        wall = time.perf_counter() - started
    finally:
        await backend.aclose()
    return {
        "concurrency": concurrency,
        "requests": requests,
        "p50_ms": statistics.median(latencies),
        "p95_ms": _percentile(latencies, 0.95),
        "throughput_rps": requests / wall,
    }


#: (name, dtype, LoRA, eager); dtype None: the one chosen from this CPU's flags (the hub's).
CONFIGS = (
    ("bfloat16, compiled", "bfloat16", False, False),
    ("float32, compiled", "float32", False, False),
    ("bfloat16, eager", "bfloat16", False, True),
    ("float32, eager", "float32", False, True),
    ("the hub's: chosen dtype, LoRA on (eager)", None, True, False),
)


def _compare(requests: int, out: Path) -> int:
    """Each configuration started fresh, timed, and measured with the same prompt."""
    server = EmbeddedServer()
    server.stop()
    rows = []
    for name, dtype, lora, eager in CONFIGS:
        started = time.monotonic()
        state = server.start(lora=lora, eager=eager, dtype=dtype)
        start_s = time.monotonic() - started
        try:
            levels = [
                asyncio.run(_level(state.url, MODEL_NAME, c, max(requests, c))) for c in (1, 4)
            ]
        finally:
            server.stop()
        row = {
            "config": name,
            "dtype": state.dtype,
            "lora": lora,
            "eager": eager or lora,  # vLLM turns torch.compile off on the CPU with LoRA
            "start_s": round(start_s, 1),
            "levels": levels,
        }
        print(json.dumps(row), flush=True)
        rows.append(row)
    slowest = max(r["levels"][0]["p50_ms"] for r in rows)  # type: ignore[index]
    report = {
        "benchmark": "generalist_configs",
        "time": datetime.now(UTC).isoformat(),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "cpu_dtype": cpu_dtype(),
        "prompt": "GSCo mode, pneumonia-cxr, two MoED and two RAD evidence lines",
        "configs": rows,
        "speedup_p50_c1_vs_slowest": {
            r["config"]: round(slowest / r["levels"][0]["p50_ms"], 2)  # type: ignore[index]
            for r in rows
        },
    }
    out.mkdir(parents=True, exist_ok=True)
    path = out / "generalist_configs.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {path}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="OpenAI base URL [default: the embedded generalist]")
    parser.add_argument("--model", default=MODEL_NAME)
    parser.add_argument("--requests-per-level", type=int, default=32)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument("--compare", action="store_true", help="compare server configurations")
    args = parser.parse_args()
    if args.compare:
        return _compare(args.requests_per_level, args.out)
    server = EmbeddedServer()
    started_here = args.url is None and server.state() is None
    url = args.url or server.start().url
    try:
        levels = [
            asyncio.run(_level(url, args.model, c, max(args.requests_per_level, c)))
            for c in (1, 4, 16)
        ]
    finally:
        if started_here:
            server.stop()
    report = {
        "benchmark": "generalist_latency",
        "time": datetime.now(UTC).isoformat(),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "server": {"url": url, "model": args.model},
        "levels": levels,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "generalist_latency.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    for level in levels:
        print(json.dumps(level))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
