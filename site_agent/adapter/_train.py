"""LoRA tuning of the generalist on evidence examples, with ``peft``: one site's local update.

The site renders each validation case's MoED and RAD evidence with the hub's
own prompt template (:mod:`site_agent.adapter._examples`) and teaches the
generalist to answer the true label. Only the label tokens are scored: the
prompt is context, and the logits of every other position are never computed
(the vocabulary projection is a fifth of SmolLM2's cost per token).

What vLLM can serve decides the recipe's limits (see :class:`AdapterRecipe`):
plain LoRA on attention projections, no ``lm_head``, no DoRA, no
``modules_to_save``, rank at most the server's ``--max-lora-rank``.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from protocol import LORA_MODULES
from site_agent.adapter._base import load_base_model
from site_agent.adapter._examples import EvidenceExample
from site_agent.errors import AdapterTrainingError

if TYPE_CHECKING:
    import torch

__all__ = ["AdapterRecipe", "AdapterTrainer", "LocalUpdate"]

#: The projections vLLM's CPU and GPU LoRA kernels serve for Llama-family models.
SERVABLE_MODULES = frozenset(LORA_MODULES)


@dataclass(frozen=True)
class AdapterRecipe:
    """How the adapter is trained. Measured on this 2-core CPU (SmolLM2-135M, float32).

    ``last_layers`` adapts only the top layers: backpropagation then stops
    there, which is what makes tuning fit a demo on a CPU (about 0.3 s per
    example and epoch at 140 tokens with the top 6 of 30 layers).
    """

    rank: int = 8
    alpha: int = 16
    target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")
    last_layers: int | None = 6  # None: every layer
    learning_rate: float = 2e-3
    batch_size: int = 16
    local_epochs: int = 1
    max_examples: int = 240  # per site and round, drawn at random when there are more
    balance_classes: bool = True  # weight the loss so each label counts the same
    seed: int = 0
    extra: dict[str, str] = field(default_factory=dict)

    def check(self, max_rank: int = 16) -> None:
        """Raises :class:`AdapterTrainingError` for a recipe vLLM could not serve."""
        if not 1 <= self.rank <= max_rank:
            raise AdapterTrainingError(f"LoRA rank {self.rank} is outside 1..{max_rank}")
        unknown = set(self.target_modules) - SERVABLE_MODULES
        if unknown or not self.target_modules:
            raise AdapterTrainingError(
                f"target modules {sorted(unknown) or '(none)'} cannot be served; "
                f"use some of {', '.join(sorted(SERVABLE_MODULES))}"
            )
        if self.last_layers is not None and self.last_layers < 1:
            raise AdapterTrainingError("last_layers must be at least 1 (or None: all)")
        if self.learning_rate <= 0 or self.batch_size < 1 or self.local_epochs < 1:
            raise AdapterTrainingError("learning rate, batch size and epochs must be positive")
        if self.max_examples < 1:
            raise AdapterTrainingError("max_examples must be at least 1")

    def to_dict(self) -> dict[str, Any]:
        """The recipe as JSON-ready data (for the card)."""
        document = asdict(self)
        document["target_modules"] = list(self.target_modules)
        return document


def _move_to_root(weights: Path, module_root: str) -> None:
    """Renames peft's ``base_model.model.model.`` tensors to the served model's path.

    peft names the tensors after the module it wrapped (the language model alone);
    vLLM matches them against the whole served model, where a vision-language
    model's decoder is ``language_model.model``.
    """
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(weights))
    prefix = "base_model.model.model."
    if not all(name.startswith(prefix) for name in tensors):
        raise AdapterTrainingError(f"{weights}: tensor names outside {prefix}")
    moved = {
        f"base_model.model.{module_root}." + k.removeprefix(prefix): v for k, v in tensors.items()
    }
    save_file(moved, str(weights), metadata={"format": "pt"})


@dataclass(frozen=True)
class LocalUpdate:
    """One site's contribution to a round: adapter weights and what they were trained on."""

    state: dict[str, torch.Tensor]
    examples: int
    loss: float
    seconds: float


