"""Client API keys: only their sha256 is stored; a key is shown once, when it is created."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, StringConstraints

from hub.errors import HubConfigError
from protocol import GscoError, Identifier, Sha256Hex, StrictModel

__all__ = ["ApiKeys", "ClientKey", "create_client_key"]

_PREFIX = "gsco_"


class ClientKey(StrictModel):
    """One client of the diagnosis API."""

    client_id: Identifier
    key_sha256: Sha256Hex


class _KeyFile(StrictModel):
    schema_version: Literal[1] = 1
    clients: Annotated[tuple[ClientKey, ...], Field(max_length=100_000)] = ()
    note: Annotated[str, StringConstraints(max_length=200)] = (
        "sha256 of each client's API key; the keys themselves are not stored"
    )


def _hash(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class ApiKeys:
    """The clients allowed to call the API."""

    clients: tuple[ClientKey, ...]

    @classmethod
    def load(cls, path: Path) -> ApiKeys:
        """Reads a key file written by :func:`create_client_key`.

        Raises:
            HubConfigError: missing, unreadable or malformed.
        """
        try:
            return cls(_KeyFile.parse(path.read_bytes()).clients)
        except OSError as exc:
            raise HubConfigError(f"cannot read API key file {path}: {exc.strerror}") from exc
        except GscoError as exc:
            raise HubConfigError(f"API key file {path}: {exc}") from exc

    def identify(self, key: str | None) -> str | None:
        """The client id of ``key``, or ``None`` (constant-time per stored key)."""
        if not key:
            return None
        digest = _hash(key)
        found = None
        for client in self.clients:
            if hmac.compare_digest(client.key_sha256, digest):
                found = client.client_id
        return found


def create_client_key(path: Path, client_id: str) -> str:
    """Adds a client to the key file (created 0600 if missing) and returns its new key.

    Raises:
        HubConfigError: the client exists already, or the file is malformed.
    """
    existing = ApiKeys.load(path).clients if path.exists() else ()
    if any(c.client_id == client_id for c in existing):
        raise HubConfigError(f"client {client_id!r} already has a key in {path}")
    key = _PREFIX + secrets.token_urlsafe(32)
    document = _KeyFile(clients=(*existing, ClientKey(client_id=client_id, key_sha256=_hash(key))))
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        json.dump(document.model_dump(mode="json"), handle, indent=2)
        handle.write("\n")
    os.replace(partial, path)
    return key
