"""``gsco site train`` as a user runs it: one clear line for every bad input."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.site_agent.conftest import medmnist_dir, write_npz, write_png
from tests.test_cli import gsco


def _train(*args: str, home: Path | None = None) -> tuple[int, str, str]:
    result = gsco("site", "train", "--site-id", "st-marys", *args, home=home)
    return result.returncode, result.stdout, result.stderr


def _bad_npz(tmp_path: Path, *, labels: np.ndarray | None = None, keys: bool = True) -> Path:
    rng = np.random.default_rng(0)
    arrays = {}
    for split in ("train", "val", "test"):
        name = f"{split}_images" if keys else f"{split}_x"
        arrays[name] = rng.integers(0, 255, (8, 28, 28), dtype=np.uint8)
        arrays[f"{split}_labels"] = np.arange(8).reshape(-1, 1) % 2 if labels is None else labels
    return write_npz(tmp_path / "data.npz", **arrays)


def _corrupt_folder(tmp_path: Path) -> Path:
    root = tmp_path / "images"
    for i in range(4):
        write_png(root / "normal" / f"{i}.png", i)
        write_png(root / "pneumonia" / f"{i}.png", 10 + i)
    (root / "pneumonia" / "scan.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    return root


@pytest.mark.parametrize(
    ("make_args", "message"),
    [
        (lambda t: ["--task", "pneumonia-cxr", "--data", str(t / "missing.npz")], "no such file"),
        (
            lambda t: ["--task", "pneumonia-cxr", "--data", str(_bad_npz(t, keys=False))],
            "missing keys",
        ),
        (
            lambda t: [
                "--task",
                "pneumonia-cxr",
                "--data",
                str(_bad_npz(t, labels=np.zeros((8, 1), np.int64))),
            ],
            "no training images for class(es): pneumonia",
        ),
        (
            lambda t: ["--task", "pneumonia-cxr", "--data", str(_corrupt_folder(t))],
            "scan.png: not a readable image",
        ),
        (
            lambda t: ["--task", "pneumonia-cxr", "--backbone", "resnet9000"],
            "unknown backbone 'resnet9000'",
        ),
        (lambda t: ["--task", "covid-ct"], "unknown task 'covid-ct'"),
    ],
    ids=[
        "missing-file",
        "wrong-keys",
        "empty-class",
        "corrupt-image",
        "unknown-backbone",
        "unknown-task",
    ],
)
def test_bad_inputs_end_in_one_clear_line(tmp_path: Path, make_args: object, message: str) -> None:
    code, _, stderr = _train(*make_args(tmp_path), "--out", str(tmp_path / "out"))  # type: ignore[operator]
    assert code == 1
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("error: "), stderr
    assert message in lines[0], stderr
    assert "Traceback" not in stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--task", "pneumonia-cxr", "--dp-delta", "1e-5"], "--dp-delta needs --dp-epsilon"),
        (["--task", "pneumonia-cxr", "--dp-layers", "all"], "--dp-layers needs --dp-epsilon"),
        ([], "give --task, or --task-file declaring one"),
    ],
    ids=["delta-without-epsilon", "layers-without-epsilon", "no-task"],
)
def test_contradicting_options_are_usage_errors_before_any_data_is_read(
    tmp_path: Path, args: list[str], message: str
) -> None:
    missing = tmp_path / "never-read.npz"  # would fail with "no such file" if it were read
    code, _, stderr = _train(*args, "--data", str(missing), "--out", str(tmp_path / "out"))
    assert code == 2, stderr
    assert message in stderr
    assert "no such file" not in stderr


def test_no_site_identity(tmp_path: Path) -> None:
    result = gsco(
        "site",
        "train",
        "--task",
        "pneumonia-cxr",
        "--out",
        str(tmp_path / "o"),
        home=tmp_path / "nohome",
    )
    assert result.returncode == 1
    assert "no site identity" in result.stderr


@pytest.mark.slow
def test_tiny_train_sign_and_audit(tmp_path: Path) -> None:
    home = tmp_path / "home"
    assert gsco("site", "init", "--site-id", "st-marys", home=home).returncode == 0
    out = tmp_path / "bundle"
    result = gsco(
        "site",
        "train",
        "--task",
        "pneumonia-cxr",
        "--data",
        str(medmnist_dir() / "pneumoniamnist.npz"),
        "--out",
        str(out),
        "--epochs",
        "2",
        "--max-train-images",
        "64",
        "--max-eval-images",
        "32",
        "--sign",
        home=home,
    )
    assert result.returncode == 0, result.stderr
    assert "test ACC" in result.stdout
    assert "signed as site st-marys" in result.stdout
    assert "epoch 2/2" in result.stderr  # progress, on stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["test"]) >= {
        "accuracy",
        "macro_auc",
        "macro_f1",
        "per_class_recall",
        "ece",
        "confusion_matrix",
    }
    assert metrics["training"]["epochs_run"] == 2
    _the_hub_agrees_with_the_sites_metrics(out, metrics)
    assert (tmp_path / "bundle.checkpoints" / "best.safetensors").is_file()
    card = json.loads((out / "card.json").read_text())
    assert card["site_id"] == "st-marys"
    assert card["version"] == 1
    assert card["index"]["mode"] == "prototype"
    assert card["index"]["min_group_size"] == 10
    key = f"st-marys={home / 'keys' / 'site.pub'}"
    audit = gsco("audit", "bundle", str(out), "--key", key, "--site", "st-marys")
    assert audit.returncode == 0, audit.stderr

    again = gsco("site", "train", "--task", "pneumonia-cxr", "--out", str(out), home=home)
    assert again.returncode == 1
    assert "exists and is not empty" in again.stderr


@pytest.mark.slow
def test_a_dicom_folder_gets_a_deidentification_report(tmp_path: Path) -> None:
    from pydicom.data import get_testdata_file

    root = tmp_path / "images"
    for label, name in (("normal", "CT_small.dcm"), ("pneumonia", "MR_small.dcm")):
        (root / label).mkdir(parents=True)
        for i in range(6):
            (root / label / f"{i}.dcm").write_bytes(Path(get_testdata_file(name)).read_bytes())
    out = tmp_path / "bundle"
    code, stdout, stderr = _train(
        "--task", "pneumonia-cxr", "--data", str(root), "--out", str(out),
        "--backbone", "resnet18", "--weights", "scratch", "--epochs", "1",
        "--image-size", "32", "--input-size", "32", "--batch-size", "4", "--index-k", "2",
    )  # fmt: skip
    assert code == 0, stderr
    assert "DICOM de-identification: 12 files" in stdout
    assert "none of" in stdout
    report = json.loads((tmp_path / "bundle.deidentification.json").read_text())
    assert report["passed"] is True
    assert report["dicom_files"] == 12
    assert "PatientName" in {row["keyword"] for row in report["dropped"]}
    assert not (out / "bundle.deidentification.json").exists()  # never inside the bundle


def _the_hub_agrees_with_the_sites_metrics(bundle: Path, metrics: dict[str, Any]) -> None:
    """The calibrated softmax is one contract: the hub's runtime (onnxruntime, the card's
    temperature) on the site's own held-out images gives the site's reported metrics."""
    from hub import load_specialist
    from protocol import SpecialistCard, preprocess
    from site_agent.data import default_catalog, load_local_data
    from site_agent.train import evaluate

    entry = default_catalog().get("pneumonia-cxr")
    data = load_local_data(medmnist_dir() / "pneumoniamnist.npz", entry, seed=0)
    test = data.subsample(64, 32, 0).test  # what the command above held out
    files = {p.name: p.read_bytes() for p in bundle.iterdir() if p.is_file()}
    card = SpecialistCard.parse(files["card.json"])
    specialist = load_specialist(card, "0" * 64, files)
    probs, _ = specialist.run(preprocess(test.images, card.preprocessing))
    hub = evaluate(probs, test.labels, card.labels)
    assert hub.accuracy == pytest.approx(metrics["test"]["accuracy"], abs=1e-9)
    assert hub.macro_auc == pytest.approx(metrics["test"]["macro_auc"], abs=1e-3)
    # The calibration error depends on the temperature (accuracy and AUC do not).
    assert card.calibration_temperature != 1.0
    assert hub.ece == pytest.approx(metrics["test"]["ece"], abs=1e-3)


def test_a_task_file_alone_plans_a_run_and_the_version_follows_the_ledger(tmp_path: Path) -> None:
    """The use case (what the command calls): a declared task, the data read, a version."""
    from site_agent import init_site
    from site_agent.training import TrainingOptions, plan_training

    (tmp_path / "knee.yaml").write_text(
        "task_id: knee-xr\nmodality: knee X-ray\nlabels: [healthy, osteoarthritis]\n"
        "task_type: binary\n"
    )
    for label in ("healthy", "osteoarthritis"):
        for i in range(6):
            write_png(tmp_path / "images" / label / f"{i}.png", 40 * i + (label == "healthy"))
    home = init_site(tmp_path / "home", "st-marys")
    plan = plan_training(
        TrainingOptions(
            out=tmp_path / "out",
            task_file=tmp_path / "knee.yaml",
            data=tmp_path / "images",
            image_size=28,
            dp_epsilon=8.0,
        ),
        home.root,
    )
    assert plan.entry.task.task_id == "knee-xr"
    assert plan.site_id == "st-marys"
    assert plan.version == 1  # nothing published yet
    assert plan.config.dp is not None
    assert plan.config.dp.delta == pytest.approx(0.1 / len(plan.dataset.train))
    assert not (tmp_path / "out").exists()  # planning writes nothing
