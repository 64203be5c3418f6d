"""Registry throughput: publish and verified fetch of a ~50 MB bundle, against plain sha256.

Starts a real registry (gRPC on loopback), builds a valid signed bundle whose
model.onnx is ~50 MB, and times, median of --repeats runs:
- sha256 of the bundle's bytes (the floor: reading and hashing once);
- signing (model-signing);
- publish: the site's TUF metadata, the upload and the registry's full checks
  (signature, hashes, card, onnx.checker, index, version), storage, TUF re-signing;
- verified fetch: TUF refresh and download through tuf.ngclient, then the shared
  verify_publication.
Writes bench/results/registry_throughput.json.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from registry import RegistryClient, ServerConfig, TrustedRegistry, start_server, verify_publication
from signing import KeyRing, PublicKey, TrustedKey, generate_site_key, sign_bundle

ROOT = Path(__file__).resolve().parents[1]
SIDE = 256  # input 256 x 256 grey, projected to a 192-d embedding: W1 is 50.3 MB
EMBEDDING = 192


def _model() -> bytes:
    rng = np.random.default_rng(0)
    projection = rng.normal(size=(SIDE * SIDE, EMBEDDING)).astype(np.float32)
    classifier = rng.normal(size=(EMBEDDING, 2)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Flatten", ["image"], ["flat"], axis=1),
            helper.make_node("MatMul", ["flat", "w1"], ["embedding"]),
            helper.make_node("MatMul", ["embedding", "w2"], ["logits"]),
        ],
        "linear-probe",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 1, SIDE, SIDE])],
        [
            helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 2]),
            helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["N", EMBEDDING]),
        ],
        [numpy_helper.from_array(projection, "w1"), numpy_helper.from_array(classifier, "w2")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def _bundle(directory: Path, version: int) -> None:
    directory.mkdir(parents=True)
    (directory / "model.onnx").write_bytes(_model())
    buffer = io.BytesIO()
    np.savez(
        buffer,
        embeddings=np.zeros((0, EMBEDDING), np.float32),
        labels=np.zeros(0, np.int64),
        group_sizes=np.zeros(0, np.int64),
    )
    (directory / "index.npz").write_bytes(buffer.getvalue())
    card = {
        "task_id": "pneumonia-cxr",
        "modality": "chest X-ray",
        "labels": ["normal", "pneumonia"],
        "task_type": "binary",
        "backbone": "bench-linear",
        "preprocessing": {"input_size": [SIDE, SIDE], "channels": 1, "mean": [0.5], "std": [0.5]},
        "metrics": {"n": 1, "accuracy": 0.5, "macro_f1": 0.5, "per_class_recall": {}},
        "data_summary": {
            "source": "bench",
            "n_train": 0,
            "n_val": 0,
            "n_test": 0,
            "train_class_counts": {},
        },
        "index": {"mode": "none", "embedding_dim": EMBEDDING, "entries_per_class": {}},
        "site_id": "bench-site",
        "version": version,
        "license": "CC0-1.0",
        "created_at": datetime.now(UTC).isoformat(),
    }
    (directory / "card.json").write_text(json.dumps(card))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, list[float]] = {
        "sha256": [],
        "sign": [],
        "publish": [],
        "fetch_verified": [],
    }
    size = 0
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        public = generate_site_key(tmp / "site.key", tmp / "site.pub")
        server, registry, port = start_server(
            ServerConfig(root=tmp / "registry", port=0, admin_token="t")
        )
        try:
            with RegistryClient(f"127.0.0.1:{port}", admin_token="t", timeout_s=600) as client:
                client.enroll("bench-site", public.pem)
                keys = KeyRing([TrustedKey("bench-site", PublicKey.from_pem(public.pem))])
                for repeat in range(args.repeats):
                    directory = tmp / f"bundle{repeat}"
                    _bundle(directory, repeat + 1)
                    started = time.perf_counter()
                    sign_bundle(directory, tmp / "site.key")
                    timings["sign"].append(time.perf_counter() - started)
                    files = {p.name: p.read_bytes() for p in sorted(directory.iterdir())}
                    size = sum(len(d) for d in files.values())
                    started = time.perf_counter()
                    for data in files.values():
                        hashlib.sha256(data).hexdigest()
                    timings["sha256"].append(time.perf_counter() - started)
                    started = time.perf_counter()
                    ref = client.publish_files(files, tmp / "site.key")
                    timings["publish"].append(time.perf_counter() - started)
                    started = time.perf_counter()
                    hub = TrustedRegistry(client, tmp / f"hub{repeat}", registry.tuf.trusted_root())
                    hub.refresh()
                    fetched = hub.bundle_files("bench-site", ref.bundle_digest)
                    verify_publication(fetched, keys)
                    timings["fetch_verified"].append(time.perf_counter() - started)
                    print(
                        f"run {repeat + 1}: "
                        + ", ".join(f"{k} {v[-1]:.2f}s" for k, v in timings.items()),
                        flush=True,
                    )
        finally:
            server.stop(grace=None)
    medians = {name: statistics.median(values) for name, values in timings.items()}
    megabytes = size / 1e6
    report = {
        "benchmark": "registry_throughput",
        "time": datetime.now(UTC).isoformat(),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": sys.version.split()[0],
        },
        "bundle_bytes": size,
        "repeats": args.repeats,
        "median_seconds": medians,
        "throughput_mb_per_s": {name: megabytes / seconds for name, seconds in medians.items()},
        "ratio_to_sha256": {name: seconds / medians["sha256"] for name, seconds in medians.items()},
        "raw_seconds": timings,
    }
    path = args.out / "registry_throughput.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(
        json.dumps(
            {k: report[k] for k in ("bundle_bytes", "median_seconds", "ratio_to_sha256")}, indent=2
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
