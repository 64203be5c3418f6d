"""The default recipe: chosen from the data, explicit flags win, a budgeted search on validation."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from protocol import TaskSpec, TaskType
from site_agent.data import LocalDataset, Split
from site_agent.train import (
    MIN_STEPS,
    RUNG_STEPS,
    SEARCH_RATE,
    SEARCH_SHARE,
    DPConfig,
    HeadKind,
    RecipeFlags,
    TrainConfig,
    WeightsPolicy,
    default_zoo,
    plan_recipe,
    train_with_recipe,
)
from tests.site_agent.conftest import GRADED_TASK, graded_arrays, write_npz
from tests.test_cli import gsco

ZOO = default_zoo()


def _dataset(
    n_train: int,
    size: int = 28,
    *,
    task_type: TaskType = TaskType.BINARY,
    mirroring: bool = False,
    grades: int = 2,
) -> LocalDataset:
    labels = tuple(f"grade {i}" for i in range(grades))
    task = TaskSpec(
        task_id="t", modality="x-ray", labels=labels, task_type=task_type, mirroring=mirroring
    )
    rng = np.random.default_rng(0)

    def split(n: int) -> Split:
        return Split(
            rng.integers(0, 255, (n, size, size, 1), dtype=np.uint8),
            np.arange(n, dtype=np.int64) % grades,
        )

    return LocalDataset(task, split(n_train), split(40), split(40), "npz")


def test_batches_epochs_and_patience_follow_the_set_size() -> None:
    recipe = plan_recipe(_dataset(546), RecipeFlags(), ZOO, base=TrainConfig())
    config = recipe.config
    assert config.batch_size == 64  # about 30 steps per epoch, at least 64 from 256 images
    assert (config.backbone, config.weights) == ("resnet18", WeightsPolicy.SCRATCH)
    assert config.learning_rate == pytest.approx(3e-3)  # from scratch
    assert config.epochs >= 12
    assert config.epochs * math.ceil(546 / 64) >= MIN_STEPS
    assert config.patience >= config.epochs // 2
    assert config.input_size == 28  # the images' own size: never upsampled
    assert not config.flip  # the task does not allow mirroring
    assert config.epoch_bn_stats  # each epoch's own batch-norm statistics
    assert set(recipe.reasons) >= {"batch_size", "learning_rate", "epochs", "input_size", "flip"}
    big = plan_recipe(_dataset(4708), RecipeFlags(), ZOO, base=TrainConfig()).config
    assert big.batch_size == 128
    assert big.backbone == "resnet18"
    assert big.epochs == 12
    tiny = plan_recipe(_dataset(100), RecipeFlags(), ZOO, base=TrainConfig()).config
    assert tiny.batch_size == 32
    assert tiny.epochs * math.ceil(100 / tiny.batch_size) >= MIN_STEPS  # more epochs


def test_mirroring_follows_the_task_and_flags_win() -> None:
    mirrored = plan_recipe(_dataset(300, mirroring=True), RecipeFlags(), ZOO, base=TrainConfig())
    assert mirrored.config.flip
    flags = RecipeFlags(
        backbone="resnet18", weights=WeightsPolicy.SCRATCH, input_size=32, batch_size=8,
        learning_rate=0.01, epochs=3, patience=2, flip=False,
    )  # fmt: skip
    given = plan_recipe(_dataset(300, mirroring=True), flags, ZOO, base=TrainConfig())
    config = given.config
    assert (config.backbone, config.input_size, config.batch_size) == ("resnet18", 32, 8)
    assert (config.learning_rate, config.epochs, config.patience, config.flip) == (
        0.01, 3, 2, False,
    )  # fmt: skip
    assert len(given.candidates) == 1  # nothing left to search
    assert all(given.reasons[key] == "given" for key in ("batch_size", "epochs", "flip"))


def test_the_search_tries_what_fits_its_share_of_the_budget() -> None:
    recipe = plan_recipe(_dataset(600), RecipeFlags(), ZOO, base=TrainConfig())
    assert {(c.backbone, c.weights, c.learning_rate) for c in recipe.candidates} == {
        ("resnet18", WeightsPolicy.SCRATCH, 3e-3),
        ("resnet18", WeightsPolicy.SCRATCH, SEARCH_RATE),  # the plain loop's 1e-3
    }
    # At 28 px a Lite0 step costs about 2-3x ResNet-18's: measured, and named as left out.
    assert "tf_efficientnet_lite0" in recipe.reasons["search_left_out"]
    assert all(c.head is HeadKind.SOFTMAX for c in recipe.candidates)
    steps = math.ceil(600 / recipe.config.batch_size)
    assert recipe.rung_epochs == min(math.ceil(RUNG_STEPS / steps), recipe.config.epochs // 6)
    extra = (len(recipe.candidates) - 1) * recipe.rung_epochs
    assert extra <= SEARCH_SHARE * recipe.config.epochs  # the same network: the same step cost
    graded = plan_recipe(
        _dataset(600, task_type=TaskType.ORDINAL, grades=4), RecipeFlags(), ZOO, base=TrainConfig()
    )
    assert HeadKind.CUMULATIVE_LINK in {c.head for c in graded.candidates}
    given_rate = plan_recipe(
        _dataset(600), RecipeFlags(learning_rate=2e-3), ZOO, base=TrainConfig()
    )
    assert {c.learning_rate for c in given_rate.candidates} == {2e-3}


def test_no_search_under_dp_or_from_given_weights() -> None:
    dp = TrainConfig(dp=DPConfig(epsilon=8.0, delta=1e-4))
    private = plan_recipe(_dataset(600), RecipeFlags(), ZOO, base=dp, searchable=False)
    assert len(private.candidates) == 1
    assert private.config.backbone == "tf_efficientnet_lite0"  # pretrained features for DP
    assert "DP-SGD" in private.reasons["backbone"]


def test_a_big_image_is_halved_only_when_the_budget_says_so() -> None:
    roomy = plan_recipe(_dataset(64, size=64), RecipeFlags(), ZOO, base=TrainConfig())
    assert roomy.config.input_size == 64
    tight = plan_recipe(
        _dataset(64, size=64), RecipeFlags(), ZOO, base=TrainConfig(), max_minutes=0.001
    )
    assert tight.config.input_size < 64
    assert "halved" in tight.reasons["input_size"]


def test_epochs_are_cut_so_that_the_whole_schedule_fits_the_budget() -> None:
    """At the images' own 28 px nothing is halved: fewer epochs, each schedule completed."""
    roomy = plan_recipe(_dataset(4708), RecipeFlags(), ZOO, base=TrainConfig())
    assert roomy.config.epochs == 12
    assert "cut" not in roomy.reasons["epochs"]
    tight = plan_recipe(_dataset(4708), RecipeFlags(), ZOO, base=TrainConfig(), max_minutes=0.3)
    assert 1 <= tight.config.epochs < 12
    assert "cut to" in tight.reasons["epochs"]
    assert tight.config.patience == max(4, tight.config.epochs // 2)
    given = plan_recipe(
        _dataset(4708), RecipeFlags(epochs=12), ZOO, base=TrainConfig(), max_minutes=0.3
    )
    assert given.config.epochs == 12  # a given number of epochs is the user's to keep


@pytest.mark.slow
def test_the_search_keeps_the_best_validation_loss_and_records_its_trials() -> None:
    data = _dataset(96)
    recipe = plan_recipe(data, RecipeFlags(epochs=8), ZOO, base=TrainConfig())
    rung = recipe.rung_epochs
    assert rung >= 1
    assert len(recipe.candidates) == 2
    seen = []
    trained, settled = train_with_recipe(data, recipe, ZOO, on_trial=seen.append)
    assert len(settled.trials) == 2 == len(seen)
    kept = [t for t in settled.trials if t.kept]
    assert len(kept) == 1
    assert kept[0].val_loss == min(t.val_loss for t in settled.trials)
    assert all(t.epochs == rung for t in settled.trials)
    assert settled.config.learning_rate == kept[0].learning_rate
    assert len(trained.history) > rung  # the winner went on from its trial
    assert "kept" in settled.reasons["search"]


@pytest.mark.slow
def test_gsco_site_train_with_nothing_but_data_and_a_task_file(tmp_path: Path) -> None:
    """A new user's first run: the recipe, its trials, and both in metrics.json and the card."""
    data = write_npz(tmp_path / "knee.npz", **graded_arrays(grades=4, per_grade=30))
    (tmp_path / "knee.yaml").write_text(GRADED_TASK)
    out = tmp_path / "bundle"
    result = gsco(
        "site", "train", "--site-id", "st-marys", "--task-file", str(tmp_path / "knee.yaml"),
        "--data", str(data), "--out", str(out), "--index-k", "5", "--max-minutes", "4",
        "--epochs", "6",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "recipe: 28 px" in result.stdout
    assert "search: 3 candidates" in result.stdout  # two rates, and the ordinal head
    assert "not tried: tf_efficientnet_lite0" in result.stdout  # its step costs too much
    assert result.stderr.count("trial ") == 3, result.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    recipe = metrics["training"]["recipe"]
    assert len(recipe["trials"]) == 3
    assert sum(t["kept"] for t in recipe["trials"]) == 1
    card = json.loads((out / "card.json").read_text())
    assert len(card["training_recipe"]["trials"]) == 3
    assert card["training_recipe"]["input_size"] == 28
