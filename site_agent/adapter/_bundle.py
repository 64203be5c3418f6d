"""The signed adapter bundle: peft's two files, the card, and ``model.sig`` over all three."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING

from protocol import AdapterCard, ArbitrationPolicy, GscoError
from site_agent.errors import AdapterTrainingError, BundleExistsError

if TYPE_CHECKING:
    from signing import VerifiedManifest
    from site_agent.adapter._train import AdapterTrainer

__all__ = ["ADAPTER_FILES", "base_model_sha256", "write_adapter_bundle", "write_policy_version"]

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


def write_policy_version(
    source_dir: Path, out_dir: Path, policy: ArbitrationPolicy, private_key: Path
) -> tuple[AdapterCard, VerifiedManifest]:
    """The next version of the adapter bundle in ``source_dir``, its card carrying ``policy``.

    The same weights and ``adapter_config.json``; the card is the source's with
    the version raised by one, ``policy`` added (each mode bound to this
    adapter) and a new ``created_at``. Signed with ``private_key``, which must
    be the key of the site that signed the source.

    Raises:
        AdapterTrainingError: ``source_dir`` is not a bundle this key signed, or
            the policy does not fit the adapter (another task, label set or mode).
        BundleExistsError: ``out_dir`` exists and is not empty.
        SigningError: signing failed.
    """
    from datetime import UTC, datetime

    from cryptography.hazmat.primitives import serialization

    from signing import KeyRing, load_private_key, sign_bundle, verify_bundle_dir

    if out_dir.exists() and any(out_dir.iterdir()):
        raise BundleExistsError(f"{out_dir} exists and is not empty")
    try:
        card = AdapterCard.parse((source_dir / "adapter_card.json").read_bytes())
        public = (
            load_private_key(private_key)
            .public_key()
            .public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )
        verify_bundle_dir(
            source_dir,
            KeyRing.from_pems({card.site_id: public}),
            expected_site_id=card.site_id,
        )
        policy = policy.model_copy(
            update={
                "modes": {
                    mode: fitted.model_copy(update={"model": None})
                    for mode, fitted in policy.modes.items()
                }
            }
        )
        card = AdapterCard.model_validate(
            {
                **card.model_dump(),
                "version": card.version + 1,
                "created_at": datetime.now(UTC),
                "policy": policy,
            }
        )
    except (OSError, GscoError, ValueError) as exc:
        raise AdapterTrainingError(f"cannot add the policy to {source_dir}: {exc}") from exc
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in ADAPTER_FILES[:2]:
        (out_dir / name).write_bytes((source_dir / name).read_bytes())
    (out_dir / "adapter_card.json").write_text(card.model_dump_json(indent=2) + "\n")
    return card, sign_bundle(out_dir, private_key)
