"""The signed adapter bundle: peft's two files, the card, and ``model.sig`` over all three."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING

from protocol import AdapterCard
from site_agent.errors import BundleExistsError

if TYPE_CHECKING:
    from signing import VerifiedManifest
    from site_agent.adapter._train import AdapterTrainer

__all__ = ["ADAPTER_FILES", "base_model_sha256", "write_adapter_bundle"]

#: What an adapter bundle holds besides ``model.sig`` (see registry.verify_adapter).
ADAPTER_FILES = ("adapter_model.safetensors", "adapter_config.json", "adapter_card.json")


def base_model_sha256(model_dir: Path) -> str:
    """The sha256 over the base model's weight files (sorted by name, each name then bytes)."""
    digest = hashlib.sha256()
    weights = sorted(model_dir.glob("*.safetensors"))
    if not weights:
        raise FileNotFoundError(f"no *.safetensors weights in {model_dir}")
    for path in weights:
        digest.update(path.name.encode() + b"\0")
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def write_adapter_bundle(
    out_dir: Path, trainer: AdapterTrainer, card: AdapterCard, private_key: Path
) -> VerifiedManifest:
    """Writes the trainer's adapter and ``card`` into ``out_dir`` and signs the bundle.

    Only the files vLLM needs are kept (peft also writes a README).

    Raises:
        BundleExistsError: ``out_dir`` exists and is not empty.
        SigningError: signing failed.
    """
    from signing import sign_bundle

    if out_dir.exists() and any(out_dir.iterdir()):
        raise BundleExistsError(f"{out_dir} exists and is not empty")
    trainer.save(out_dir, card.base_model)
    for extra in out_dir.iterdir():
        if extra.name not in ADAPTER_FILES[:2]:
            extra.unlink()
    (out_dir / "adapter_card.json").write_text(card.model_dump_json(indent=2) + "\n")
    return sign_bundle(out_dir, private_key)
