"""The default training recipe against the plain 50-line loop, side by side, in one run.

For each task, the same ``.npz`` file is trained twice on this machine, one
after the other: by the plain loop of ``bench/_plain_loop.py`` (ResNet-18 from
scratch at the images' size, AdamW 1e-3, 12 epochs, class weights, best
validation loss) and by the site agent with nothing passed but the data and a
task file (``plan_training`` and ``run_training``, the code behind
``gsco site train --data F --task-file T``: the recipe search, training,
calibration, ONNX export with its parity gate and the index). Both are scored
on the file's test split. The site agent's time is everything
``run_training`` does; the loop's is its training (it exports nothing).

Tasks: PneumoniaMNIST and BreastMNIST at 28 px, and tasks built here so that
they differ from both (``--constructed``):

- ``pneumonia-300``: 300 training images of PneumoniaMNIST (a small site);
- ``chest-breast-4``: four classes (PneumoniaMNIST's two and BreastMNIST's two
  together; 1,200 of PneumoniaMNIST's training images), upsampled to 64 px and
  made RGB with a random colour gain per image (so colour carries no label).

    python bench/recipe.py                       # every task, writes bench/results/recipe.json
    python bench/recipe.py --only breast-us --seeds 0 1 2

The pass line per task: ACC and AUC of the default >= the loop's (mean over
seeds), and the default's time <= 1.5x the loop's when both train at the same
input size.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from _plain_loop import plain_loop  # noqa: E402

SPLITS = ("train", "val", "test")
TIME_RATIO = 1.5


@dataclass(frozen=True)
class BenchTask:
    """One task: how to make its ``.npz`` and its task file."""

    name: str
    labels: tuple[str, ...]
    modality: str
    make: Callable[[Path], dict[str, np.ndarray]]
    mirroring: bool = False


def _data_dir() -> Path:
    return Path(os.environ.get("GSCO_DATA_DIR", ROOT.parent / "shared" / "datasets" / "medmnist"))


def _read(name: str) -> dict[str, np.ndarray]:
    with np.load(_data_dir() / f"{name}.npz", allow_pickle=False) as archive:
        return {key: archive[key] for key in archive.files}


def _labels(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {
        k: (v.reshape(-1).astype(np.int64) if k.endswith("_labels") else v)
        for k, v in arrays.items()
    }


def _pneumonia(_: Path) -> dict[str, np.ndarray]:
    return _labels(_read("pneumoniamnist"))


def _breast(_: Path) -> dict[str, np.ndarray]:
    return _labels(_read("breastmnist"))


def _pneumonia_300(_: Path) -> dict[str, np.ndarray]:
    arrays = _labels(_read("pneumoniamnist"))
    rng = np.random.default_rng(300)
    labels = arrays["train_labels"]
    keep = np.concatenate(
        [
            rng.choice(
                np.flatnonzero(labels == c), round(300 * np.mean(labels == c)), replace=False
            )
            for c in (0, 1)
        ]
    )
    rng.shuffle(keep)
    arrays["train_images"] = arrays["train_images"][keep]
    arrays["train_labels"] = labels[keep]
    return arrays


def _upsample_rgb(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """28 px grey to 64 px RGB: bilinear resize, a random per-image colour gain."""
    from PIL import Image

    out = np.empty((len(images), 64, 64, 3), dtype=np.uint8)
    for i, image in enumerate(images):
        big = np.asarray(
            Image.fromarray(image).resize((64, 64), Image.Resampling.BILINEAR), np.float32
        )
        gains = rng.uniform(0.7, 1.0, size=3)
        out[i] = np.clip(big[..., None] * gains, 0, 255).astype(np.uint8)
    return out


def _chest_breast_4(_: Path) -> dict[str, np.ndarray]:
    chest, breast = _labels(_read("pneumoniamnist")), _labels(_read("breastmnist"))
    rng = np.random.default_rng(4)
    arrays: dict[str, np.ndarray] = {}
    for split in SPLITS:
        xc, yc = chest[f"{split}_images"], chest[f"{split}_labels"]
        if split == "train":  # keep the task small enough for a quick benchmark
            pick = rng.choice(len(yc), 1200, replace=False)
            xc, yc = xc[pick], yc[pick]
        xb, yb = breast[f"{split}_images"], breast[f"{split}_labels"] + 2
        x = np.concatenate([xc, xb])
        y = np.concatenate([yc, yb])
        order = rng.permutation(len(y))
        arrays[f"{split}_images"] = _upsample_rgb(x[order], rng)
        arrays[f"{split}_labels"] = y[order]
    return arrays


TASKS = {
    "pneumonia-cxr": BenchTask("pneumonia-cxr", ("normal", "pneumonia"), "chest X-ray", _pneumonia),
    "breast-us": BenchTask(
        "breast-us",
        ("normal or benign", "malignant"),
        "breast ultrasound",
        _breast,
        mirroring=True,
    ),
    "pneumonia-300": BenchTask(
        "pneumonia-300", ("normal", "pneumonia"), "chest X-ray", _pneumonia_300
    ),
    "chest-breast-4": BenchTask(
        "chest-breast-4",
        ("chest normal", "chest pneumonia", "breast benign", "breast malignant"),
        "chest X-ray or breast ultrasound",
        _chest_breast_4,
    ),
}


def _write_task(task: BenchTask, folder: Path) -> tuple[Path, Path, dict[str, np.ndarray]]:
    arrays = task.make(folder)
    data = folder / f"{task.name}.npz"
    np.savez(data, **arrays)  # type: ignore[arg-type]
    spec = {
        "task_id": task.name,
        "modality": task.modality,
        "labels": list(task.labels),
        "task_type": "binary" if len(task.labels) == 2 else "multiclass",
        "mirroring": task.mirroring,
    }
    task_file = folder / f"{task.name}.json"
    task_file.write_text(json.dumps(spec))
    return data, task_file, arrays


def _site_agent(data: Path, task_file: Path, out: Path, seed: int) -> dict[str, object]:
    """The default recipe, in process: exactly what ``gsco site train`` runs."""
    from protocol import IndexMode
    from site_agent.training import TrainingOptions, plan_training, run_training

    options = TrainingOptions(
        out=out,
        task_file=task_file,
        data=data,
        seed=seed,
        site_id="bench",
        version=1,
        index_mode=IndexMode.PROTOTYPE,
    )
    started = time.monotonic()
    plan = plan_training(options, out.parent / "home")
    planned = time.monotonic() - started
    trials: list[dict[str, object]] = []
    result, _ = run_training(plan, None, lambda trial: trials.append(trial.as_dict()))
    seconds = time.monotonic() - started
    training = result.metrics["training"]
    assert isinstance(training, dict)
    test = result.card.metrics
    return {
        "accuracy": test.accuracy,
        "macro_auc": test.macro_auc,
        "seconds": round(seconds, 1),
        "plan_seconds": round(planned, 1),
        "train_seconds": training.get("seconds"),
        "stage_seconds": result.metrics["resources"]["stage_seconds"],  # type: ignore[index]
        "backbone": result.card.backbone,
        "input_size": result.card.preprocessing.input_size[0],
        "recipe": training.get("recipe"),
        "stop_reason": training.get("stop_reason"),
        "epochs_run": training.get("epochs_run"),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", action="append", choices=sorted(TASKS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "recipe.json")
    args = parser.parse_args()
    os.environ.setdefault("GSCO_DATA_DIR", str(_data_dir()))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.only or list(TASKS):
            task = TASKS[name]
            folder = Path(tmp) / name
            folder.mkdir()
            data, task_file, arrays = _write_task(task, folder)
            size = int(arrays["train_images"].shape[1])
            for seed in args.seeds:
                loop = plain_loop(
                    {k: (v[..., None] if v.ndim == 3 else v) for k, v in arrays.items()},
                    len(task.labels),
                    seed,
                )
                print(f"{name} seed {seed} loop: {json.dumps(loop)}", flush=True)
                agent = _site_agent(data, task_file, folder / f"bundle-{seed}", seed)
                print(f"{name} seed {seed} default: {json.dumps(agent)}", flush=True)
                rows.append(
                    {
                        "task": name,
                        "seed": seed,
                        "native_px": size,
                        "train_images": len(arrays["train_labels"]),
                        "loop": loop,
                        "default": agent,
                    }
                )
    summary = {}
    for name in args.only or list(TASKS):
        mine = [r for r in rows if r["task"] == name]
        mean = {
            side: {
                key: float(np.mean([r[side][key] for r in mine]))
                for key in ("accuracy", "macro_auc", "seconds")
            }
            for side in ("loop", "default")
        }
        ratio = mean["default"]["seconds"] / mean["loop"]["seconds"]
        summary[name] = {
            **mean,
            "time_ratio": round(ratio, 2),
            "passes": bool(
                mean["default"]["accuracy"] >= mean["loop"]["accuracy"]
                and mean["default"]["macro_auc"] >= mean["loop"]["macro_auc"]
                and ratio <= TIME_RATIO
            ),
        }
    report = {
        "benchmark": "recipe",
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "pass_line": f"default ACC and AUC >= the loop's, time <= {TIME_RATIO}x the loop's",
        "summary": summary,
        "runs": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(summary, indent=2))
    return 0 if all(s["passes"] for s in summary.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
