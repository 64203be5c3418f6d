"""The publication check: one pure function, shared by the registry, the hub and the auditor.

Bytes in (the bundle's files), an :class:`AcceptedBundle` out, or a
:class:`RejectedError` whose code names the rule that failed. No I/O.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from protocol import (
    ArtifactError,
    GscoError,
    SchemaError,
    SpecialistCard,
    check_index,
    check_onnx,
    load_index,
)
from registry.errors import RejectCode, RejectedError
from signing import (
    SIGNATURE_FILE,
    BadSignatureError,
    FileAddedError,
    FileChangedError,
    FileMissingError,
    KeyRing,
    MalformedSignatureError,
    UnknownKeyError,
    UnsupportedManifestError,
    VerifiedManifest,
    digest_files,
    is_safe_relative_path,
    signature_key_id,
    verify_manifest,
)

__all__ = [
    "BUNDLE_FILES",
    "REQUIRED_FILES",
    "AcceptedBundle",
    "Limits",
    "check_names_and_sizes",
    "verify_publication",
    "verify_signed_digests",
]

#: Every file a bundle may hold, and those it must hold.
BUNDLE_FILES = frozenset({"model.onnx", "card.json", "index.npz", "metrics.json", SIGNATURE_FILE})
REQUIRED_FILES = frozenset({"model.onnx", "card.json", "index.npz", SIGNATURE_FILE})


@dataclass(frozen=True)
class Limits:
    """Size limits of a publication (bytes)."""

    max_bundle_bytes: int = 2 * 1024**3
    max_card_bytes: int = 256 * 1024
    max_signature_bytes: int = 1024 * 1024
    max_metrics_bytes: int = 4 * 1024 * 1024

    def for_file(self, name: str) -> int:
        """The limit for one file."""
        return {
            "card.json": self.max_card_bytes,
            SIGNATURE_FILE: self.max_signature_bytes,
            "metrics.json": self.max_metrics_bytes,
        }.get(name, self.max_bundle_bytes)


@dataclass(frozen=True)
class AcceptedBundle:
    """A bundle that passed every check."""

    card: SpecialistCard
    manifest: VerifiedManifest
    size_bytes: int
    files: Mapping[str, str] = field(repr=False)  # name -> sha256, model.sig included

    @property
    def digest(self) -> str:
        """The bundle's content id (see :func:`signing.bundle_digest`)."""
        return self.manifest.digest


def check_names_and_sizes(sizes: Mapping[str, int], limits: Limits) -> int:
    """Checks file names and sizes (declared or received); returns the bundle's total size.

    Raises:
        RejectedError: ``BAD_FILE_NAME`` or ``TOO_LARGE``.
    """
    for name, size in sizes.items():
        if not is_safe_relative_path(name) or "/" in name:
            raise RejectedError(RejectCode.BAD_FILE_NAME, f"not a plain file name: {name!r}")
        if size > limits.for_file(name):
            raise RejectedError(
                RejectCode.TOO_LARGE, f"{name} is larger than {limits.for_file(name)} bytes"
            )
    total = sum(sizes.values())
    if total > limits.max_bundle_bytes:
        raise RejectedError(
            RejectCode.TOO_LARGE, f"the bundle is larger than {limits.max_bundle_bytes} bytes"
        )
    return total


def verify_signed_digests(
    signature: bytes | None,
    digests: Mapping[str, str],
    sizes: Mapping[str, int],
    keyring: KeyRing,
    *,
    revoked_key_ids: frozenset[str] = frozenset(),
    limits: Limits | None = None,
) -> tuple[VerifiedManifest, int]:
    """The first stage of :func:`verify_publication`: names, sizes and the signature.

    It needs only each file's sha256 and size, not its bytes, so a receiver that
    hashed a bundle while streaming it to disk can refuse an unsigned or
    wrongly signed bundle before it reads any file into memory.

    Args:
        signature: ``model.sig``, or ``None`` if the bundle has none.
        digests: ``{name: sha256}`` of every file but ``model.sig``.
        sizes: ``{name: bytes}`` of every file, ``model.sig`` included.
        keyring: the enrolled, unrevoked site keys.
        revoked_key_ids: keys that were enrolled and then revoked.
        limits: size limits.

    Returns:
        The verified manifest and the bundle's total size in bytes.

    Raises:
        RejectedError: ``BAD_FILE_NAME``, ``TOO_LARGE``, ``UNSIGNED`` or a signature code.
    """
    limits = limits or Limits()
    size = check_names_and_sizes(sizes, limits)
    if signature is None:
        raise RejectedError(RejectCode.UNSIGNED, "the bundle has no model.sig")
    try:
        if signature_key_id(signature) in revoked_key_ids:
            raise RejectedError(RejectCode.REVOKED_KEY, "signed by a revoked site key")
        manifest = verify_manifest(signature, digests, keyring)
    except MalformedSignatureError as exc:
        raise RejectedError(RejectCode.MALFORMED_SIGNATURE, str(exc)) from exc
    except UnknownKeyError as exc:
        raise RejectedError(RejectCode.UNKNOWN_KEY, "signed by a key that is not enrolled") from exc
    except BadSignatureError as exc:
        raise RejectedError(RejectCode.BAD_SIGNATURE, str(exc)) from exc
    except UnsupportedManifestError as exc:
        raise RejectedError(RejectCode.UNSUPPORTED_MANIFEST, str(exc)) from exc
    except FileChangedError as exc:
        raise RejectedError(RejectCode.FILE_CHANGED, str(exc)) from exc
    except FileMissingError as exc:
        raise RejectedError(RejectCode.FILE_MISSING, str(exc)) from exc
    except FileAddedError as exc:
        raise RejectedError(RejectCode.FILE_ADDED, str(exc)) from exc
    return manifest, size


