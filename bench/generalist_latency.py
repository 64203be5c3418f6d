"""Generalist latency (p50/p95) and throughput at concurrency 1, 4 and 16.

Uses the embedded CPU generalist (vLLM + SmolLM2; started if needed, stopped
afterwards if this script started it) or --url for another OpenAI-compatible
server. Sends GSCo prompts for the pneumonia-cxr task, constrained to its
labels, and writes bench/results/generalist_latency.json.
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="OpenAI base URL [default: the embedded generalist]")
    parser.add_argument("--model", default=MODEL_NAME)
    parser.add_argument("--requests-per-level", type=int, default=32)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args()
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
