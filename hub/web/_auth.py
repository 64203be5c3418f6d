"""Client API keys: only their sha256 is stored; a key is shown once, when it is created."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import secrets
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, StringConstraints

from hub.errors import HubConfigError
from protocol import GscoError, Identifier, Sha256Hex, StrictModel

__all__ = ["ApiKeys", "ClientKey", "KeyFile", "create_client_key", "remove_client_key"]

_PREFIX = "gsco_"
log = logging.getLogger(__name__)


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


class KeyFile:
    """The API key file in service, reloaded when it changes: no restart to revoke a key.

    Every lookup checks the file's identity (inode, size, modification time)
    at most every ``check_interval_s`` seconds and reloads it when it changed;
    :meth:`reload` (what SIGHUP calls) reloads at once. A file that cannot be
    read or parsed keeps the keys in service and is logged as an error.
    """

    def __init__(self, path: Path, *, check_interval_s: float = 0.5) -> None:
        self.path = path
        self.check_interval_s = check_interval_s
        self._lock = threading.Lock()
        self._keys = ApiKeys.load(path)
        self._stamp = self._stat()
        self._checked = time.monotonic()
        self.reloads = 0

    def _stat(self) -> tuple[int, int, int] | None:
        try:
            info = self.path.stat()
        except OSError:
            return None
        return info.st_ino, info.st_size, info.st_mtime_ns

    def reload(self) -> bool:
        """Reads the file again now; whether the new keys are in service."""
        with self._lock:
            self._checked = time.monotonic()
            self._stamp = self._stat()
            try:
                self._keys = ApiKeys.load(self.path)
            except HubConfigError as exc:
                log.error("API key file not reloaded, the previous keys stay in service: %s", exc)
                return False
            self.reloads += 1
            log.info("API key file %s reloaded: %d clients", self.path, len(self._keys.clients))
            return True

    def _fresh(self) -> ApiKeys:
        if time.monotonic() - self._checked >= self.check_interval_s:
            self._checked = time.monotonic()
            if self._stat() != self._stamp:
                self.reload()
        return self._keys

    def identify(self, key: str | None) -> str | None:
        """The client id of ``key`` in the current file, or ``None``."""
        return self._fresh().identify(key)

    @property
    def clients(self) -> tuple[ClientKey, ...]:
        """The clients in service."""
        return self._fresh().clients


def _write_key_file(path: Path, clients: tuple[ClientKey, ...]) -> None:
    """Writes the key file whole (mode 0600) and renames it into place."""
    document = _KeyFile(clients=clients)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        json.dump(document.model_dump(mode="json"), handle, indent=2)
        handle.write("\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(partial, path)


def create_client_key(path: Path, client_id: str) -> str:
    """Adds a client to the key file (created 0600 if missing) and returns its new key.

    Raises:
        HubConfigError: the client exists already, or the file is malformed.
    """
    existing = ApiKeys.load(path).clients if path.exists() else ()
    if any(c.client_id == client_id for c in existing):
        raise HubConfigError(f"client {client_id!r} already has a key in {path}")
    key = _PREFIX + secrets.token_urlsafe(32)
    _write_key_file(path, (*existing, ClientKey(client_id=client_id, key_sha256=_hash(key))))
    return key


def remove_client_key(path: Path, client_id: str) -> None:
    """Removes a client from the key file; a running hub refuses its key within a second.

    Raises:
        HubConfigError: no such client, or the file is missing or malformed.
    """
    existing = ApiKeys.load(path).clients
    kept = tuple(c for c in existing if c.client_id != client_id)
    if len(kept) == len(existing):
        raise HubConfigError(f"client {client_id!r} has no key in {path}")
    _write_key_file(path, kept)