def verify_publication(
    files: Mapping[str, bytes],
    keyring: KeyRing,
    *,
    revoked_key_ids: frozenset[str] = frozenset(),
    last_version: int | None = None,
    limits: Limits | None = None,
) -> AcceptedBundle:
    """Decides whether a bundle may be published (or trusted).

    Args:
        files: every file of the bundle by relative name, ``model.sig`` included.
        keyring: the enrolled, unrevoked site keys.
        revoked_key_ids: keys that were enrolled and then revoked.
        last_version: the site's last published version for the card's task and
            backbone (``None`` when it has none); the new one must be greater.
        limits: size limits.

    Raises:
        RejectedError: with the :class:`RejectCode` of the first rule that failed.
    """
    limits = limits or Limits()
    if SIGNATURE_FILE not in files:
        check_names_and_sizes({name: len(data) for name, data in files.items()}, limits)
        raise RejectedError(RejectCode.UNSIGNED, "the bundle has no model.sig")
    signature = files[SIGNATURE_FILE]
    digests = digest_files(files)
    manifest, size = verify_signed_digests(
        signature,
        digests,
        {name: len(data) for name, data in files.items()},
        keyring,
        revoked_key_ids=revoked_key_ids,
        limits=limits,
    )
    unexpected = sorted(set(files) - BUNDLE_FILES)
    if unexpected:
        raise RejectedError(
            RejectCode.UNEXPECTED_FILE, f"a bundle may not hold {', '.join(unexpected)}"
        )
    missing = sorted(REQUIRED_FILES - set(files))
    if missing:
        raise RejectedError(RejectCode.MISSING_FILE, f"the bundle lacks {', '.join(missing)}")
    try:
        card = SpecialistCard.parse(files["card.json"])
    except SchemaError as exc:
        if exc.wire_overflows:
            raise RejectedError(
                RejectCode.OUT_OF_RANGE,
                f"card.json: {', '.join(exc.wire_overflows)} larger than the registry's "
                f"messages can carry ({exc})",
            ) from exc
        raise RejectedError(RejectCode.INVALID_CARD, str(exc)) from exc
    except GscoError as exc:
        raise RejectedError(RejectCode.INVALID_CARD, str(exc)) from exc
    if card.site_id != manifest.site_id:
        raise RejectedError(
            RejectCode.SITE_MISMATCH,
            f"signed by site {manifest.site_id!r} but the card names site {card.site_id!r}",
        )
    try:
        summary = check_onnx(files["model.onnx"])
    except ArtifactError as exc:
        raise RejectedError(RejectCode.INVALID_MODEL, str(exc)) from exc
    if summary.num_classes != len(card.labels) or summary.embedding_dim != card.index.embedding_dim:
        raise RejectedError(
            RejectCode.INVALID_MODEL,
            f"model.onnx outputs {summary.num_classes} classes and {summary.embedding_dim}-d "
            f"embeddings; the card says {len(card.labels)} and {card.index.embedding_dim}",
        )
    try:
        check_index(load_index(files["index.npz"]), card)
    except ArtifactError as exc:
        raise RejectedError(RejectCode.INVALID_INDEX, str(exc)) from exc
    if last_version is not None and card.version <= last_version:
        raise RejectedError(
            RejectCode.STALE_VERSION,
            f"version {card.version} is not newer than {last_version}, the last that site "
            f"{card.site_id} published for {card.task_id}/{card.backbone}",
        )
    all_files = dict(digests, **{SIGNATURE_FILE: hashlib.sha256(signature).hexdigest()})
    return AcceptedBundle(card, manifest, size, MappingProxyType(all_files))
