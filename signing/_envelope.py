"""Parsing of ``model.sig``: a sigstore bundle holding a DSSE envelope with an in-toto statement.

Pure: bytes in, parsed values out. Only the form that model-signing writes for
ECDSA key signing with file serialization is accepted.
"""

from __future__ import annotations

import base64
import binascii
import json
from pathlib import PurePosixPath
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from signing.errors import MalformedSignatureError, UnsupportedManifestError

#: The only file of a bundle that the manifest does not cover.
SIGNATURE_FILE = "model.sig"
#: ``model.sig`` files larger than this are rejected unparsed.
MAX_SIGNATURE_BYTES = 1024 * 1024

IN_TOTO_PAYLOAD_TYPE = "application/vnd.in-toto+json"
_Hex64 = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class _PublicKeyId(_Strict):
    hint: _Hex64


class _VerificationMaterial(_Strict):
    public_key: _PublicKeyId = Field(alias="publicKey")
    tlog_entries: list[Any] = Field(default_factory=list, alias="tlogEntries")


class _DsseSignature(_Strict):
    sig: str
    keyid: str = ""


class _DsseEnvelope(_Strict):
    payload: str
    payload_type: str = Field(alias="payloadType")
    signatures: Annotated[list[_DsseSignature], Field(min_length=1, max_length=1)]


class _SigstoreBundle(_Strict):
    media_type: Literal[
        "application/vnd.dev.sigstore.bundle.v0.3+json",
        "application/vnd.dev.sigstore.bundle+json;version=0.3",
    ] = Field(alias="mediaType")
    verification_material: _VerificationMaterial = Field(alias="verificationMaterial")
    dsse_envelope: _DsseEnvelope = Field(alias="dsseEnvelope")


class _Resource(_Strict):
    algorithm: Literal["sha256"]
    digest: _Hex64
    name: Annotated[str, StringConstraints(min_length=1, max_length=255)]


class _Serialization(_Strict):
    method: Literal["files"]
    hash_type: Literal["sha256"]
    allow_symlinks: Literal[False]
    ignore_paths: list[str] = Field(default_factory=list)


class _Predicate(_Strict):
    resources: list[_Resource]
    serialization: _Serialization


class _Subject(_Strict):
    name: str
    digest: dict[str, str]


class _Statement(_Strict):
    type_: Literal["https://in-toto.io/Statement/v1"] = Field(alias="_type")
    subject: list[_Subject]
    predicate_type: Literal["https://model_signing/signature/v1.0"] = Field(alias="predicateType")
    predicate: _Predicate


class Envelope(BaseModel):
    """The parts of ``model.sig`` that verification needs."""

    model_config = ConfigDict(frozen=True)

    key_hint: str
    payload_type: str
    payload: bytes
    signature: bytes


def parse_signature_file(data: bytes) -> Envelope:
    """Parses ``model.sig``.

    Raises:
        MalformedSignatureError: not a single-signature sigstore bundle with a DSSE envelope.
    """
    if len(data) > MAX_SIGNATURE_BYTES:
        raise MalformedSignatureError(
            f"{SIGNATURE_FILE} is larger than {MAX_SIGNATURE_BYTES} bytes"
        )
    try:
        bundle = _SigstoreBundle.model_validate_json(data)
        envelope = bundle.dsse_envelope
        payload = base64.b64decode(envelope.payload, validate=True)
        signature = base64.b64decode(envelope.signatures[0].sig, validate=True)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        where = ".".join(str(part) for part in first["loc"])
        raise MalformedSignatureError(
            f"{SIGNATURE_FILE} is not an accepted sigstore bundle ({where}: {first['msg']})"
        ) from exc
    except (binascii.Error, ValueError) as exc:
        raise MalformedSignatureError(f"{SIGNATURE_FILE} holds invalid base64") from exc
    return Envelope(
        key_hint=bundle.verification_material.public_key.hint,
        payload_type=envelope.payload_type,
        payload=payload,
        signature=signature,
    )


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE pre-authentication encoding: what the signature actually covers."""
    kind = payload_type.encode("utf-8")
    return b"DSSEv1 %d %b %d %b" % (len(kind), kind, len(payload), payload)


def is_safe_relative_path(name: str) -> bool:
    """Whether ``name`` is a plain relative POSIX path that stays inside its directory."""
    if not name or "\\" in name or "\x00" in name or name.startswith("/"):
        return False
    parts = PurePosixPath(name).parts
    return all(part not in ("", ".", "..") for part in parts) and "/".join(parts) == name


def parse_statement(payload: bytes) -> dict[str, str]:
    """Parses the signed in-toto statement into ``{file name: sha256}``.

    Raises:
        UnsupportedManifestError: a statement we do not accept (sharded hashing,
            symlinks allowed, unsafe or duplicate names, ignored paths other than
            ``model.sig``).
    """
    try:
        statement = _Statement.model_validate(json.loads(payload))
    except (ValidationError, ValueError) as exc:
        raise UnsupportedManifestError(f"signed statement not accepted: {exc}") from exc
    ignored = set(statement.predicate.serialization.ignore_paths)
    if not ignored <= {SIGNATURE_FILE}:
        raise UnsupportedManifestError(f"the signature ignores other paths: {sorted(ignored)}")
    files: dict[str, str] = {}
    for resource in statement.predicate.resources:
        if not is_safe_relative_path(resource.name) or resource.name == SIGNATURE_FILE:
            raise UnsupportedManifestError(f"unsafe file name in manifest: {resource.name!r}")
        if resource.name in files:
            raise UnsupportedManifestError(f"duplicate file in manifest: {resource.name!r}")
        files[resource.name] = resource.digest
    if not files:
        raise UnsupportedManifestError("the signed manifest names no files")
    return files