class AdapterTrainer:
    """The base model with a LoRA adapter, loaded once per site and trained round by round."""

    def __init__(
        self,
        model_dir: Path,
        recipe: AdapterRecipe | None = None,
        *,
        log: Callable[[str], None] | None = None,
    ) -> None:
        import torch
        from peft import LoraConfig, get_peft_model

        self.recipe = recipe or AdapterRecipe()
        self.recipe.check()
        self.model_dir = model_dir
        self._log = log or (lambda _: None)
        torch.manual_seed(self.recipe.seed)
        loaded = load_base_model(model_dir)
        self.tokenizer = loaded.tokenizer
        #: Where the served model's decoder layers are (the saved tensor names say it).
        self.module_root = loaded.module_root
        base = loaded.model
        layers = int(base.config.num_hidden_layers)
        recipe_layers = self.recipe.last_layers
        transform = (
            None
            if recipe_layers is None or recipe_layers >= layers
            else list(range(layers - recipe_layers, layers))
        )
        config = LoraConfig(
            r=self.recipe.rank,
            lora_alpha=self.recipe.alpha,
            target_modules=list(self.recipe.target_modules),
            layers_to_transform=transform,
            lora_dropout=0.0,
            bias="none",
            task_type="CAUSAL_LM",
        )
        self.model = get_peft_model(base, config)
        self.num_layers = layers

    # -- weights ---------------------------------------------------------------------------

    def state(self) -> dict[str, torch.Tensor]:
        """The adapter's weights (peft's names, without the adapter name)."""
        from peft import get_peft_model_state_dict

        return {k: v.detach().clone() for k, v in get_peft_model_state_dict(self.model).items()}

    def set_state(self, state: dict[str, torch.Tensor]) -> None:
        """Replaces the adapter's weights (the global model of a FedAvg round)."""
        from peft import set_peft_model_state_dict

        mine = self.state()
        if set(state) != set(mine):
            raise AdapterTrainingError(
                "the adapter weights do not match this recipe: "
                f"{len(set(state) ^ set(mine))} tensor names differ"
            )
        for name, tensor in state.items():
            if tuple(tensor.shape) != tuple(mine[name].shape):
                raise AdapterTrainingError(
                    f"adapter tensor {name} has shape {tuple(tensor.shape)}, "
                    f"expected {tuple(mine[name].shape)}"
                )
        set_peft_model_state_dict(self.model, state)

    def save(self, folder: Path, base_model: str) -> None:
        """Writes ``adapter_model.safetensors`` and ``adapter_config.json`` (peft's format).

        The config holds only the keys a registry accepts (see
        ``registry.check_adapter_config``): peft's own holds more (``auto_mapping``,
        ``revision``, patterns) that a plain LoRA does not need. It names
        ``base_model`` (the served model's name), not this site's folder, which
        would say where the site keeps its files.
        """
        import json

        folder.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(str(folder), safe_serialization=True)
        if self.module_root != "model":
            _move_to_root(folder / "adapter_model.safetensors", self.module_root)
        peft_config: Any = self.model.peft_config["default"]  # a LoraConfig
        layers = peft_config.layers_to_transform
        config = {
            "peft_type": "LORA",
            "task_type": "CAUSAL_LM",
            "base_model_name_or_path": base_model,
            "r": int(peft_config.r),
            "lora_alpha": int(peft_config.lora_alpha),
            "target_modules": sorted(peft_config.target_modules),
            "layers_to_transform": sorted(int(x) for x in layers) if layers else None,
            "bias": "none",
            "lora_dropout": float(peft_config.lora_dropout),
            "fan_in_fan_out": False,
            "use_rslora": False,
            "use_dora": False,
            "modules_to_save": None,
            "init_lora_weights": True,
            "inference_mode": True,
        }
        (folder / "adapter_config.json").write_text(json.dumps(config, indent=2) + "\n")

    # -- data ------------------------------------------------------------------------------

    def prompt_text(self, prompt: str, system: str) -> str:
        """The text vLLM's chat endpoint feeds the model for this system and user prompt."""
        messages = [{"role": "system", "content": system}, {"role": "user", "content": prompt}]
        text = self.tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True
        )
        return str(text)

    def _encode(
        self, examples: Sequence[EvidenceExample]
    ) -> list[tuple[list[int], list[int], str]]:
        encoded = []
        for example in examples:
            prompt_ids = self.tokenizer(
                self.prompt_text(example.prompt, example.system), add_special_tokens=False
            )["input_ids"]
            target_ids = self.tokenizer(example.target, add_special_tokens=False)["input_ids"]
            if not target_ids:
                raise AdapterTrainingError(f"the label {example.target!r} has no tokens")
            encoded.append((list(prompt_ids), list(target_ids), example.target))
        return encoded

    # -- training --------------------------------------------------------------------------

    def _batch_loss(
        self, batch: list[tuple[list[int], list[int], str]], weights: dict[str, float]
    ) -> torch.Tensor:
        """Mean (class-weighted) cross-entropy of the label tokens; prompts left-padded."""
        import torch

        pad = self.tokenizer.pad_token_id
        if pad is None:
            pad = self.tokenizer.eos_token_id or 0
        rows = [prompt + target for prompt, target, _ in batch]
        width = max(len(row) for row in rows)
        keep = max(len(target) for _, target, _ in batch) + 1
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, width - len(row) :] = torch.tensor(row)
            mask[i, width - len(row) :] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        out = self.model(
            input_ids=ids, attention_mask=mask, position_ids=positions, logits_to_keep=keep
        )
        logits = out.logits  # (batch, keep, vocab): the last `keep` positions
        total = torch.zeros(())
        norm = 0.0
        for i, (_, target, label) in enumerate(batch):
            n = len(target)
            # Position width-1-n .. width-2 predict the n label tokens (the last n of the row).
            predicted = logits[i, keep - 1 - n : keep - 1]
            tokens = torch.tensor(target)
            loss = torch.nn.functional.cross_entropy(predicted, tokens, reduction="sum")
            total = total + weights[label] * loss
            norm += weights[label] * n
        return total / max(norm, 1e-9)

    def train(
        self,
        examples: Sequence[EvidenceExample],
        *,
        epochs: int | None = None,
        deadline: float | None = None,
    ) -> LocalUpdate:
        """Trains the adapter on ``examples`` (at most ``recipe.max_examples``); returns it.

        ``deadline`` (``time.monotonic()``) stops between batches; at least one
        batch always runs.

        Raises:
            AdapterTrainingError: no examples, or a label without tokens.
        """
        import torch

        if not examples:
            raise AdapterTrainingError("no evidence examples to train the adapter on")
        recipe = self.recipe
        rng = random.Random(recipe.seed)  # noqa: S311  (shuffling, not secrets)
        chosen = list(examples)
        if len(chosen) > recipe.max_examples:
            chosen = rng.sample(chosen, recipe.max_examples)
        encoded = self._encode(chosen)
        counts: dict[str, int] = {}
        for _, _, label in encoded:
            counts[label] = counts.get(label, 0) + 1
        weights = {
            label: (len(encoded) / (len(counts) * count)) if recipe.balance_classes else 1.0
            for label, count in counts.items()
        }
        parameters = [p for p in self.model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(parameters, lr=recipe.learning_rate, weight_decay=0.0)
        self.model.train()
        started = time.monotonic()
        losses: list[float] = []
        for epoch in range(epochs or recipe.local_epochs):
            order = list(range(len(encoded)))
            rng.shuffle(order)
            for start in range(0, len(order), recipe.batch_size):
                if losses and deadline is not None and time.monotonic() > deadline:
                    break
                batch = [encoded[i] for i in order[start : start + recipe.batch_size]]
                loss = self._batch_loss(batch, weights)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()  # type: ignore[no-untyped-call]
                torch.nn.utils.clip_grad_norm_(parameters, 1.0)
                optimizer.step()
                losses.append(float(loss.detach()))
            recent = losses[-10:]
            self._log(f"adapter epoch {epoch + 1}: loss {sum(recent) / max(1, len(recent)):.4f}")
        self.model.eval()
        loss_value = sum(losses) / len(losses) if losses else math.nan
        return LocalUpdate(self.state(), len(encoded), loss_value, time.monotonic() - started)
