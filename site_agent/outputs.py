"""Where a training run writes, beside the bundle folder ``OUT`` (no heavy imports here).

- ``OUT/``: the bundle (written as ``.OUT.partial`` and renamed when complete);
- ``OUT.checkpoints/``: ``best.safetensors`` (the lowest validation loss so
  far) and ``last.safetensors`` (the last epoch); kept after the run, and
  after an interrupted one, so that trained weights are never lost;
- ``OUT.deidentification.json``: the DICOM de-identification report, never
  inside the bundle.
"""

from __future__ import annotations

from pathlib import Path

from site_agent.errors import BundleExistsError

__all__ = ["checkpoints_path", "deidentification_report_path", "ensure_new_output"]


def checkpoints_path(out: Path) -> Path:
    """The checkpoint folder of bundle ``out``."""
    return out.with_name(f"{out.name}.checkpoints")


def deidentification_report_path(out: Path) -> Path:
    """The DICOM de-identification report of bundle ``out``."""
    return out.with_name(f"{out.name}.deidentification.json")


def ensure_new_output(out: Path) -> None:
    """Raises :class:`BundleExistsError` unless ``out`` is absent or an empty folder."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise BundleExistsError(f"{out} exists and is not empty; choose another --out")
