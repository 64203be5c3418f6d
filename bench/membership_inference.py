"""Membership inference against the published index: the privacy/accuracy table.

Trains the default specialist (EfficientNet-Lite0) on the full PneumoniaMNIST
training split with ``gsco site train`` (or takes ``--bundle``), then, for each
index setting, builds the index a site would publish from the training
embeddings and runs the attack of ``simulations.membership_table``: an
attacker with the bundle and 624 member + 624 non-member candidate images
scores membership by the cosine similarity to the nearest index entry.
Embeddings come from the published ``model.onnx`` through onnxruntime, as an
attacker would compute them. Two controls separate the index's leakage from the
model's: the same attack against prototypes built from the validation split
(images that are not members), and the classic loss attack on the model alone
(the calibrated probability of the candidate's true label). Writes
bench/results/membership_inference.json (or ``--name``) and prints the table
as Markdown.

    python bench/membership_inference.py [--bundle DIR | --save-bundle DIR]
        [--epochs 30 --max-minutes 10] [--dp-epsilon 8]
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

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from hub_overhead import _gsco

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, help="a trained pneumonia-cxr bundle to attack")
    parser.add_argument("--save-bundle", type=Path, help="train into this folder and keep it")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--max-minutes", type=float, default=10.0)
    parser.add_argument("--name", default="membership_inference", help="result file name")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args()
    import onnxruntime as ort

    from protocol import IndexMode, SpecialistCard, preprocess
    from simulations import candidate_pool, loss_attack_auc, membership_table
    from site_agent.data import find_medmnist
    from site_agent.index import IndexSettings

    data = find_medmnist("pneumoniamnist")
    with tempfile.TemporaryDirectory() as tmp:
        bundle = args.bundle
        train_seconds = None
        if bundle is None:
            bundle = args.save_bundle or Path(tmp) / "bundle"
            started = time.monotonic()
            _gsco(
                "site", "train", "--task", "pneumonia-cxr", "--data", str(data),
                "--epochs", str(args.epochs), "--max-minutes", str(args.max_minutes),
                "--site-id", "bench-site", "--out", str(bundle), home=Path(tmp) / "home",
            )  # fmt: skip
            train_seconds = round(time.monotonic() - started, 1)
        card = SpecialistCard.parse((bundle / "card.json").read_bytes())
        session = ort.InferenceSession(
            str(bundle / "model.onnx"), providers=["CPUExecutionProvider"]
        )

        def run(images: np.ndarray, output: str) -> np.ndarray:
            inputs = preprocess(images, card.preprocessing)
            out = [
                session.run([output], {"image": inputs[i : i + 256]})[0]
                for i in range(0, len(inputs), 256)
            ]
            return np.concatenate(out).astype(np.float32)

        def embed(images: np.ndarray) -> np.ndarray:
            return run(images, "embedding")

        def probs(images: np.ndarray) -> np.ndarray:
            logits = run(images, "logits") / card.calibration_temperature
            logits -= logits.max(axis=1, keepdims=True)
            return np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)

        with np.load(data, allow_pickle=False) as archive:
            split = {k: archive[k] for k in archive.files}
        splits = ("train", "val", "test")
        images = {s: split[f"{s}_images"][..., None] for s in splits}
        labels = {s: split[f"{s}_labels"].reshape(-1).astype(np.int64) for s in splits}
        settings = [
            ("raw (opt-in)", IndexSettings(IndexMode.RAW)),
            ("prototypes k=5", IndexSettings(k=5)),
            ("prototypes k=10 (default)", IndexSettings(k=10)),
            ("prototypes k=20", IndexSettings(k=20)),
            ("prototypes k=10 + noise 0.01", IndexSettings(k=10, noise_std=0.01)),
            ("prototypes k=10 + noise 0.03", IndexSettings(k=10, noise_std=0.03)),
            ("prototypes k=10 + noise 0.1", IndexSettings(k=10, noise_std=0.1)),
            ("prototypes k=50", IndexSettings(k=50)),
        ]
        controls = [("control: prototypes k=10 from the val split", IndexSettings(k=10))]
        started = time.monotonic()
        rows = membership_table(
            embed, images["train"], labels["train"], images["test"], labels["test"],
            card.labels, settings, held_out=(images["val"], labels["val"]),
            control_settings=controls,
        )  # fmt: skip
        members, others = candidate_pool(len(labels["train"]), len(labels["test"]))
        loss_auc = loss_attack_auc(
            probs(images["train"][members]), labels["train"][members],
            probs(images["test"][others]), labels["test"][others],
        )  # fmt: skip
        attack_seconds = round(time.monotonic() - started, 1)
    table = (
        [
            "| index | entries | attack AUC | RAD accuracy (top-5) |",
            "| --- | --- | --- | --- |",
        ]
        + [
            f"| {r.setting} | {r.index_entries} | {r.attack_auc:.3f} | {r.rad_accuracy:.3f} |"
            for r in rows
        ]
        + [f"| control: loss attack on the model alone (no index) | - | {loss_auc:.3f} | - |"]
    )
    default = next(r for r in rows if "default" in r.setting)
    raw = rows[0]
    report = {
        "benchmark": "membership_inference",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count()},
        "model": {
            "backbone": card.backbone,
            "test_accuracy": card.metrics.accuracy,
            "test_macro_auc": card.metrics.macro_auc,
            "train_seconds": train_seconds,
            "training_privacy": (
                card.training_privacy.model_dump(mode="json") if card.training_privacy else None
            ),
        },
        "attack": "nearest-index-entry cosine similarity; 624 members (training split) vs "
        "624 non-members (test split); embeddings from model.onnx",
        "rows": [r.as_dict() for r in rows],
        "loss_attack_auc_model_only": round(loss_auc, 4),
        "default_attack_auc_at_most_0.60": default.attack_auc <= 0.60,
        "rad_accuracy_cost_of_default_vs_raw": round(raw.rad_accuracy - default.rad_accuracy, 4),
        "attack_seconds": attack_seconds,
        "markdown": "\n".join(table),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"{args.name}.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    print("\n".join(table))
    print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
