"""Errors of the registry.

"The remote state or artifact is bad" is kept apart from "the transport failed"::

    RegistryError
    ├── RejectedError            a publication broke a rule; ``code`` says which (RejectCode)
    ├── NotFoundError            no such bundle, site or metadata file
    ├── PermissionDeniedError    an admin call without the admin token
    ├── ConflictError            already enrolled, already published
    ├── UntrustedMetadataError   TUF refused the registry's metadata or a target (client side)
    ├── StoreError               the storage folder is unusable or inconsistent
    │   └── EventLogError        the event log's hash chain is broken
    └── RegistryUnavailableError the registry cannot be reached (client side)
"""

from __future__ import annotations

from enum import StrEnum

from protocol.errors import GscoError

__all__ = [
    "ConflictError",
    "EventLogError",
    "NotFoundError",
    "PermissionDeniedError",
    "RegistryError",
    "RegistryUnavailableError",
    "RejectCode",
    "RejectedError",
    "StoreError",
    "UntrustedMetadataError",
]


class RejectCode(StrEnum):
    """Why a publication was refused: one code per rule."""

    BAD_FILE_NAME = "BAD_FILE_NAME"  # '..', absolute, not a plain name
    UNEXPECTED_FILE = "UNEXPECTED_FILE"  # a file no bundle may hold
    TOO_LARGE = "TOO_LARGE"  # a file or the bundle over the configured limits
    UNSIGNED = "UNSIGNED"  # no model.sig
    MALFORMED_SIGNATURE = "MALFORMED_SIGNATURE"  # model.sig is not an accepted sigstore bundle
    UNKNOWN_KEY = "UNKNOWN_KEY"  # signed by a key that was never enrolled
    REVOKED_KEY = "REVOKED_KEY"  # signed by a revoked key
    BAD_SIGNATURE = "BAD_SIGNATURE"  # the signature does not verify
    UNSUPPORTED_MANIFEST = "UNSUPPORTED_MANIFEST"  # signed with settings we do not accept
    FILE_CHANGED = "FILE_CHANGED"  # a file differs from the signed manifest
    FILE_ADDED = "FILE_ADDED"  # a file that was not signed
    FILE_MISSING = "FILE_MISSING"  # a signed file is absent
    MISSING_FILE = "MISSING_FILE"  # a required bundle file (model.onnx, card.json, ...) is absent
    SITE_MISMATCH = "SITE_MISMATCH"  # signed by one site, card names another
    INVALID_CARD = "INVALID_CARD"  # card.json fails its schema
    OUT_OF_RANGE = "OUT_OF_RANGE"  # card.json holds a value the wire protocol cannot carry
    INVALID_MODEL = "INVALID_MODEL"  # model.onnx breaks the ONNX contract
    INVALID_INDEX = "INVALID_INDEX"  # index.npz breaks its contract or contradicts the card
    INVALID_ADAPTER = "INVALID_ADAPTER"  # a LoRA adapter vLLM would not serve, or not as declared
    INVALID_POLICY = "INVALID_POLICY"  # a policy outside what a fit on its evidence could give
    STALE_VERSION = "STALE_VERSION"  # not newer than the last version (a replay), or a jump
    NO_CONSORTIUM_BACKING = "NO_CONSORTIUM_BACKING"  # too few training sites co-signed it
    INVALID_TUF_METADATA = "INVALID_TUF_METADATA"  # the site's delegated targets metadata is wrong
    UNAUTHENTICATED = "UNAUTHENTICATED"  # the publish header is not signed by the site's key
    BUSY = "BUSY"  # too many uploads in progress (for the site or in total); retry later
    TIMED_OUT = "TIMED_OUT"  # the header or the body did not arrive in time


class RegistryError(GscoError):
    """Root of the registry's errors."""


class RejectedError(RegistryError):
    """A publication was refused; nothing was stored."""

    def __init__(self, code: RejectCode, message: str) -> None:
        self.code = code
        super().__init__(f"{code.value}: {message}")


class NotFoundError(RegistryError):
    """No such bundle, site or file."""


class PermissionDeniedError(RegistryError):
    """An admin call without a valid admin token."""


class ConflictError(RegistryError):
    """The thing exists already (a key enrolled twice, say)."""


class StoreError(RegistryError):
    """The storage folder is unusable or inconsistent."""


class EventLogError(StoreError):
    """The event log's hash chain is broken: an entry was edited, removed or reordered."""


class RegistryUnavailableError(RegistryError):
    """The registry could not be reached or did not answer in time."""


class UntrustedMetadataError(RegistryError):
    """TUF refused what the registry served.

    A rollback, an expired (frozen) role, a bad signature, or a target whose
    length or hash differs from the signed metadata.
    """
