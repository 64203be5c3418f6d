"""From a loaded dataset to a bundle directory: train, calibrate, evaluate, export, index."""

from __future__ import annotations

import json
import os
import resource
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch

from protocol import (
    FederatedTraining,
    HeldOutMetrics,
    RecipeTrial,
    SpecialistCard,
    TrainingRecipe,
    canonical_json,
    check_index,
)
from site_agent._compat import torch_threads
from site_agent.data import LocalDataset
from site_agent.deid import DeidentificationReport, build_report
from site_agent.errors import DataError, DeidentificationError
from site_agent.export import ExportReport, export_onnx
from site_agent.index import BuiltIndex, IndexSettings, build_index
from site_agent.outputs import checkpoints_path, deidentification_report_path, ensure_new_output
from site_agent.train import (
    BackboneZoo,
    Evaluation,
    Recipe,
    TrainConfig,
    TrainedSpecialist,
    TrainingObserver,
    Trial,
    default_zoo,
    evaluate,
    train_specialist,
    train_with_recipe,
)

__all__ = [
    "BundleResult",
    "checkpoints_path",
    "deidentification_report_path",
    "ensure_new_output",
    "write_bundle",
]

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


def _card_recipe(config: TrainConfig, input_size: int, recipe: Recipe | None) -> TrainingRecipe:
    trials = recipe.trials if recipe is not None else ()
    return TrainingRecipe(
        input_size=input_size,
        batch_size=config.batch_size,
        learning_rate=config.learning_rate,
        epochs=config.epochs,
        patience=config.patience,
        flip=config.flip,
        head=config.head.value,
        search=recipe.search[:300] if recipe is not None else "none: the configuration was given",
        trials=tuple(
            RecipeTrial(
                name=trial.name[:300],
                epochs=trial.epochs,
                val_loss=trial.val_loss,
                val_auc=trial.val_auc,
                kept=trial.kept,
            )
            for trial in trials[:16]
        ),
    )


def _check_deidentification(
    dicom_files: Sequence[Path], out: Path, partial: Path
) -> DeidentificationReport:
    """Writes the de-identification report; raises if an identifying value reached an output."""
    outputs = {}
    for folder, name in ((partial, out.name), (checkpoints_path(out), checkpoints_path(out).name)):
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


def _train(
    dataset: LocalDataset,
    out: Path,
    config: TrainConfig,
    zoo: BackboneZoo | None,
    observer: TrainingObserver | None,
    initial_state: Mapping[str, torch.Tensor] | None,
    recipe: Recipe | None,
    on_trial: Callable[[Trial], None] | None,
) -> tuple[TrainedSpecialist, TrainConfig, Recipe | None]:
    """Trains as ``config`` says, or runs the recipe's search first (its config then rules)."""
    if recipe is None:
        trained = train_specialist(
            dataset,
            config,
            zoo or default_zoo(),
            checkpoint_dir=checkpoints_path(out),
            observer=observer,
            initial_state=initial_state,
        )
        return trained, config, None
    with torch_threads(recipe.config.threads or os.cpu_count() or 1):
        trained, recipe = train_with_recipe(
            dataset,
            recipe,
            zoo or default_zoo(),
            checkpoint_dir=checkpoints_path(out),
            observer=observer,
            on_trial=on_trial,
            initial_state=initial_state,
        )
    return trained, recipe.config, recipe


def _specialist_card(
    dataset: LocalDataset,
    trained: TrainedSpecialist,
    test: Evaluation,
    built: BuiltIndex,
    config: TrainConfig,
    recipe: Recipe | None,
    *,
    site_id: str,
    version: int,
    license_id: str,
    federation: FederatedTraining | None,
) -> SpecialistCard:
    """The card of the trained specialist: what it is, how it was made, how it scored."""
    return SpecialistCard(
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
            quadratic_weighted_kappa=test.quadratic_weighted_kappa,
            mean_absolute_error=test.mean_absolute_error,
        ),
        data_summary=dataset.summary(),
        index=built.privacy,
        training_privacy=trained.privacy,
        federation=federation,
        training_recipe=_card_recipe(config, trained.preprocessing.input_size[0], recipe),
        site_id=site_id,
        version=version,
        license=license_id,
        created_at=datetime.now(UTC),
    )


