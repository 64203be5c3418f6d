"""From a loaded dataset to a bundle directory: train, calibrate, evaluate, export, index."""

from __future__ import annotations

import json
import resource
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch

from protocol import (
    FederatedTraining,
    HeldOutMetrics,
    SpecialistCard,
    canonical_json,
    check_index,
)
from site_agent.data import LocalDataset
from site_agent.deid import DeidentificationReport, build_report
from site_agent.errors import BundleExistsError, DataError, DeidentificationError
from site_agent.export import export_onnx
from site_agent.index import IndexSettings, build_index
from site_agent.train import (
    BackboneZoo,
    TrainConfig,
    TrainingObserver,
    default_zoo,
    evaluate,
    train_specialist,
)

__all__ = ["BundleResult", "deidentification_report_path", "ensure_new_output", "write_bundle"]

#: Real test images on which onnxruntime must match PyTorch.
PARITY_IMAGES = 64


@dataclass(frozen=True)
class BundleResult:
    """A written (unsigned) bundle and its metrics."""

    path: Path
    card: SpecialistCard
    metrics: dict[str, object]
    #: The DICOM de-identification report (written beside the bundle), if DICOM was read.
    deidentification: DeidentificationReport | None = None


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def _config_dict(config: TrainConfig) -> dict[str, object]:
    out: dict[str, object] = {}
    for key, value in vars(config).items():
        if hasattr(value, "value"):
            value = value.value
        elif value is not None and hasattr(value, "__dataclass_fields__"):
            value = dict(vars(value))
        out[key] = value
    return out


def deidentification_report_path(out: Path) -> Path:
    """Where :func:`write_bundle` puts the DICOM de-identification report of bundle ``out``."""
    return out.with_name(f"{out.name}.deidentification.json")


def _check_deidentification(
    dicom_files: Sequence[Path], out: Path, partial: Path
) -> DeidentificationReport:
    """Writes the de-identification report; raises if an identifying value reached an output."""
    outputs = {}
    for folder, name in ((partial, out.name), (_checkpoints(out), _checkpoints(out).name)):
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                outputs[f"{name}/{path.relative_to(folder).as_posix()}"] = path
    try:
        report = build_report(dicom_files, outputs)
    except OSError as exc:
        raise DataError(
            f"cannot re-read a DICOM source for the de-identification report: {exc}"
        ) from exc
    target = deidentification_report_path(out)
    target.write_text(report.model_dump_json(indent=2) + "\n")
    if not report.passed:
        found = "; ".join(f"{leak.attribute} in {leak.output}" for leak in report.output_scan.leaks)
        raise DeidentificationError(
            f"identifying DICOM values reached the outputs ({found or 'allow-list overlap'}); "
            f"the bundle was not written. See {target}"
        )
    return report


def _checkpoints(out: Path) -> Path:
    return out.with_name(f"{out.name}.checkpoints")


def ensure_new_output(out: Path) -> None:
    """Raises :class:`BundleExistsError` unless ``out`` is absent or an empty folder."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise BundleExistsError(f"{out} exists and is not empty; choose another --out")


def write_bundle(
    dataset: LocalDataset,
    out: Path,
    *,
    site_id: str,
    version: int,
    license_id: str,
    config: TrainConfig,
    index: IndexSettings,
    zoo: BackboneZoo | None = None,
    observer: TrainingObserver | None = None,
    initial_state: Mapping[str, torch.Tensor] | None = None,
    federation: FederatedTraining | None = None,
) -> BundleResult:
    """Trains a specialist on ``dataset`` and writes the bundle folder ``out``.

    ``out`` receives ``model.onnx``, ``card.json``, ``index.npz`` and ``metrics.json``.
    When the images came from DICOM files, the de-identification report goes to
    ``<out>.deidentification.json`` (see :mod:`site_agent.deid`).

    The bundle is assembled in a hidden sibling folder and renamed into place
    at the end, so a failure leaves no half-written bundle. Checkpoints
    (safetensors) go to ``<out>.checkpoints/``, outside the bundle.

    Raises:
        BundleExistsError: ``out`` exists and is not empty.
        DeidentificationError: a DICOM identifying value was found in an output;
            the report is written, the bundle is not.
        SiteError: any step failed (see :mod:`site_agent.errors`).
    """
    ensure_new_output(out)
    started = time.monotonic()
    partial = out.with_name(f".{out.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    try:
        trained = train_specialist(
            dataset,
            config,
            zoo or default_zoo(),
            checkpoint_dir=_checkpoints(out),
            observer=observer,
            initial_state=initial_state,
        )
        test = evaluate(trained.test_probs, dataset.test.labels, dataset.task.labels)
        export = export_onnx(
            trained.net,
            trained.preprocessing,
            partial / "model.onnx",
            dataset.test.images[:PARITY_IMAGES],
            trained.temperature,
        )
        built = build_index(
            trained.embed(dataset.train.images), dataset.train.labels, dataset.task.labels, index
        )
        card = SpecialistCard(
            task_id=dataset.task.task_id,
            modality=dataset.task.modality,
            labels=dataset.task.labels,
            task_type=dataset.task.task_type,
            backbone=trained.backbone,
            preprocessing=trained.preprocessing,
            calibration_temperature=trained.temperature,
            metrics=HeldOutMetrics(
                split="test",
                n=test.n,
                accuracy=test.accuracy,
                macro_auc=test.macro_auc,
                macro_f1=test.macro_f1,
                ece=test.ece,
                per_class_recall=test.per_class_recall,
            ),
            data_summary=dataset.summary(),
            index=built.privacy,
            training_privacy=trained.privacy,
            federation=federation,
            site_id=site_id,
            version=version,
            license=license_id,
            created_at=datetime.now(UTC),
        )
        check_index(built.arrays, card)  # the same contract the registry enforces
        np.savez(partial / "index.npz", **built.arrays)  # type: ignore[arg-type]
        (partial / "card.json").write_bytes(canonical_json(card) + b"\n")
        metrics: dict[str, object] = {
            "task_id": card.task_id,
            "backbone": card.backbone,
            "test": test.as_dict(),
            "calibration": {"method": "temperature_scaling", "temperature": trained.temperature},
            "training": {
                "epochs_run": len(trained.history),
                "best_epoch": trained.best_epoch,
                "stop_reason": trained.stop_reason,
                "seconds": round(trained.train_seconds, 1),
                "config": _config_dict(config),
                "differential_privacy": (
                    None
                    if trained.privacy is None or config.dp is None
                    else {
                        **trained.privacy.model_dump(mode="json"),
                        "target_epsilon": config.dp.epsilon,
                        "trained_layers": config.dp.layers,
                        "covers": "training split, model weights",
                        "not_covered": "retrieval index (see index), validation split",
                    }
                ),
                "history": [vars(report) for report in trained.history],
            },
            "export": export.as_dict(),
            "index": {
                "mode": built.privacy.mode.value,
                "k": built.privacy.min_group_size,
                "noise_std": built.privacy.noise_std,
                "entries_per_class": built.privacy.entries_per_class,
                "classes_without_entries": list(built.skipped_classes),
            },
            "data": dataset.summary().model_dump(),
            "resources": {
                "total_seconds": round(time.monotonic() - started, 1),
                "peak_rss_mb": round(_peak_rss_mb(), 1),
            },
        }
        (partial / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        deidentification = (
            _check_deidentification(dataset.dicom_files, out, partial)
            if dataset.dicom_files
            else None
        )
        if out.exists():
            out.rmdir()
        partial.rename(out)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return BundleResult(out, card, metrics, deidentification)
