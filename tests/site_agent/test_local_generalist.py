"""The tuned generalist answering at the site: label scores as vLLM's constrained choice gives them.

On the real SmolLM2 weights with a LoRA adapter (peft), through the hub's own
engine pieces: the scores are the model's next-token probabilities over the
tokens that tell the labels apart, renormalised, and tuning moves them.
"""

from __future__ import annotations

import asyncio

import pytest
import torch

from generalist import SYSTEM, ArbitrationRequest, MoedEvidence, ReversedOrderAveraging
from protocol import Mode, TaskSpec
from site_agent.adapter import AdapterRecipe, AdapterTrainer, LocalGeneralist
from tests.adapters import TASK, examples, model_dir

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def trainer() -> AdapterTrainer:
    return AdapterTrainer(model_dir(), AdapterRecipe(last_layers=2, batch_size=8, seed=3))


def _next_token_probabilities(trainer: AdapterTrainer, text: str) -> torch.Tensor:
    ids = trainer.tokenizer(text, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logits = trainer.model(input_ids=torch.tensor([ids])).logits[0, -1]
    return torch.softmax(logits.double(), dim=0)


def test_scores_are_the_first_label_tokens_renormalised(trainer: AdapterTrainer) -> None:
    local = LocalGeneralist(trainer, "adapter-pneumonia-cxr")
    text = trainer.prompt_text(examples(2)[0].prompt, SYSTEM)
    scores = local.label_scores(text, TASK.labels)
    assert set(scores) == set(TASK.labels)
    assert sum(scores.values()) == pytest.approx(1.0)
    first = {
        label: trainer.tokenizer(label, add_special_tokens=False)["input_ids"][0]
        for label in TASK.labels
    }
    p = _next_token_probabilities(trainer, text)  # float32: 1e-4 apart from one position's
    mass = {label: float(p[token]) for label, token in first.items()}
    total = sum(mass.values())
    for label in TASK.labels:
        assert scores[label] == pytest.approx(
            mass[label] / total, rel=1e-4
        )  # float32 logits, computed for one position or all


def test_labels_that_share_their_first_tokens_are_told_apart_where_they_part(
    trainer: AdapterTrainer,
) -> None:
    labels = ("left lower lobe", "left upper lobe", "right lung")
    split = [trainer.tokenizer(x, add_special_tokens=False)["input_ids"] for x in labels]
    assert split[0][0] == split[1][0] != split[2][0]  # "left" twice, then they part
    local = LocalGeneralist(trainer, "adapter")
    text = trainer.prompt_text("Which region? Options: " + ", ".join(labels), SYSTEM)
    scores = local.label_scores(text, labels)
    assert sum(scores.values()) == pytest.approx(1.0)
    # The two "left" labels share the first position's mass, so the walk went further
    # only among them would be wrong: at the first position the three part in two.
    p = _next_token_probabilities(trainer, text)
    left, right = float(p[split[0][0]]), float(p[split[2][0]])
    assert scores["right lung"] == pytest.approx(
        right / (2 * left + right), rel=1e-4
    )  # float32 logits, computed for one position or all
    assert scores["left lower lobe"] == pytest.approx(scores["left upper lobe"])


def test_it_answers_as_a_text_only_backend_and_tuning_moves_its_scores(
    trainer: AdapterTrainer,
) -> None:
    local = LocalGeneralist(trainer, "adapter-pneumonia-cxr")
    averaged = ReversedOrderAveraging(local)
    requests = [
        ArbitrationRequest(
            task=TASK,
            mode=Mode.MOED,
            moed=(MoedEvidence(label, 0.8 + 0.01 * i), MoedEvidence(label, 0.75)),
        )
        for i, label in enumerate(TASK.labels * 4)
    ]

    def right(backend: object) -> float:
        """The mean score of the specialists' label (what the examples teach)."""
        total = 0.0
        for request in requests:
            answer = asyncio.run(backend.arbitrate(request))  # type: ignore[attr-defined]
            assert answer.scores is not None
            total += answer.scores[request.moed[0].label]
        return total / len(requests)

    before = asyncio.run(averaged.arbitrate(requests[0]))
    assert before.model == "adapter-pneumonia-cxr"
    assert not before.saw_image
    assert before.option_orders == 2
    assert "The image itself is not available to you" in before.prompt
    # The examples list the options in the task's order: ask in that order alone.
    untuned = right(local)
    for _ in range(4):  # four FedAvg-like rounds of two epochs, a fresh optimiser each
        trainer.train(examples(), epochs=2)  # learnable: the answer is the specialists' label
    assert right(local) > untuned + 0.1  # measured: 0.55 -> 0.72
    three = TaskSpec(
        task_id="t3", modality="chest X-ray", labels=("a", "b", "c"), task_type="multiclass"
    )
    answer = asyncio.run(local.arbitrate(ArbitrationRequest(task=three, mode=Mode.GENERALIST)))
    assert answer.scores is not None
    assert sum(answer.scores.values()) == pytest.approx(1.0)
