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

``--adapter-ops`` measures what an evidence-tuned LoRA adapter costs: the hub's
configuration is started twice, with vLLM's own CPU LoRA ops
(``GSCO_VLLM_LORA_OPS=reference``) and with the grouped ones the embedded server
installs (generalist/_vllm_cpu_launch.py); each time the base model and an adapter
of the default recipe (peft, rank 8 on q/k/v/o of the top 6 layers, random
weights: the cost does not depend on them) answer the same GSCo prompt at
concurrency 1 and 4. Writes bench/results/generalist_lora_ops.json.

    python bench/generalist_latency.py --compare --requests-per-level 16
    python bench/generalist_latency.py --adapter-ops --requests-per-level 16
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


def _random_adapter(model_dir: Path, out: Path) -> None:
    """A peft adapter of the default recipe's shape with random weights (the cost's)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from site_agent.adapter import AdapterRecipe

    recipe = AdapterRecipe()
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    layers = int(base.config.num_hidden_layers)
    top = recipe.last_layers or layers
    config = LoraConfig(
        r=recipe.rank,
        lora_alpha=recipe.alpha,
        target_modules=list(recipe.target_modules),
        layers_to_transform=list(range(layers - top, layers)),
        lora_dropout=0.0,
        bias="none",
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(base, config)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:  # peft starts B at zero: an adapter that does nothing
                parameter.normal_(0.0, 0.01)
    model.save_pretrained(str(out))


def _adapter_ops(requests: int, out: Path) -> int:
    """The hub's configuration with vLLM's LoRA ops, then with the grouped ones."""
    import tempfile

    server = EmbeddedServer()
    server.stop()
    server.prepare()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        adapter = Path(tmp) / "adapter"
        _random_adapter(server.model_dir, adapter)
        for ops in ("reference", "grouped"):
            os.environ["GSCO_VLLM_LORA_OPS"] = ops  # the server inherits the environment
            state = server.start()
            try:
                backend = OpenAICompatibleBackend(OpenAIConfig(state.url, MODEL_NAME))
                backend.load_adapter("bench-adapter", str(adapter))
                row: dict[str, object] = {"lora_ops": ops, "dtype": state.dtype}
                for model in (MODEL_NAME, "bench-adapter"):
                    key = "base model" if model == MODEL_NAME else "adapter"
                    row[key] = [
                        asyncio.run(_level(state.url, model, c, max(requests, c))) for c in (1, 4)
                    ]
            finally:
                server.stop()
                os.environ.pop("GSCO_VLLM_LORA_OPS", None)
            print(json.dumps(row), flush=True)
            rows.append(row)
    reference, grouped = (r["adapter"] for r in rows)
    report = {
        "benchmark": "generalist_lora_ops",
        "time": datetime.now(UTC).isoformat(),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "prompt": "GSCo mode, pneumonia-cxr, two MoED and two RAD evidence lines",
        "adapter": "peft LoRA of the default recipe (site_agent.adapter.AdapterRecipe), "
        "random weights",
        "runs": rows,
        "adapter_speedup": {
            "p50_c1": round(reference[0]["p50_ms"] / grouped[0]["p50_ms"], 2),  # type: ignore[index]
            "throughput_c4": round(
                grouped[1]["throughput_rps"] / reference[1]["throughput_rps"],  # type: ignore[index]
                2,
            ),
        },
    }
    out.mkdir(parents=True, exist_ok=True)
    path = out / "generalist_lora_ops.json"
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
    parser.add_argument(
        "--adapter-ops", action="store_true", help="an adapter's cost, vLLM's LoRA ops and ours"
    )
    args = parser.parse_args()
    if args.compare:
        return _compare(args.requests_per_level, args.out)
    if args.adapter_ops:
        return _adapter_ops(args.requests_per_level, args.out)
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
