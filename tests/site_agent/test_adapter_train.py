"""Adapter tuning with peft on the real SmolLM2 weights.

It learns, its weights round-trip, it saves only the keys a registry accepts, and
recipes vLLM cannot serve are refused. (FedAvg is Flower's: fedapp._aggregation.)
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from site_agent.adapter import AdapterRecipe, AdapterTrainer
from site_agent.errors import AdapterTrainingError
from tests.adapters import examples, model_dir

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def trainer() -> AdapterTrainer:
    return AdapterTrainer(model_dir(), AdapterRecipe(last_layers=2, batch_size=8, seed=1))


def _loss(trainer: AdapterTrainer) -> float:
    with torch.no_grad():
        encoded = trainer._encode(examples())
        return float(trainer._batch_loss(encoded, {"normal": 1.0, "pneumonia": 1.0}))


def test_training_lowers_the_loss_of_the_label_tokens(trainer: AdapterTrainer) -> None:
    before = _loss(trainer)
    start = trainer.state()
    update = trainer.train(examples(), epochs=3)
    assert update.examples == 16
    assert _loss(trainer) < before * 0.7
    changed = [name for name in start if not torch.equal(start[name], update.state[name])]
    assert changed  # the B matrices start at zero and moved
    assert all(".lora_" in name for name in update.state)
    layers = {int(name.split(".layers.")[1].split(".")[0]) for name in update.state}
    assert layers == {trainer.num_layers - 2, trainer.num_layers - 1}  # only the top two


def test_set_state_round_trips_and_refuses_other_shapes(trainer: AdapterTrainer) -> None:
    state = trainer.state()
    zero = {name: torch.zeros_like(t) for name, t in state.items()}
    trainer.set_state(zero)
    assert all(torch.count_nonzero(t) == 0 for t in trainer.state().values())
    trainer.set_state(state)
    assert all(torch.equal(trainer.state()[n], state[n]) for n in state)
    name = next(iter(state))
    with pytest.raises(AdapterTrainingError, match="shape"):
        trainer.set_state({**state, name: torch.zeros(3, 3)})
    with pytest.raises(AdapterTrainingError, match="differ"):
        trainer.set_state({k: v for k, v in state.items() if k != name})


def test_saved_config_holds_only_the_allowed_keys(trainer: AdapterTrainer, tmp_path: Path) -> None:
    import json

    trainer.save(tmp_path, "smollm2-135m-instruct")
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == "smollm2-135m-instruct"  # never the site's path
    assert config["layers_to_transform"] == [trainer.num_layers - 2, trainer.num_layers - 1]
    assert "auto_mapping" not in config
    assert "revision" not in config
    from peft import LoraConfig

    assert LoraConfig.from_pretrained(str(tmp_path)).r == trainer.recipe.rank  # peft reads it


@pytest.mark.parametrize(
    ("recipe", "message"),
    [
        (AdapterRecipe(rank=32), "rank"),
        (AdapterRecipe(target_modules=("lm_head",)), "cannot be served"),
        (AdapterRecipe(target_modules=("embed_tokens", "q_proj")), "cannot be served"),
        (AdapterRecipe(last_layers=0), "last_layers"),
        (AdapterRecipe(learning_rate=0.0), "positive"),
    ],
)
def test_recipes_vllm_cannot_serve_are_refused(recipe: AdapterRecipe, message: str) -> None:
    with pytest.raises(AdapterTrainingError, match=message):
        recipe.check()


def test_no_examples_is_an_error(trainer: AdapterTrainer) -> None:
    with pytest.raises(AdapterTrainingError, match="no evidence"):
        trainer.train([])
