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
    from fedapp._runtime import FlowerRuntime

    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    with FlowerRuntime(tmp_path) as runtime:
        assert runtime.port > 0


def test_every_key_a_deployed_run_sends_is_one_the_app_declares() -> None:
    """Flower refuses a run whose config has a key the app does not declare ("Invalid run
    configuration"), which only the deployment test would otherwise find."""
    from fedapp import APP_DIR
    from protocol import FedAvgRequest, RunRequest, TrainingRequest, TuneRequest

    app = tomllib.loads((APP_DIR / "pyproject.toml").read_text())
    declared = app["tool"]["flwr"]["app"]["config"]
    request = RunRequest(
        training=TrainingRequest(task_id="pneumonia-cxr"),
        fedavg=FedAvgRequest(rounds=1),
        tune=TuneRequest(rounds=1),
    )
    sent = {"results-file": "/runs/r.json", **request.to_config()}
    assert set(sent) == set(declared)  # every key sent is declared, and every declared one sent
    # The app's own defaults are the request's: a run config Flower fills in from them reads
    # back as the default request.
    defaults = RunRequest.from_config(declared)
    assert defaults.training == TrainingRequest()
    assert defaults.fedavg == FedAvgRequest()
    assert defaults.tune == TuneRequest()
    assert declared["tune-rounds"] == 0  # a run that does not ask for tuning does not tune


def test_the_simulations_app_declares_the_consortiums_keys_and_only_its_own_besides() -> None:
    from fedapp import APP_DIR as CONSORTIUM_APP
    from simulations import APP_DIR as SIMULATION_APP

    def keys(folder: Path) -> set[str]:
        app = tomllib.loads((folder / "pyproject.toml").read_text())
        return set(app["tool"]["flwr"]["app"]["config"])

    consortium, simulation = keys(CONSORTIUM_APP), keys(SIMULATION_APP)
    assert consortium <= simulation
    # What only a simulation's run says: its jobs files (which a hospital's node never reads).
    assert simulation - consortium == {"jobs-file", "tune-jobs-file", "stage", "adapter-card"}
