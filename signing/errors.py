"""Errors of signing and verification.

"This bundle is bad" (:class:`BundleError`) is kept apart from "the key or the
signing step failed" (:class:`KeyFileError`, :class:`SignFailedError`)::

    SigningError
    ├── KeyFileError                 a key file is unreadable, malformed or the wrong curve
    │   └── KeyExistsError           refusing to overwrite an existing key file
    ├── SignFailedError              model-signing could not sign the bundle
    └── BundleError                  the bundle cannot be trusted
        ├── BundleLayoutError        not a directory, a symlink, a special file, no model.sig
        └── VerificationError
            ├── MalformedSignatureError   model.sig is not a sigstore bundle we accept
            ├── UnsupportedManifestError  signed, but with hashing settings we do not accept
            ├── UnknownKeyError           signed by a key that is not in the key ring
            ├── BadSignatureError         the signature does not verify with the named key
            ├── SiteMismatchError         signed by one site's key, claimed by another site
            └── ManifestMismatchError     the files differ from the signed manifest
                ├── FileChangedError
                ├── FileMissingError
                └── FileAddedError
"""

from __future__ import annotations

from protocol.errors import GscoError

__all__ = [
    "BadSignatureError",
    "BundleError",
    "BundleLayoutError",
    "FileAddedError",
    "FileChangedError",
    "FileMissingError",
    "KeyExistsError",
    "KeyFileError",
    "MalformedSignatureError",
    "ManifestMismatchError",
    "SignFailedError",
    "SigningError",
    "SiteMismatchError",
    "UnknownKeyError",
    "UnsupportedManifestError",
    "VerificationError",
]


class SigningError(GscoError):
    """Root of this package's errors."""


class KeyFileError(SigningError):
    """A key file cannot be read, is not PEM, or is not an ECDSA P-256 key."""


class KeyExistsError(KeyFileError):
    """Key generation refuses to overwrite an existing file."""


class SignFailedError(SigningError):
    """Signing did not complete (the bundle is left unsigned)."""


class BundleError(SigningError):
    """The bundle cannot be trusted."""


class BundleLayoutError(BundleError):
    """The bundle directory itself is unacceptable."""


class VerificationError(BundleError):
    """The signature or the signed manifest does not hold."""


class MalformedSignatureError(VerificationError):
    """``model.sig`` is not a sigstore bundle in the form we accept."""


class UnsupportedManifestError(VerificationError):
    """The manifest was signed with settings we do not accept (shards, symlinks, ...)."""


class UnknownKeyError(VerificationError):
    """The signing key is not in the key ring (not enrolled, or revoked)."""

    def __init__(self, key_id: str) -> None:
        self.key_id = key_id
        super().__init__(f"signed by unknown or revoked key {key_id[:16]}…")


class BadSignatureError(VerificationError):
    """The signature does not verify with the key it names."""


class SiteMismatchError(VerificationError):
    """The bundle was signed by one site's key but claims to be another site's."""


class ManifestMismatchError(VerificationError):
    """The bundle's files differ from the signed manifest.

    Attributes:
        changed: files whose sha256 differs from the signed one.
        missing: signed files that are absent.
        added: files that were never signed.
    """

    def __init__(self, changed: list[str], missing: list[str], added: list[str]) -> None:
        self.changed, self.missing, self.added = changed, missing, added
        parts = [
            f"{what}: {', '.join(names)}"
            for what, names in (("changed", changed), ("missing", missing), ("added", added))
            if names
        ]
        super().__init__("bundle differs from its signed manifest; " + "; ".join(parts))


class FileChangedError(ManifestMismatchError):
    """At least one signed file's content changed."""


class FileMissingError(ManifestMismatchError):
    """At least one signed file is missing (and none changed)."""


class FileAddedError(ManifestMismatchError):
    """Files were added after signing (and none changed or went missing)."""
