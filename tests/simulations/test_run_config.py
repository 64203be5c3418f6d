"""The run config reaches Flower's ServerApp whole: paths with apostrophes, quotes, spaces."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from flwr.common.config import parse_config_args

from protocol import flat_toml

AWKWARD = {
    "data-dir": '/srv/St Mary\'s "East" wing/medmnist',
    "out": "C:\\reports\\o'brien",
    "note": "line one\nline two\ttabbed, ünïcode, 🩻",
    "sites": 3,
    "fraction": 0.5,
    "fedavg": True,
}


def test_every_value_round_trips_through_the_toml_document() -> None:
    assert tomllib.loads(flat_toml(AWKWARD)) == AWKWARD


def test_flower_reads_the_file_as_it_was_written(tmp_path: Path) -> None:
    path = tmp_path / "run-config.toml"
    path.write_text(flat_toml(AWKWARD), encoding="utf-8")
    assert parse_config_args([str(path)]) == AWKWARD


@pytest.mark.slow
def test_the_runtime_starts_without_the_environment_on_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The SuperLink finds flower-superexec beside this interpreter (a venv's gsco run by path)."""
    from simulations._runtime import FlowerRuntime

    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    with FlowerRuntime(tmp_path) as runtime:
        assert runtime.port > 0


def test_every_key_a_deployed_run_sends_is_one_the_app_declares() -> None:
    """Flower refuses a run whose config has a key the app does not declare ("Invalid run
    configuration"), which only the deployment test would otherwise find."""
    from federation._run import RunRequest
    from simulations._runtime import APP_DIR

    app = tomllib.loads((APP_DIR / "pyproject.toml").read_text())
    declared = app["tool"]["flwr"]["app"]["config"]
    sent = RunRequest(task="pneumonia-cxr", fedavg_rounds=1, tune_rounds=1).run_config(
        Path("/runs/r.json")
    )
    assert set(sent) - set(declared) == set()
    assert declared["tune-rounds"] == 0  # a run that does not ask for tuning does not tune
