"""The tuned generalist answering at the site, as the hub's would: label scores, no server.

A deployed site fits the adapter's arbitration policy on its own validation
cases without sending them anywhere, so it needs the generalist's label
scores for them: :class:`LocalGeneralist` gives them from the site's copy of
the base model with the adapter's weights (transformers, float32), as a
:class:`generalist.GeneralistBackend`, so the hub's own engine
(:class:`hub.DiagnosisEngine`: evidence, contextual calibration, option
orders) runs around it unchanged.

Scores follow what vLLM's constrained choice returns: at the first token
where the labels part, the probabilities of the tokens that continue them,
renormalised over those tokens (``structured_outputs.choice``). Each label is
taken in the tokenizer's own split of it; a server that splits a label
differently, or serves in another precision, gives slightly different
scores, so a policy fitted on these holds for the served adapter up to that.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from site_agent.errors import AdapterTrainingError

if TYPE_CHECKING:
    from generalist import ArbitrationRequest, ArbitrationResult
    from site_agent.adapter._train import AdapterTrainer

__all__ = ["LocalGeneralist"]


class LocalGeneralist:
    """A text-only generalist backend over an :class:`AdapterTrainer`'s model.

    ``name`` is what its answers say answered (the adapter's name at the hub).
    Requests run one at a time, in the calling thread.
    """

    sees_images = False

    def __init__(self, trainer: AdapterTrainer, name: str) -> None:
        self._trainer = trainer
        self.model = name

    def label_scores(self, text: str, labels: Sequence[str]) -> dict[str, float]:
        """Each label's probability as the first token that tells the labels apart.

        ``text`` is the chat-templated prompt (:meth:`AdapterTrainer.prompt_text`).

        Raises:
            AdapterTrainingError: a label has no tokens, or two labels have the same tokens.
        """
        import torch

        tokenizer = self._trainer.tokenizer
        end = tokenizer.eos_token_id
        split = {}
        for label in labels:
            ids = list(tokenizer(label, add_special_tokens=False)["input_ids"])
            if not ids:
                raise AdapterTrainingError(f"the label {label!r} has no tokens")
            split[label] = ids
        if len({tuple(ids) for ids in split.values()}) < len(labels):
            raise AdapterTrainingError("two labels have the same tokens")
        prompt = list(tokenizer(text, add_special_tokens=False)["input_ids"])
        prefix: list[int] = []
        candidates = list(labels)
        model = self._trainer.model
        model.eval()
        while True:
            step = len(prefix)
            # A label already complete continues with the end of the answer.
            following = {
                label: split[label][step] if step < len(split[label]) else end
                for label in candidates
            }
            tokens = sorted(set(following.values()))
            if len(tokens) > 1:
                with torch.no_grad():
                    logits = model(
                        input_ids=torch.tensor([prompt + prefix]), logits_to_keep=1
                    ).logits[0, -1]
                allowed = torch.softmax(logits[torch.tensor(tokens)].double(), dim=0)
                mass = {t: float(p) for t, p in zip(tokens, allowed, strict=True)}
                scores = {label: mass[following[label]] if label in following else 0.0
                          for label in labels}  # fmt: skip
                total = sum(scores.values())
                return {label: score / total for label, score in scores.items()}
            prefix.append(tokens[0])

    async def arbitrate(self, request: ArbitrationRequest) -> ArbitrationResult:
        """The label scores of ``request`` and the best-scored label as the answer."""
        from generalist import SYSTEM, ArbitrationResult, render_prompt

        started = time.perf_counter()
        prompt = render_prompt(
            request.task, request.mode, request.moed, request.rad, sees_image=False
        )
        text = self._trainer.prompt_text(prompt, SYSTEM)
        labels = request.task.labels
        scores = self.label_scores(text, labels)
        label = max(labels, key=lambda name: scores[name])
        return ArbitrationResult(
            label=label,
            scores=scores,
            raw_text=label,
            prompt=prompt,
            model=self.model,
            saw_image=False,
            prompt_tokens=None,
            completion_tokens=None,
            latency_ms=(time.perf_counter() - started) * 1000,
        )

    async def aclose(self) -> None:
        """Nothing to release."""
