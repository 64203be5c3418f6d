"""Evidence-tuned LoRA adapters in service: verified, copied, loaded into vLLM, per task.

An adapter bundle (see :func:`registry.verify_adapter`) is read with its
sizes bounded before any byte is read, verified against the keys of the
sites the registry delegates to in TUF (the same trust as a specialist), its
content checked (configuration allow-list, finite and bounded tensors, the
policy in its card within bounds), and checked against the generalist in
service: the same base model, the same prompt template, the same view of the
image. From the registry, it also needs the consortium's backing: the task's
adapter role co-signed by enough of its training sites
(:mod:`registry._consortium`). The verified bytes are then
written to a folder of the hub's own, named by their digest, and vLLM is
asked to load that copy, so what vLLM reads is what was verified.

An adapter the generalist refuses leaves the base model answering, with a
warning, never an error. A bundle that fails verification is refused.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

from generalist import PROMPT_TEMPLATE_VERSION
from hub.errors import AdapterRefusedError
from protocol import AdapterCard, GscoError
from registry import ADAPTER_BUNDLE_FILES, AcceptedAdapter, AdapterLimits, verify_adapter
from signing import KeyRing

__all__ = [
    "ServedAdapter",
    "adapter_name",
    "read_adapter_bundle",
    "verify_for_service",
    "write_verified_copy",
]


@dataclass(frozen=True)
class ServedAdapter:
    """An adapter the generalist holds, and what the hub knows of it."""

    name: str  # the name vLLM holds it under (``model=`` of each request)
    digest: str  # the bundle's content id
    card: AdapterCard
    path: Path  # the verified copy vLLM loaded
    source: str = "operator"  # "operator" (--adapter, pinned) or "registry" (synced)
    # The training sites whose co-signatures put it in service (a registry adapter).
    endorsed_by: tuple[str, ...] = ()


def adapter_name(card: AdapterCard, digest: str) -> str:
    """The served name of an adapter: its task and the head of its digest."""
    return f"{card.task_id}-lora-{digest[:12]}"


def read_adapter_bundle(folder: Path, limits: AdapterLimits) -> dict[str, bytes]:
    """Every file of an adapter bundle folder, sizes checked before reading.

    Raises:
        AdapterRefusedError: not a folder, a sub-folder, link or special file,
            an unexpected file name, or a file over its limit.
    """
    if folder.is_symlink() or not folder.is_dir():
        raise AdapterRefusedError(f"{folder} is not an adapter bundle folder")
    files: dict[str, bytes] = {}
    for entry in sorted(folder.iterdir()):
        mode = entry.lstat().st_mode
        if not stat.S_ISREG(mode):
            raise AdapterRefusedError(f"{entry.name}: an adapter bundle holds only plain files")
        if entry.name not in ADAPTER_BUNDLE_FILES:
            raise AdapterRefusedError(
                f"UNEXPECTED_FILE: an adapter bundle may not hold {entry.name!r}"
            )
        cap = limits.for_file(entry.name)
        if entry.stat().st_size > cap:
            raise AdapterRefusedError(f"TOO_LARGE: {entry.name} is larger than {cap} bytes")
        with entry.open("rb") as handle:
            files[entry.name] = handle.read(cap + 1)
    return files


def verify_for_service(
    files: dict[str, bytes],
    keyring: KeyRing,
    *,
    base_model: str,
    sees_images: bool,
    limits: AdapterLimits,
    module_root: str,
) -> AcceptedAdapter:
    """The registry's adapter check, then the checks against the generalist in service.

    Raises:
        AdapterRefusedError: the bundle fails verification, or was tuned for
            another base model, prompt template or image setting, or adapts
            layers under another path than the generalist's ``module_root``
            (vLLM would load it and silently leave the model as it was).
    """
    try:
        accepted = verify_adapter(files, keyring, limits=limits)
    except GscoError as exc:
        raise AdapterRefusedError(str(exc)) from exc
    card = accepted.card
    if card.base_model != base_model:
        raise AdapterRefusedError(
            f"the adapter was tuned on {card.base_model!r}; the generalist is {base_model!r}"
        )
    if accepted.module_root != module_root:
        raise AdapterRefusedError(
            f"the adapter's tensors adapt {accepted.module_root}.layers; the generalist's "
            f"decoder layers are {module_root}.layers (vLLM would load it and ignore it)"
        )
    if card.prompt_template != PROMPT_TEMPLATE_VERSION:
        raise AdapterRefusedError(
            f"the adapter learnt prompt template {card.prompt_template!r}; "
            f"the hub renders {PROMPT_TEMPLATE_VERSION!r}"
        )
    if card.sees_image != sees_images:
        raise AdapterRefusedError(
            "the adapter learnt prompts "
            + ("with" if card.sees_image else "without")
            + " the image; the generalist is sent "
            + ("images" if sees_images else "no image")
        )
    return accepted


def write_verified_copy(files: dict[str, bytes], root: Path, digest: str) -> Path:
    """Writes the verified bytes to ``root/DIGEST`` (once) and returns that folder."""
    target = root / digest
    if target.is_dir() and all((target / name).is_file() for name in files):
        return target
    staging = root / f".{digest}.partial"
    staging.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        path = staging / name
        with path.open("wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
    if target.exists():
        for stale in target.iterdir():
            stale.unlink()
        target.rmdir()
    staging.rename(target)
    return target
