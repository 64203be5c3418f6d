"""Real LoRA adapter bundles for tests: peft on the embedded generalist's SmolLM2 weights.

The base model is the one ``gsco generalist prepare`` converted (scripts/test.sh
prepares it first); training takes seconds on a handful of examples.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Sequence
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any

from generalist import (
    MODEL_NAME,
    PROMPT_TEMPLATE_VERSION,
    EmbeddedServer,
    MoedEvidence,
    render_prompt,
)
from protocol import AdapterCard, AdapterTraining, LoraSpec, Mode, TaskSpec
from signing import sign_bundle

TASK = TaskSpec(
    task_id="pneumonia-cxr",
    modality="chest X-ray",
    labels=("normal", "pneumonia"),
    task_type="binary",
)


def model_dir() -> Path:
    server = EmbeddedServer()
    server.prepare()
    return server.model_dir


def examples(n: int = 16) -> list[Any]:
    """Evidence examples whose answer is the specialists' label (learnable)."""
    from generalist import SYSTEM
    from site_agent.adapter import EvidenceExample

    found = []
    for i in range(n):
        label = TASK.labels[i % 2]
        moed = (MoedEvidence(label, 0.8 + 0.01 * (i % 10)), MoedEvidence(label, 0.75))
        prompt = render_prompt(TASK, Mode.MOED, moed, (), sees_image=False)
        found.append(EvidenceExample(prompt, label, SYSTEM, Mode.MOED))
    return found


@cache
def trainer(rank: int = 8) -> Any:
    from site_agent.adapter import AdapterRecipe, AdapterTrainer

    return AdapterTrainer(model_dir(), AdapterRecipe(rank=rank, last_layers=2, batch_size=8))


def card(
    site_id: str, rank: int = 8, trainers: tuple[str, ...] = (), **overrides: Any
) -> AdapterCard:
    t = trainer(rank)
    sites = trainers or (site_id,)
    settings: dict[str, Any] = {
        "task_id": TASK.task_id,
        "modality": TASK.modality,
        "labels": TASK.labels,
        "task_type": TASK.task_type,
        "base_model": MODEL_NAME,
        "base_model_sha256": hashlib.sha256(b"smollm2-135m-instruct weights").hexdigest(),
        "prompt_template": PROMPT_TEMPLATE_VERSION,
        "lora": LoraSpec(
            rank=rank,
            alpha=2 * rank,
            target_modules=("q_proj", "k_proj", "v_proj", "o_proj"),
            layers=(t.num_layers - 2, t.num_layers - 1),
        ),
        "training": AdapterTraining(
            sites=sites,
            examples=16 * len(sites),
            examples_per_site=dict.fromkeys(sites, 16),
            rounds=1,
            local_epochs=1,
            prompt_modes=(Mode.GSCO, Mode.MOED),  # not rad: rad stays with the base model
            evidence_split="synthetic evidence, for tests",
        ),
        "site_id": site_id,
        "version": 1,
        "license": "Apache-2.0",
        "created_at": datetime(2026, 12, 2, tzinfo=UTC),
    }
    return AdapterCard(**{**settings, **overrides})


def adapter_bundle(
    where: Path,
    site: Any,
    rank: int = 8,
    trainers: Sequence[Any] = (),
    **card_overrides: Any,
) -> Path:
    """A signed adapter bundle of ``site`` (a tests.conftest.SiteKeys) in ``where``.

    ``trainers``: the sites its card says trained it (default: ``site`` alone).
    """
    from site_agent.adapter import write_adapter_bundle

    t = trainer(rank)
    if not getattr(t, "_tests_trained", False):
        t.train(examples(), epochs=1)
        t._tests_trained = True
    shutil.rmtree(where, ignore_errors=True)
    names = tuple(s.site_id for s in trainers)
    write_adapter_bundle(where, t, card(site.site_id, rank, names, **card_overrides), site.private)
    return where


def co_signed_role(
    files: dict[str, bytes],
    signers: Sequence[Any],
    previous: bytes | None,
    *,
    task_id: str = TASK.task_id,
    version: int | None = None,
) -> bytes:
    """The task's next adapter role version for ``files``, signed by each of ``signers``.

    ``version`` forces another version than the next (a jump).
    """
    from registry import assemble_adapter_role, endorse, propose_adapter_role
    from signing import bundle_digest, digest_files

    proposal = propose_adapter_role(previous, task_id, bundle_digest(digest_files(files)), files)
    if version is not None:
        document = json.loads(proposal)
        document["signed"]["version"] = version
        proposal = json.dumps(document).encode()
    return assemble_adapter_role(proposal, [endorse(proposal, s.private) for s in signers])


def publish_consortium(client: Any, folder: Path, signers: Sequence[Any]) -> Any:
    """Publishes the adapter bundle in ``folder`` co-signed by ``signers``; its BundleRef.

    ``client`` is a :class:`registry.RegistryClient` (the role's next version is
    read from it).
    """
    files = {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}
    card_task = json.loads(files["adapter_card.json"])["task_id"]
    role = co_signed_role(files, signers, client.adapter_role(card_task), task_id=card_task)
    return client.publish_adapter(files, role)


def resign(folder: Path, site: Any) -> None:
    """Signs ``folder`` again after a test changed it (a site that means it)."""
    (folder / "model.sig").unlink(missing_ok=True)
    sign_bundle(folder, site.private)


def edit_json(path: Path, **changes: Any) -> None:
    document = json.loads(path.read_text())
    document.update(changes)
    path.write_text(json.dumps(document))


def reranked_bundle(where: Path, site: Any, source: Path, rank: int) -> Path:
    """``source``'s adapter rebuilt at another rank (zeros), card and config to match, signed.

    What a site could publish that this verifier accepts under a larger
    ``max_rank`` while the generalist (``--max-lora-rank 16``) refuses it.
    """
    import numpy as np
    from safetensors.numpy import load_file, save_file

    shutil.rmtree(where, ignore_errors=True)
    where.mkdir(parents=True)
    tensors = load_file(str(source / "adapter_model.safetensors"))
    resized = {}
    for name, tensor in tensors.items():
        shape = (rank, tensor.shape[1]) if ".lora_A." in name else (tensor.shape[0], rank)
        resized[name] = np.zeros(shape, dtype=np.float32)
    save_file(resized, str(where / "adapter_model.safetensors"))
    config = json.loads((source / "adapter_config.json").read_text())
    config.update(r=rank, lora_alpha=2 * rank)
    (where / "adapter_config.json").write_text(json.dumps(config))
    document = json.loads((source / "adapter_card.json").read_text())
    document["lora"].update(rank=rank, alpha=2 * rank)
    (where / "adapter_card.json").write_text(json.dumps(document))
    sign_bundle(where, site.private)
    return where
