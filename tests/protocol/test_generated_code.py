"""The committed protobuf code is what scripts/gen-proto.sh makes from the .proto."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_generated_code_is_up_to_date(tmp_path: Path) -> None:
    subprocess.run(
        ["bash", str(ROOT / "scripts" / "gen-proto.sh"), str(tmp_path)],
        check=True,
        cwd=ROOT,
        env={**os.environ, "PYTHON": sys.executable},
    )
    committed = ROOT / "protocol" / "_pb"
    for generated in sorted(tmp_path.iterdir()):
        assert generated.read_text() == (committed / generated.name).read_text(), (
            f"{generated.name} is stale: run scripts/gen-proto.sh"
        )
