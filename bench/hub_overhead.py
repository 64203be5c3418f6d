"""The hub's own overhead per request, at 1, 3 and 10 specialists, and its throughput.

Everything here is real: one small EfficientNet-Lite0 specialist is trained on
PneumoniaMNIST with ``gsco site train`` (1 epoch on 300 images: the runtime
cost of a model does not depend on how well it was trained), then re-signed
and published by 10 enrolled sites to a real registry on loopback. A real
``gsco hub serve`` process syncs them through TUF and serves them with
onnxruntime and faiss.

"Overhead" is everything but the generalist call: the hub runs without a
generalist and requests ask for ``gsco``, so each request does the HTTP
upload, decoding, every specialist, retrieval and the immediate ensemble
fallback, the access log and metrics. Client-side latency is measured per
request (p50/p95 over --requests sequential requests), then throughput at
several concurrencies. Writes bench/results/hub_overhead.json.

    python bench/hub_overhead.py [--requests 200]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import httpx
import numpy as np

from protocol import encode_png

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the servers are started as the tests start them
from tests.servers import start_hub, start_registry  # noqa: E402

GSCO = shutil.which("gsco") or str(Path(sys.executable).parent / "gsco")
COUNTS = (1, 3, 10)
CONCURRENCY = (1, 4, 16)


def _gsco(*args: str, home: Path | None = None) -> str:
    env = dict(os.environ, NO_COLOR="1")
    if home is not None:
        env["GSCO_SITE_HOME"] = str(home)
    result = subprocess.run([GSCO, *args], capture_output=True, text=True, env=env, check=False)
    if result.returncode != 0:
        raise SystemExit(f"gsco {' '.join(args)} failed:\n{result.stderr[-2000:]}")
    return result.stdout


def _wait_for_specialists(url: str, count: int) -> None:
    """Waits (up to 2 min) until the hub serves ``count`` pneumonia-cxr specialists."""
    for _ in range(600):
        try:
            if httpx.get(url + "/readyz").json()["tasks"].get("pneumonia-cxr") == count:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)


def _images(data: Path, count: int) -> list[bytes]:
    with np.load(data, allow_pickle=False) as archive:
        images = archive["test_images"][:count]
    return [encode_png(image[..., None]) for image in images]


def _percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def _measure(url: str, images: list[bytes], requests: int) -> dict[str, object]:
    latencies: list[float] = []
    stages: dict[str, list[float]] = {"decode": [], "specialists": [], "retrieval": []}
    with httpx.Client(base_url=url, timeout=120) as http:
        for number in range(requests + 5):
            started = time.perf_counter()
            answer = http.post(
                "/v1/diagnose",
                data={"task_id": "pneumonia-cxr", "mode": "gsco"},
                files={"image": ("x.png", images[number % len(images)], "image/png")},
            )
            elapsed = (time.perf_counter() - started) * 1000
            answer.raise_for_status()
            if number < 5:
                continue  # warm-up
            latencies.append(elapsed)
            timings = answer.json()["timings"]
            for stage in stages:
                stages[stage].append(float(timings[f"{stage}_ms"] or 0.0))
    return {
        "requests": requests,
        "p50_ms": round(_percentile(latencies, 50), 2),
        "p95_ms": round(_percentile(latencies, 95), 2),
        "mean_ms": round(statistics.fmean(latencies), 2),
        "server_stage_p50_ms": {k: round(_percentile(v, 50), 2) for k, v in stages.items()},
    }


def _throughput(url: str, images: list[bytes], concurrency: int, seconds: float) -> dict:
    deadline = time.monotonic() + seconds
    done = [0] * concurrency
    latencies: list[list[float]] = [[] for _ in range(concurrency)]

    def worker(index: int) -> None:
        with httpx.Client(base_url=url, timeout=120) as http:
            while time.monotonic() < deadline:
                started = time.perf_counter()
                answer = http.post(
                    "/v1/diagnose",
                    data={"task_id": "pneumonia-cxr", "mode": "gsco"},
                    files={"image": ("x.png", images[done[index] % len(images)], "image/png")},
                )
                if answer.status_code == 200:
                    done[index] += 1
                    latencies[index].append((time.perf_counter() - started) * 1000)

    started = time.monotonic()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(worker, range(concurrency)))
    elapsed = time.monotonic() - started
    flat = [x for chunk in latencies for x in chunk]
    return {
        "concurrency": concurrency,
        "requests": sum(done),
        "rps": round(sum(done) / elapsed, 2),
        "p50_ms": round(_percentile(flat, 50), 2),
        "p95_ms": round(_percentile(flat, 95), 2),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=20.0, help="per throughput run")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args()
    from site_agent.data import find_medmnist

    data = find_medmnist("pneumoniamnist")
    results: dict[str, object] = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        print("training one small lite0 specialist ...", file=sys.stderr)
        _gsco("site", "init", "--site-id", "site-00", home=work / "site-00")
        trained = work / "trained"
        _gsco(
            "site", "train", "--task", "pneumonia-cxr", "--data", str(data),
            "--backbone", "tf_efficientnet_lite0", "--epochs", "1",
            "--max-train-images", "300", "--max-eval-images", "100",
            "--out", str(trained), "--no-sign", home=work / "site-00",
        )  # fmt: skip
        registry = start_registry(work / "registry")
        address = registry.address
        try:
            client = registry.client()
            published = 0
            images = _images(data, 32)
            for count in COUNTS:
                while published < count:
                    site = f"site-{published:02d}"
                    home = work / site
                    if not home.exists():
                        _gsco("site", "init", "--site-id", site, home=home)
                    client.enroll(site, (home / "keys" / "site.pub").read_bytes())
                    bundle = work / f"bundle-{site}"
                    shutil.copytree(trained, bundle)
                    card = json.loads((bundle / "card.json").read_text())
                    card["site_id"] = site
                    (bundle / "card.json").write_text(json.dumps(card))
                    _gsco("site", "sign", str(bundle), home=home)
                    _gsco("site", "publish", str(bundle), "--registry", address, home=home)
                    published += 1
                print(f"{count} specialists: measuring ...", file=sys.stderr)
                hub = start_hub(
                    registry,
                    work / f"hub-{count}",
                    "--allow-anonymous",
                    "--no-generalist",
                    "--max-queue",
                    "64",
                )
                url = hub.url
                try:
                    _wait_for_specialists(url, count)
                    entry: dict[str, object] = {"specialists": count}
                    entry["sequential"] = _measure(url, images, args.requests)
                    entry["throughput"] = [
                        _throughput(url, images, c, args.seconds) for c in CONCURRENCY
                    ]
                    results[str(count)] = entry
                    print(json.dumps(entry), file=sys.stderr)
                finally:
                    hub.stop()
            client.close()
        finally:
            registry.stop()
    import onnxruntime

    report = {
        "benchmark": "hub_overhead",
        "what": "client-side latency of POST /v1/diagnose in gsco mode with no generalist "
        "(HTTP, decode, all specialists, retrieval, fallback, access log); 28 px PNG inputs",
        "model": "tf_efficientnet_lite0, 64 px input, 1280-d embedding, prototype index",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "onnxruntime": onnxruntime.__version__,
            "providers": onnxruntime.get_available_providers(),
        },
        "results": results,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "hub_overhead.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
