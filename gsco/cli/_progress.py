"""A rich progress bar for training (the site agent's TrainingObserver)."""

from __future__ import annotations

from types import TracebackType
from typing import TYPE_CHECKING

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)

from gsco.cli._common import console

if TYPE_CHECKING:  # torch stays unimported until training starts
    from site_agent.train import EpochReport, Trial


class TrainingProgress:
    """Shows steps of the current epoch with the live loss, and one line per epoch."""

    def __init__(self) -> None:
        self._console = console(stderr=True)
        self._progress = Progress(
            TextColumn("[bold]epoch {task.fields[epoch]}/{task.fields[epochs]}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]:.4f}"),
            TimeElapsedColumn(),
            console=self._console,
            transient=True,
        )
        self._task: TaskID | None = None
        self._epochs = 0

    def __enter__(self) -> TrainingProgress:
        self._progress.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._progress.stop()

    def on_start(self, epochs: int, steps_per_epoch: int) -> None:
        """Training (or one recipe candidate's trial) begins."""
        self._epochs = epochs
        if self._task is not None:
            self._progress.remove_task(self._task)
        self._task = self._progress.add_task(
            "train", total=steps_per_epoch, epoch=1, epochs=epochs, loss=float("nan")
        )

    def on_step(self, epoch: int, step: int, loss: float) -> None:
        """Advances the bar."""
        if self._task is not None:
            self._progress.update(self._task, completed=step, epoch=epoch, loss=loss)

    def on_epoch(self, report: EpochReport) -> None:
        """Prints the epoch's validation result."""
        auc = f"{report.val_auc:.3f}" if report.val_auc is not None else "n/a"
        mark = " *" if report.improved else ""
        self._progress.console.print(
            f"epoch {report.epoch}/{self._epochs} loss {report.train_loss:.3f} "
            f"val {report.val_loss:.3f} acc {report.val_accuracy:.3f} auc {auc} "
            f"{report.seconds:.0f}s{mark}",
            soft_wrap=True,
        )
        if self._task is not None:
            self._progress.reset(self._task)

    def on_trial(self, trial: Trial) -> None:
        """Prints one recipe candidate's score after its trial epochs."""
        auc = f"{trial.val_auc:.3f}" if trial.val_auc is not None else "n/a"
        verdict = "kept, training on" if trial.kept else "dropped"
        self._progress.console.print(
            f"trial {trial.name}: {trial.epochs} epochs, val loss {trial.val_loss:.3f} "
            f"acc {trial.val_accuracy:.3f} auc {auc} {trial.seconds:.0f}s: {verdict}",
            soft_wrap=True,
        )
