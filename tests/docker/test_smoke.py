"""The containers' smoke test (``docker/smoke.sh``), for real: buildah builds the registry
and hub images from a Debian root filesystem, podman runs them.

With ``--generalist`` the CPU generalist image (vLLM, SmolLM2) runs too and the hub
container answers in gsco mode through it.

Long (a first run makes the base image and installs the images' packages: minutes) and
it needs root with Debian's buildah, podman, mmdebstrap and runc: ``scripts/test.sh
--long`` runs it; it fails, not skips, where those are missing.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.site_agent.conftest import medmnist_dir

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.long


@pytest.mark.parametrize("flags", [[], ["--generalist"]], ids=["registry-hub", "generalist"])
def test_registry_and_hub_containers_serve_and_keep_what_they_acknowledged(
    tmp_path: Path, flags: list[str]
) -> None:
    missing = [t for t in ("buildah", "podman", "mmdebstrap") if shutil.which(t) is None]
    assert not missing, f"install Debian's {' '.join(missing)} (apt-get install ...) to run this"
    assert os.geteuid() == 0, "buildah's chroot builds and mmdebstrap need root"
    summary = tmp_path / "smoke.json"
    done = subprocess.run(
        ["bash", str(ROOT / "docker" / "smoke.sh"), *flags],
        capture_output=True,
        text=True,
        timeout=3600,
        env=dict(os.environ, GSCO_DATA_DIR=str(medmnist_dir()), GSCO_SMOKE_OUT=str(summary)),
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    result = json.loads(summary.read_text())
    assert result["passed"] is True
    mode = "gsco" if flags else "ensemble"  # with the generalist, it decides
    assert f"in {mode} mode" in done.stdout
    assert "0 failure(s)" in done.stdout
