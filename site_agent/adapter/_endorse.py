"""A training site's co-signature of the consortium's adapter: what it checks before it signs.

The adapter takes effect only when enough of the sites that trained it sign
the next version of its task's adapter role (see ``registry._consortium``).
A site signs only what it can vouch for (:func:`check_for_endorsement`):

- the bundle verifies (an enrolled site's signature, the content checks of
  ``registry.verify_adapter``: configuration, finite and bounded tensors, a
  policy within bounds);
- its weights are, bit for bit, the final weights this site received (and
  scored its own policy cases with, when it took part in the policy fit);
- its card describes this site's task, base model and prompt template, names
  this site among the trainers with exactly the examples it reported;
- the proposed role version is the next one and lists exactly this bundle,
  and the card carries that version.

Then :func:`registry.endorse` signs with the site's own key.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

import numpy as np

from generalist import PROMPT_TEMPLATE_VERSION
from protocol import AdapterCard, GscoError, TaskSpec
from registry import AdapterLimits, check_adapter_role, verify_adapter
from signing import KeyRing
from site_agent.errors import EndorsementRefusedError

__all__ = ["bundle_weights", "check_for_endorsement", "weights_digest"]

_WEIGHTS = "adapter_model.safetensors"


def weights_digest(state: Mapping[str, Any]) -> str:
    """A sha256 over tensors' names, shapes and float32 values, in name order."""
    digest = hashlib.sha256()
    for name in sorted(state):
        value = state[name]
        array = np.ascontiguousarray(
            value.detach().cpu().numpy() if hasattr(value, "detach") else np.asarray(value),
            dtype="<f4",
        )
        digest.update(name.encode() + b"\0" + str(array.shape).encode() + b"\0")
        digest.update(array.tobytes())
    return digest.hexdigest()


def bundle_weights(files: Mapping[str, bytes]) -> dict[str, np.ndarray]:
    """The adapter bundle's tensors (safetensors, read without pickle), by peft's names."""
    from safetensors.numpy import load

    return dict(load(files[_WEIGHTS]))


def _refuse(message: str) -> EndorsementRefusedError:
    return EndorsementRefusedError(f"this site does not co-sign the adapter: {message}")


def check_for_endorsement(
    files: Mapping[str, bytes],
    proposal: bytes,
    *,
    site_id: str,
    task: TaskSpec,
    base_model: str,
    base_model_sha256: str,
    examples: int,
    received: Mapping[str, Any],
    keyring: KeyRing,
    previous_role: bytes | None,
    scored_digest: str | None = None,
) -> AdapterCard:
    """Everything this site checks before it co-signs ``proposal``; the bundle's card.

    Args:
        files: the adapter bundle's files, ``model.sig`` included.
        proposal: the proposed next version of the task's adapter role.
        site_id: this site.
        task: the task as this site knows it.
        base_model: the served name of the base model it tuned.
        base_model_sha256: the hash of its own copy of the base weights.
        examples: the evidence examples this site reported.
        received: the final weights this site received.
        keyring: the enrolled sites' keys, as this site's TUF sync trusts them.
        previous_role: the role's current version as the registry serves it.
        scored_digest: :func:`weights_digest` of the weights this site scored its
            policy cases with (None: it took no part in the policy fit).

    Raises:
        EndorsementRefusedError: any check fails (the message says which).
    """
    try:
        accepted = verify_adapter(files, keyring, limits=AdapterLimits(max_rank=256))
    except GscoError as exc:
        raise _refuse(f"the bundle does not verify: {exc}") from exc
    card = accepted.card
    expected = {
        "task": (card.task_id, task.task_id),
        "labels": (card.labels, task.labels),
        "modality": (card.modality, task.modality),
        "task type": (card.task_type, task.task_type),
        "base model": (card.base_model, base_model),
        "base model weights": (card.base_model_sha256, base_model_sha256),
        "prompt template": (card.prompt_template, PROMPT_TEMPLATE_VERSION),
    }
    for what, (found, wanted) in expected.items():
        if found != wanted:
            raise _refuse(f"its {what} is {found!r}, not {wanted!r}")
    if site_id not in card.training.sites:
        raise _refuse(f"its card does not name {site_id} among the sites that trained it")
    claimed = card.training.examples_per_site.get(site_id)
    if claimed != examples:
        raise _refuse(f"its card says {site_id} gave {claimed} examples; it gave {examples}")
    tensors = bundle_weights(files)
    if set(tensors) != set(received):
        raise _refuse("its tensors are not the ones this site trained")
    for name, value in received.items():
        mine = np.asarray(
            value.detach().cpu().numpy() if hasattr(value, "detach") else value, dtype=np.float32
        )
        if tensors[name].shape != mine.shape or not np.array_equal(
            tensors[name].astype(np.float32), mine
        ):
            raise _refuse(f"its weights differ from the final weights received ({name})")
    if scored_digest is not None and weights_digest(tensors) != scored_digest:
        raise _refuse("its weights are not those this site scored its policy cases with")
    try:
        role = check_adapter_role(
            proposal,
            task_id=card.task_id,
            bundle_digest=accepted.digest,
            files=accepted.files,
            sizes={name: len(data) for name, data in files.items()},
            previous=previous_role,
        )
    except GscoError as exc:
        raise _refuse(f"the proposed role version: {exc}") from exc
    if card.version != role.signed.version:
        raise _refuse(f"the card says version {card.version}, the role {role.signed.version}")
    return card