def _metrics(
    dataset: LocalDataset,
    card: SpecialistCard,
    trained: TrainedSpecialist,
    test: Evaluation,
    config: TrainConfig,
    recipe: Recipe | None,
    export: ExportReport,
    built: BuiltIndex,
    started: float,
    stage_seconds: dict[str, float],
) -> dict[str, object]:
    """``metrics.json``: the test scores, calibration, training history, export and index."""
    return {
        "task_id": card.task_id,
        "backbone": card.backbone,
        "test": test.as_dict(),
        "calibration": {
            "method": "temperature_scaling",
            "temperature": trained.temperature,
            "warning": trained.calibration_warning,
        },
        "training": {
            "epochs_run": len(trained.history),
            "best_epoch": trained.best_epoch,
            "stop_reason": trained.stop_reason,
            "seconds": round(trained.train_seconds, 1),
            "config": _config_dict(config),
            "recipe": recipe.as_dict() if recipe is not None else None,
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
            # where the time went: search, training and calibration; ONNX export and its
            # parity check; the retrieval index
            "stage_seconds": stage_seconds,
            "peak_rss_mb": round(_peak_rss_mb(), 1),
        },
    }


def write_bundle(
    dataset: LocalDataset,
    out: Path,
    *,
    site_id: str,
    version: int | Callable[[str], int],
    license_id: str,
    config: TrainConfig,
    index: IndexSettings,
    zoo: BackboneZoo | None = None,
    observer: TrainingObserver | None = None,
    initial_state: Mapping[str, torch.Tensor] | None = None,
    federation: FederatedTraining | None = None,
    recipe: Recipe | None = None,
    on_trial: Callable[[Trial], None] | None = None,
) -> BundleResult:
    """Trains a specialist on ``dataset`` and writes the bundle folder ``out``.

    ``out`` receives ``model.onnx``, ``card.json``, ``index.npz`` and ``metrics.json``.
    When the images came from DICOM files, the de-identification report goes to
    ``<out>.deidentification.json`` (see :mod:`site_agent.deid`).

    The bundle is assembled in a hidden sibling folder and renamed into place
    at the end, so a failure leaves no half-written bundle. Checkpoints
    (safetensors) go to ``<out>.checkpoints/``, outside the bundle.

    With a ``recipe`` (see :func:`site_agent.train.plan_recipe`) its search
    runs first and ``config`` is replaced by the configuration it keeps; the
    recipe and its trials go into ``metrics.json`` and the card. ``version``
    may be a function of the backbone trained (when the search chooses it).

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
        trained, config, recipe = _train(
            dataset, out, config, zoo, observer, initial_state, recipe, on_trial
        )
        trained_at = time.monotonic()
        test = evaluate(
            trained.test_probs, dataset.test.labels, dataset.task.labels, dataset.task.task_type
        )
        export = export_onnx(
            trained.net,
            trained.preprocessing,
            partial / "model.onnx",
            dataset.test.images[:PARITY_IMAGES],
            trained.temperature,
        )
        exported_at = time.monotonic()
        built = build_index(
            trained.embed(dataset.train.images), dataset.train.labels, dataset.task.labels, index
        )
        card = _specialist_card(
            dataset,
            trained,
            test,
            built,
            config,
            recipe,
            site_id=site_id,
            version=version if isinstance(version, int) else version(trained.backbone),
            license_id=license_id,
            federation=federation,
        )
        indexed_at = time.monotonic()
        check_index(built.arrays, card)  # the same contract the registry enforces
        np.savez(partial / "index.npz", **built.arrays)  # type: ignore[arg-type]
        (partial / "card.json").write_bytes(canonical_json(card) + b"\n")
        stage_seconds = {
            "training": round(trained_at - started, 1),
            "export": round(exported_at - trained_at, 1),
            "index": round(indexed_at - exported_at, 1),
        }
        metrics = _metrics(
            dataset, card, trained, test, config, recipe, export, built, started, stage_seconds
        )
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
