"""A DP-SGD specialist on PneumoniaMNIST at epsilon 8: trained, published, used by the hub.

``gsco site train --dp-epsilon 8`` trains EfficientNet-Lite0 (Opacus DP-SGD,
RDP accountant, delta = 1/(10 n); by default the classifier on the frozen
pretrained backbone, ``--dp-layers all`` for every layer with GroupNorm) on the
full training split; the bundle is signed and published to a real registry on
loopback; a real ``gsco hub serve`` syncs it through TUF and diagnoses every
test image (mode ``ensemble``, no generalist: the answer is the DP
specialist's). The script checks that the hub's provenance names the DP
bundle and its budget. Writes bench/results/dp_specialist.json.

    python bench/dp_specialist.py [--epsilon 8] [--epochs 12] [--dp-layers head|all]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from hub_overhead import (
    ADMIN_TOKEN,
    _gsco,
    _images,
    _start_hub,
    _start_registry,
    _stop,
    _wait_for_specialists,
)

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epsilon", type=float, default=8.0)
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--dp-layers", choices=("head", "all"), default="head")
    parser.add_argument("--max-minutes", type=float, default=40.0)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args()
    from site_agent.data import find_medmnist

    data = find_medmnist("pneumoniamnist")
    with np.load(data, allow_pickle=False) as archive:
        labels = archive["test_labels"].reshape(-1)
    names = ("normal", "pneumonia")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        home = work / "site"
        _gsco("site", "init", "--site-id", "dp-site", home=home)
        bundle = work / "bundle"
        print(f"training lite0 with DP-SGD at epsilon {args.epsilon} ...", file=sys.stderr)
        started = time.monotonic()
        _gsco(
            "site", "train", "--task", "pneumonia-cxr", "--data", str(data),
            "--dp-epsilon", str(args.epsilon), "--dp-layers", args.dp_layers,
            "--epochs", str(args.epochs),
            "--batch-size", str(args.batch_size), "--lr", str(args.lr),
            "--patience", str(args.epochs), "--max-minutes", str(args.max_minutes),
            "--out", str(bundle), "--sign", home=home,
        )  # fmt: skip
        train_wall = time.monotonic() - started
        metrics = json.loads((bundle / "metrics.json").read_text())
        card = json.loads((bundle / "card.json").read_text())
        registry, address = _start_registry(work / "registry")
        from registry import RegistryClient

        try:
            client = RegistryClient(address, admin_token=ADMIN_TOKEN)
            client.wait_ready()
            client.enroll("dp-site", (home / "keys" / "site.pub").read_bytes())
            client.close()
            _gsco("site", "publish", str(bundle), "--registry", address, home=home)
            hub, url = _start_hub(address, work / "registry", work / "hub")
            try:
                _wait_for_specialists(url, 1)
                listed = httpx.get(url + "/v1/tasks").json()["tasks"][0]["specialists"][0]
                correct, provenance = 0, None
                images = _images(data, len(labels))
                with httpx.Client(base_url=url, timeout=120) as http:
                    for image, label in zip(images, labels, strict=True):
                        answer = http.post(
                            "/v1/diagnose",
                            data={"task_id": "pneumonia-cxr", "mode": "ensemble"},
                            files={"image": ("x.png", image, "image/png")},
                        )
                        answer.raise_for_status()
                        body = answer.json()
                        correct += body["label"] == names[int(label)]
                        provenance = body["specialists"][0]
            finally:
                _stop(hub)
        finally:
            _stop(registry)
    assert provenance is not None
    spent = card["training_privacy"]
    report = {
        "benchmark": "dp_specialist",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count()},
        "command": f"gsco site train --task pneumonia-cxr --dp-epsilon {args.epsilon} "
        f"--dp-layers {args.dp_layers} --epochs {args.epochs} --batch-size {args.batch_size} "
        f"--lr {args.lr}",
        "card_training_privacy": spent,
        "metrics_differential_privacy": metrics["training"]["differential_privacy"],
        "bundle_test_metrics": metrics["test"],
        "training": {
            k: metrics["training"][k]
            for k in ("epochs_run", "best_epoch", "stop_reason", "seconds")
        },
        "train_wall_seconds": round(train_wall, 1),
        "peak_rss_mb": metrics["resources"]["peak_rss_mb"],
        "hub": {
            "test_images": len(labels),
            "accuracy": round(correct / len(labels), 4),
            "provenance": provenance,
            "v1_tasks_training_privacy": listed["training_privacy"],
        },
        "checks": {
            "epsilon_at_most_target": spent["epsilon"] <= args.epsilon + 1e-6,
            "hub_used_dp_bundle": provenance["dp_epsilon"] == spent["epsilon"],
        },
    }
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "dp_specialist.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report["hub"], indent=1), file=sys.stderr)
    print(f"wrote {path}", file=sys.stderr)
    return 0 if all(report["checks"].values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
