"""Adapter tuning with peft on the real SmolLM2 weights.

It learns, FedAvg averages, and recipes vLLM cannot serve are refused.
"""

from __future__ import annotations

import pytest
import torch

from site_agent.adapter import AdapterRecipe, AdapterTrainer, fedavg_states
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


def test_fedavg_is_the_example_weighted_mean() -> None:
    a = {"w": torch.tensor([1.0, 2.0])}
    b = {"w": torch.tensor([4.0, 8.0])}
    averaged = fedavg_states([(a, 1), (b, 3)])
    assert torch.allclose(averaged["w"], torch.tensor([3.25, 6.5]))
    with pytest.raises(AdapterTrainingError):
        fedavg_states([(a, 1), ({"v": torch.zeros(2)}, 1)])
    with pytest.raises(AdapterTrainingError):
        fedavg_states([(a, 0)])


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
