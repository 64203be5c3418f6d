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
several concurrencies. The load generator is light (http.client, request bodies
encoded once), as it shares the machine's cores with the hub. Writes
bench/results/hub_overhead.json.

In the same run, the same models are measured in plain onnxruntime (the hub's
session options), as the ceiling the hub is held to: unbatched (one image through
every specialist, sessions in parallel as the hub runs them) and batched (16 images
per run, every session once per round: the measure the performance issue was filed
with), plus a faiss search per specialist. The report gives the ratios the
performance issue asks for: the hub's throughput at concurrency 16 against raw
batched onnxruntime, and its p50 at concurrency 1 against raw unbatched onnxruntime
plus retrieval; and the hub with dynamic batching off (--max-batch 1) for comparison.
It also gives the throughput against a stricter ceiling, every worker thread running
batches all the time (``batched_16_every_worker``): with one specialist the rounds
use one core, the hub can use them all.

    python bench/hub_overhead.py [--requests 200]
"""

from __future__ import annotations

import argparse
import http.client
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


_BOUNDARY = "gsco-bench-boundary"


def _multipart(image: bytes) -> bytes:
    """The request body, encoded once: the load generator must not be what is measured."""
    fields = {"task_id": "pneumonia-cxr", "mode": "gsco"}
    header = '--{}\r\nContent-Disposition: form-data; name="{}"\r\n\r\n{}\r\n'
    parts = [header.format(_BOUNDARY, name, value).encode() for name, value in fields.items()]
    parts.append(
        f'--{_BOUNDARY}\r\nContent-Disposition: form-data; name="image"; filename="x.png"\r\n'
        "Content-Type: image/png\r\n\r\n".encode()
        + image
        + b"\r\n"
    )
    parts.append(f"--{_BOUNDARY}--\r\n".encode())
    return b"".join(parts)


class _Client:
    """One keep-alive connection (http.client: a light client, so that on a machine
    shared with the hub most of the CPU goes to the hub, not to the load generator)."""

    def __init__(self, url: str) -> None:
        host, port = url.removeprefix("http://").rsplit(":", 1)
        self._connection = http.client.HTTPConnection(host, int(port), timeout=120)

    def diagnose(self, body: bytes) -> tuple[int, bytes]:
        self._connection.request(
            "POST",
            "/v1/diagnose",
            body=body,
            headers={"Content-Type": f"multipart/form-data; boundary={_BOUNDARY}"},
        )
        response = self._connection.getresponse()
        return response.status, response.read()

    def close(self) -> None:
        self._connection.close()


def _measure(url: str, bodies: list[bytes], requests: int) -> dict[str, object]:
    latencies: list[float] = []
    stages: dict[str, list[float]] = {"decode": [], "specialists": [], "retrieval": []}
    client = _Client(url)
    try:
        for number in range(requests + 5):
            started = time.perf_counter()
            status, answer = client.diagnose(bodies[number % len(bodies)])
            elapsed = (time.perf_counter() - started) * 1000
            if status != 200:
                raise SystemExit(f"the hub answered {status}: {answer[:500]!r}")
            if number < 5:
                continue  # warm-up
            latencies.append(elapsed)
            timings = json.loads(answer)["timings"]
            for stage in stages:
                stages[stage].append(float(timings[f"{stage}_ms"] or 0.0))
    finally:
        client.close()
    return {
        "requests": requests,
        "p50_ms": round(_percentile(latencies, 50), 2),
        "p95_ms": round(_percentile(latencies, 95), 2),
        "mean_ms": round(statistics.fmean(latencies), 2),
        "server_stage_p50_ms": {k: round(_percentile(v, 50), 2) for k, v in stages.items()},
    }


def _throughput(url: str, bodies: list[bytes], concurrency: int, seconds: float) -> dict:
    deadline = time.monotonic() + seconds
    done = [0] * concurrency
    latencies: list[list[float]] = [[] for _ in range(concurrency)]

    def worker(index: int) -> None:
        client = _Client(url)
        try:
            while time.monotonic() < deadline:
                started = time.perf_counter()
                status, _ = client.diagnose(bodies[(index + done[index]) % len(bodies)])
                if status == 200:
                    done[index] += 1
                    latencies[index].append((time.perf_counter() - started) * 1000)
        finally:
            client.close()

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


def _raw_onnxruntime(bundle: Path, count: int, data: Path, seconds: float) -> dict[str, float]:
    """Plain onnxruntime and faiss on ``count`` copies of the bundle's model, no hub."""
    import faiss
    import onnxruntime as ort

    from protocol import SpecialistCard, load_index, preprocess

    card = SpecialistCard.parse((bundle / "card.json").read_bytes())
    model = (bundle / "model.onnx").read_bytes()
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1  # what the hub's sessions use (hub._runtime)
    options.inter_op_num_threads = 1
    sessions = [
        ort.InferenceSession(model, sess_options=options, providers=["CPUExecutionProvider"])
        for _ in range(count)
    ]
    with np.load(data, allow_pickle=False) as archive:
        pixels = archive["test_images"][:64]
    inputs = preprocess(pixels[..., None], card.preprocessing)
    index_rows = load_index((bundle / "index.npz").read_bytes())["embeddings"]
    index = faiss.IndexFlatIP(index_rows.shape[1])
    index.add(np.ascontiguousarray(index_rows, dtype=np.float32))
    workers = os.cpu_count() or 1

    def run(session: object, batch: np.ndarray) -> np.ndarray:
        return session.run(["logits", "embedding"], {"image": batch})[1]  # type: ignore[attr-defined]

    with ThreadPoolExecutor(workers) as pool:
        latencies: list[float] = []
        searches: list[float] = []
        for number in range(205):
            one = inputs[number % len(inputs)][None]
            started = time.perf_counter()
            embeddings = list(pool.map(run, sessions, [one] * len(sessions)))
            elapsed = time.perf_counter() - started
            started = time.perf_counter()
            for embedding in embeddings:
                index.search(embedding / max(float(np.linalg.norm(embedding)), 1e-12), 5)
            if number >= 5:
                latencies.append(elapsed * 1000)
                searches.append((time.perf_counter() - started) * 1000)
        batch = inputs[:16]
        done, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds:
            list(pool.map(run, sessions, [batch] * len(sessions)))
            done += len(batch)
        batched = done / (time.perf_counter() - started)

        # Every worker busy all the time, each taking the next specialist in turn: what
        # the cores can do. The rounds above run each session once per round, so with
        # one specialist they use one core, and with three on two workers one worker
        # waits a third of each round; the hub runs a specialist's batches on every
        # worker (BatchingOptions.per_specialist).
        deadline = time.perf_counter() + seconds

        def stream(first: int) -> int:
            runs = 0
            while time.perf_counter() < deadline:
                run(sessions[(first + runs) % len(sessions)], batch)
                runs += 1
            return runs

        started = time.perf_counter()
        runs = sum(pool.map(stream, range(workers)))
        every_core = runs * len(batch) / len(sessions) / (time.perf_counter() - started)
    return {
        "unbatched_p50_ms": round(_percentile(latencies, 50), 3),
        "retrieval_p50_ms": round(_percentile(searches, 50), 3),
        "batched_16_images_per_s": round(batched, 1),
        "batched_16_every_worker_images_per_s": round(every_core, 1),
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
            "--backbone", "tf_efficientnet_lite0", "--epochs", "1", "--input-size", "64",
            "--max-train-images", "300", "--max-eval-images", "100",
            "--out", str(trained), "--no-sign", home=work / "site-00",
        )  # fmt: skip
        registry = start_registry(work / "registry")
        address = registry.address
        try:
            client = registry.client()
            published = 0
            images = [_multipart(png) for png in _images(data, 32)]
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
                entry: dict[str, object] = {"specialists": count}
                raw = _raw_onnxruntime(trained, count, data, args.seconds / 2)
                entry["raw_onnxruntime"] = raw
                for batching in ("on", "off"):
                    extra = ["--max-batch", "1"] if batching == "off" else []
                    hub = start_hub(
                        registry,
                        work / f"hub-{count}-{batching}",
                        "--allow-anonymous",
                        "--no-generalist",
                        "--max-queue",
                        "64",
                        *extra,
                    )
                    url = hub.url
                    try:
                        _wait_for_specialists(url, count)
                        if batching == "off":
                            entry["batching_off"] = _throughput(url, images, 16, args.seconds)
                            continue
                        entry["sequential"] = _measure(url, images, args.requests)
                        entry["throughput"] = [
                            _throughput(url, images, c, args.seconds) for c in CONCURRENCY
                        ]
                    finally:
                        hub.stop()
                c16 = next(t for t in entry["throughput"] if t["concurrency"] == 16)  # type: ignore[attr-defined]
                c1 = next(t for t in entry["throughput"] if t["concurrency"] == 1)  # type: ignore[attr-defined]
                entry["ratios"] = {
                    "c16_rps_over_raw_batched": round(
                        c16["rps"] / raw["batched_16_images_per_s"], 3
                    ),
                    "c16_rps_over_raw_batched_every_worker": round(
                        c16["rps"] / raw["batched_16_every_worker_images_per_s"], 3
                    ),
                    "c1_p50_over_raw_unbatched_plus_retrieval": round(
                        c1["p50_ms"] / (raw["unbatched_p50_ms"] + raw["retrieval_p50_ms"]), 3
                    ),
                    "goal": "c16 ratio >= 0.7, c1 ratio <= 1.2",
                }
                results[str(count)] = entry
                print(json.dumps(entry), file=sys.stderr)
            client.close()
        finally:
            registry.stop()
    import onnxruntime

    report = {
        "benchmark": "hub_overhead",
        "what": "client-side latency of POST /v1/diagnose in gsco mode with no generalist "
        "(HTTP, decode, all specialists, retrieval, fallback, access log); 28 px PNG inputs; "
        "the same models in plain onnxruntime in the same run (raw_onnxruntime); the load "
        "generator runs on the same machine",
        "model": "tf_efficientnet_lite0, 64 px input (upsampled from 28 px), 1280-d "
        "embedding, prototype index",
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
