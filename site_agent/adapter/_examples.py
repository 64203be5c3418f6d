"""Evidence examples: a site's validation cases as the generalist's prompts, with the true label.

The evidence comes from the task's verified specialists, run by the hub's own
engine (:meth:`hub.DiagnosisEngine.evidence`) on a catalog the site synced
from the registry through TUF, and is rendered with the hub's prompt template
(:func:`generalist.render_prompt`). So an adapter learns from exactly the
text it will be shown in service. Only the prompt strings and the labels
enter training; the images never leave the site.

By default the options are listed in a shuffled order in each example
(``shuffle_options``): the hub lists them in the task's order, and an adapter
that only ever saw that order learns where the answer stands, not what it
says (reversing the options then flips most of its decisions). Shuffled, it
has to read the labels.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from generalist import SYSTEM, render_prompt
from hub import DiagnosisEngine
from protocol import Mode

__all__ = ["TUNING_MODES", "EvidenceExample", "evidence_examples"]

#: The modes whose prompts the adapter learns, in rotation over the cases.
TUNING_MODES = (Mode.GSCO, Mode.MOED, Mode.RAD)


@dataclass(frozen=True)
class EvidenceExample:
    """One prompt (as the hub renders it) and the answer the generalist should give."""

    prompt: str
    target: str
    system: str
    mode: Mode


def evidence_examples(
    engine: object,
    task_id: str,
    images: Sequence[bytes],
    labels: Sequence[str],
    *,
    modes: Sequence[Mode] = TUNING_MODES,
    sees_image: bool = False,
    top_k: int = 5,
    on_case: Callable[[int], None] | None = None,
    shuffle_options: bool = True,
    seed: int = 0,
) -> list[EvidenceExample]:
    """One example per case, its mode taken in rotation from ``modes``.

    ``shuffle_options`` lists the task's labels in a random order (seeded by
    ``seed``) in each prompt; the evidence and the target are unchanged.

    ``engine`` is a :class:`hub.DiagnosisEngine` over the site's synced catalog;
    ``images`` are encoded images (PNG), ``labels`` their true labels.

    Raises:
        hub.UnknownTaskError: the catalog serves no specialist for ``task_id``.
        ValueError: ``images`` and ``labels`` differ in length, or no mode is given.
    """
    if not isinstance(engine, DiagnosisEngine):
        raise TypeError("engine must be a hub.DiagnosisEngine")
    if len(images) != len(labels):
        raise ValueError(f"{len(images)} images but {len(labels)} labels")
    if not modes:
        raise ValueError("at least one mode is needed")

    order = random.Random(seed)  # noqa: S311 (an example order, not a secret)

    async def gather() -> list[EvidenceExample]:
        examples = []
        for i, (image, label) in enumerate(zip(images, labels, strict=True)):
            mode = modes[i % len(modes)]
            task, request = await engine.evidence(
                task_id=task_id, image=image, mode=mode, top_k=top_k
            )
            if label not in task.labels:
                raise ValueError(f"label {label!r} is not one of the task's {task.labels}")
            shown = task
            if shuffle_options:
                options = list(task.labels)
                order.shuffle(options)
                shown = task.model_copy(update={"labels": tuple(options)})
            prompt = render_prompt(shown, mode, request.moed, request.rad, sees_image=sees_image)
            examples.append(EvidenceExample(prompt, label, SYSTEM, mode))
            if on_case is not None:
                on_case(i + 1)
        return examples

    return asyncio.run(gather())
