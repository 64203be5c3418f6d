"""A run's requests travel as Flower's run config and read back exactly, or not at all."""

from __future__ import annotations

import pytest

from protocol import (
    FedAvgRequest,
    Mode,
    RunRequest,
    SchemaError,
    TrainingRequest,
    TuneRequest,
)

FULL = RunRequest(
    min_sites=3,
    wait_s=30.0,
    timeout_s=600.0,
    training=TrainingRequest(
        task_id="pneumonia-cxr", backbone="resnet18", epochs=2, max_minutes=1.5,
        batch_size=16, learning_rate=5e-4, input_size=28, max_eval_images=64, seed=7,
    ),
    fedavg=FedAvgRequest(
        rounds=2, local_epochs=3, dp_noise_multiplier=0.8, dp_clipping_norm=2.0,
        dp_delta=1e-6, aggregation="median",
    ),
    tune=TuneRequest(
        rounds=2, local_epochs=1, examples_per_site=40, policy_cases_per_site=20,
        modes=(Mode.GSCO, Mode.MOED), recipe={"rank": 4, "last_layers": 2},
        base_model="smollm2-135m-instruct", dp_noise_multiplier=0.5, dp_clipping_norm=0.1,
    ),
)  # fmt: skip


def test_a_request_reads_back_as_it_was_sent() -> None:
    config = FULL.to_config()
    assert all(type(v) in (int, float, str) for v in config.values())  # Flower's plain values
    assert RunRequest.from_config(config) == FULL
    assert RunRequest.from_config(RunRequest().to_config()) == RunRequest()


def test_none_travels_as_zero_or_empty_and_reads_back_as_none() -> None:
    config = RunRequest().to_config()
    assert (config["max-minutes"], config["input-size"], config["tune-base-model"]) == (0, 0, "")
    training = TrainingRequest.from_config(config)
    assert (training.max_minutes, training.input_size, training.max_eval_images) == (None,) * 3


@pytest.mark.parametrize(
    ("key", "value", "problem"),
    [
        ("epochs", "5", "epochs: str '5' is not int"),
        ("epochs", 5.0, "epochs: float"),
        ("epochs", True, "epochs: bool"),
        ("epochs", -1, "epochs: Input should be greater than or equal to 0"),
        ("batch-size", 10**9, "batch-size"),
        ("learning-rate", "0.001", "learning-rate: str"),
        ("learning-rate", float("nan"), "learning-rate"),
        ("task", "../etc", "task"),
        ("task", 7, "task: int"),
        ("backbone", "resnet18; rm -rf /", "backbone"),
        ("seed", 2**70, "seed"),
        ("fedavg-rounds", 1.5, "fedavg-rounds"),
        ("aggregation", "mean-of-my-choosing", "aggregation"),
        ("dp-delta", 1, "dp-delta"),
        ("tune-modes", "gsco,evil", "tune-modes.1"),
        ("tune-modes", ",", "tune-modes"),
        ("tune-modes", 3, "tune-modes: expected a string"),
        ("tune-recipe", "{not json", "tune-recipe: not JSON"),
        ("tune-recipe", "[1, 2]", "tune-recipe"),
        ("tune-base-model", "/etc/passwd", "tune-base-model"),
        ("tune-base-model", "https://x/y", "tune-base-model"),
        ("min-sites", "3", "min-sites"),
        ("timeout-s", -5.0, "timeout-s"),
    ],
)
def test_a_run_config_value_of_the_wrong_kind_is_refused_by_name(
    key: str, value: object, problem: str
) -> None:
    config = {**FULL.to_config(), key: value}
    with pytest.raises(SchemaError) as raised:
        RunRequest.from_config(config)
    assert problem in str(raised.value)
