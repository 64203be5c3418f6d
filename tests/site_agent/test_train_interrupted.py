"""Ctrl-C at any stage of ``gsco site train`` ends the same way: exit 130, no bundle, one line.

Each stage is interrupted deterministically (:mod:`tests.site_agent.interrupt_at`
sends the real SIGINT as the stage begins), not by waiting for it on the clock.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from site_agent import init_site
from tests.site_agent.conftest import medmnist_dir

HERE = Path(__file__).resolve().parent

pytestmark = pytest.mark.slow

#: stage: what the weights left behind are (none before the first checkpoint)
KEPT = {
    "search": None,
    "epochs": "best.safetensors",
    "calibration": "last.safetensors",
    "export": "last.safetensors",
    "index": "last.safetensors",
    "signing": "last.safetensors",
}


@pytest.mark.parametrize("stage", sorted(KEPT))
def test_ctrl_c_at_any_stage_leaves_no_bundle_and_says_what_was_kept(
    tmp_path: Path, stage: str
) -> None:
    home = init_site(tmp_path / "home", "st-marys").root
    out = tmp_path / "bundle"
    checkpoints = tmp_path / "bundle.checkpoints"
    recipe = [] if stage == "search" else ["--backbone", "resnet18", "--epochs", "2"]
    done = subprocess.run(
        [
            sys.executable, str(HERE / "interrupt_at.py"), stage,
            "site", "train", "--task", "pneumonia-cxr", "--home", str(home), "--sign",
            "--data", str(medmnist_dir() / "pneumoniamnist.npz"), "--out", str(out),
            "--weights", "scratch", "--max-train-images", "64", "--max-eval-images", "32",
            *recipe,
        ],
        capture_output=True, text=True, timeout=600, env=dict(os.environ, NO_COLOR="1"),
    )  # fmt: skip
    assert done.returncode == 130, done.stderr[-3000:]
    message = done.stderr.replace("\n", "")
    assert not out.exists()  # not half a bundle, nor an unsigned one
    assert not (tmp_path / ".bundle.partial").exists()
    kept = KEPT[stage]
    if kept is None:
        assert "interrupted before any checkpoint was written" in message
        assert not checkpoints.exists()
    else:
        assert "interrupted: no bundle was written" in message
        assert str(checkpoints) in message
        assert kept in message
        assert (checkpoints / kept).is_file()
    assert "Traceback" not in done.stderr
