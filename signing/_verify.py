"""The one pure verification function that the registry, the hub and the auditor call."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from signing._envelope import IN_TOTO_PAYLOAD_TYPE, pae, parse_signature_file, parse_statement
from signing._keys import KeyRing
from signing.errors import (
    BadSignatureError,
    FileAddedError,
    FileChangedError,
    FileMissingError,
    MalformedSignatureError,
    SiteMismatchError,
    UnknownKeyError,
)

__all__ = ["VerifiedManifest", "bundle_digest", "signature_key_id", "verify_manifest"]


def bundle_digest(files: Mapping[str, str]) -> str:
    """The content id of a bundle: sha256 over its sorted ``name: sha256`` manifest.

    It names what was signed, independently of the (randomised) ECDSA signature.
    """
    canonical = json.dumps(dict(sorted(files.items())), separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class VerifiedManifest:
    """A bundle manifest whose signature and file digests have been verified."""

    site_id: str
    key_id: str
    files: Mapping[str, str] = field(repr=False)

    @property
    def digest(self) -> str:
        """See :func:`bundle_digest`."""
        return bundle_digest(self.files)


def signature_key_id(signature: bytes) -> str:
    """The key id that ``model.sig`` names (unverified: for telling revoked from unknown keys)."""
    return parse_signature_file(signature).key_hint


def verify_manifest(
    signature: bytes,
    actual_files: Mapping[str, str],
    keyring: KeyRing,
    *,
    expected_site_id: str | None = None,
) -> VerifiedManifest:
    """Verifies a bundle from its ``model.sig`` bytes and its files' sha256 digests.

    Args:
        signature: the content of ``model.sig``.
        actual_files: ``{relative path: sha256 hex}`` of every file in the bundle
            except ``model.sig``.
        keyring: the keys to trust (enrolled, unrevoked).
        expected_site_id: when given, the signer's site must be this one.

    Returns:
        The verified manifest.

    Raises:
        MalformedSignatureError, UnsupportedManifestError, UnknownKeyError,
        BadSignatureError, SiteMismatchError, FileChangedError, FileMissingError,
        FileAddedError: see :mod:`signing.errors`.
    """
    envelope = parse_signature_file(signature)
    trusted = keyring.get(envelope.key_hint)
    if trusted is None:
        raise UnknownKeyError(envelope.key_hint)
    if envelope.payload_type != IN_TOTO_PAYLOAD_TYPE:
        raise MalformedSignatureError(f"unexpected payload type {envelope.payload_type!r}")
    if not trusted.key.verifies(envelope.signature, pae(envelope.payload_type, envelope.payload)):
        raise BadSignatureError(
            f"the signature does not verify with the key of site {trusted.site_id!r}"
        )
    signed = parse_statement(envelope.payload)
    if expected_site_id is not None and trusted.site_id != expected_site_id:
        raise SiteMismatchError(
            f"signed by site {trusted.site_id!r} but claims site {expected_site_id!r}"
        )
    changed = sorted(n for n in signed.keys() & actual_files.keys() if signed[n] != actual_files[n])
    missing = sorted(signed.keys() - actual_files.keys())
    added = sorted(actual_files.keys() - signed.keys())
    if changed:
        raise FileChangedError(changed, missing, added)
    if missing:
        raise FileMissingError(changed, missing, added)
    if added:
        raise FileAddedError(changed, missing, added)
    return VerifiedManifest(trusted.site_id, envelope.key_hint, MappingProxyType(dict(signed)))
