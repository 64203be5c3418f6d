"""Where an audit reads a registry from: its storage folder (read-only) or its address."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from protocol import BundleRef, SiteKey, UnreadableBundle
from registry import NotFoundError, RegistryClient, RegistryReader

__all__ = ["LocalRegistry", "RegistrySource", "RemoteRegistry"]


class RegistrySource(Protocol):
    """What the audit needs from a registry. Every byte it returns is untrusted."""

    description: str

    def sites(self) -> list[SiteKey]:
        """Every enrolled key, revoked ones included."""
        ...

    def bundles(self) -> list[BundleRef]:
        """Every published bundle, revoked ones included."""
        ...

    def unreadable_bundles(self) -> list[UnreadableBundle]:
        """Stored bundle rows that do not fit the schema (left out of :meth:`bundles`)."""
        ...

    def bundle_files(self, digest: str) -> dict[str, bytes]:
        """A bundle's files as stored, unverified."""
        ...

    def fetch_metadata(self, name: str) -> bytes:
        """One TUF metadata file."""
        ...

    def fetch_target(self, path: str) -> bytes:
        """One TUF target file, ``<site>/<digest>/<name>``."""
        ...

    def event_log(self) -> tuple[tuple[int, str], list[bytes]]:
        """The committed head ``(count, hash)`` and the event-log lines."""
        ...

    def trusted_root(self) -> bytes:
        """The registry's own ``1.root.json`` (used when the auditor gives none)."""
        ...

    def close(self) -> None:
        """Releases the source."""
        ...


class LocalRegistry:
    """A registry storage folder, opened read-only: the audit repairs and re-signs nothing."""

    def __init__(self, root: Path) -> None:
        self._store = RegistryReader(root)
        self.description = f"registry storage folder {root}"

    def sites(self) -> list[SiteKey]:
        return self._store.sites(include_revoked=True)

    def bundles(self) -> list[BundleRef]:
        return self._store.bundles(include_revoked=True)

    def unreadable_bundles(self) -> list[UnreadableBundle]:
        return self._store.unreadable_bundles()

    def _blob(self, digest: str) -> bytes:
        try:
            return self._store.blobs.path(digest).read_bytes()  # raw: the audit checks hashes
        except FileNotFoundError:
            raise NotFoundError(f"blob {digest[:16]}… is missing from storage") from None

    def bundle_files(self, digest: str) -> dict[str, bytes]:
        return {name: self._blob(d) for name, d in self._store.bundle_files(digest).items()}

    def fetch_metadata(self, name: str) -> bytes:
        return self._store.tuf.metadata_bytes(name)

    def fetch_target(self, path: str) -> bytes:
        return self._blob(self._store.target_blob(path))

    def event_log(self) -> tuple[tuple[int, str], list[bytes]]:
        return self._store.event_log()

    def trusted_root(self) -> bytes:
        return self._store.tuf.trusted_root()

    def close(self) -> None:
        self._store.close()


class RemoteRegistry:
    """A running registry, read through its public gRPC API."""

    def __init__(self, address: str, ca_cert: Path | None = None) -> None:
        root_certificates = ca_cert.read_bytes() if ca_cert else None
        self._client = RegistryClient(address, root_certificates=root_certificates, timeout_s=120)
        self.description = f"registry at {address}"

    def sites(self) -> list[SiteKey]:
        return self._client.sites(include_revoked=True)

    def bundles(self) -> list[BundleRef]:
        return self._client.bundles(include_revoked=True)

    def unreadable_bundles(self) -> list[UnreadableBundle]:
        return self._client.listing(include_revoked=True).unreadable

    def bundle_files(self, digest: str) -> dict[str, bytes]:
        return self._client.fetch(digest)

    def fetch_metadata(self, name: str) -> bytes:
        return self._client.fetch_metadata(name)

    def fetch_target(self, path: str) -> bytes:
        return self._client.fetch_target(path)

    def event_log(self) -> tuple[tuple[int, str], list[bytes]]:
        return self._client.event_log()

    def trusted_root(self) -> bytes:
        return self._client.fetch_metadata("1.root.json")

    def close(self) -> None:
        self._client.close()
