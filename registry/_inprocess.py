"""The registry's read API in process: what a hub syncs from, without gRPC or a server.

:class:`InProcessRegistry` answers the calls a hub makes of a
:class:`registry.RegistryClient` (sites, the listing, TUF metadata and target
files) straight from a :class:`registry.Registry` core, the way python-tuf's
``RepositorySimulator`` stands in for a repository in its client tests. TUF
verification on the hub's side is unchanged: the hub still trusts only what
its own TUF client verifies. For fast tests and for embedding a hub and a
registry in one process; the gRPC server is tested on its own.
"""

from __future__ import annotations

from typing import Protocol

from protocol import BundleRef, SiteKey
from registry._client import BundleListing
from registry._reader import RegistryReader

__all__ = ["InProcessRegistry", "RegistryReadAPI"]


class RegistryReadAPI(Protocol):
    """The calls a hub makes of its registry (a :class:`RegistryClient` or a stand-in)."""

    def sites(self, *, include_revoked: bool = False) -> list[SiteKey]:
        """Enrolled keys."""
        ...

    def listing(
        self, *, task_id: str = "", site_id: str = "", include_revoked: bool = False
    ) -> BundleListing:
        """Published bundles and the entries that cannot be used."""
        ...

    def fetch_metadata(self, name: str) -> bytes:
        """One TUF metadata file."""
        ...

    def fetch_target(self, path: str) -> bytes:
        """One TUF target file."""
        ...

    def close(self) -> None:
        """Releases the connection."""
        ...


class InProcessRegistry:
    """:class:`RegistryReadAPI` over a registry core in this process."""

    def __init__(self, store: RegistryReader) -> None:
        self.store = store

    def sites(self, *, include_revoked: bool = False) -> list[SiteKey]:
        """Enrolled keys, oldest first."""
        return self.store.sites(include_revoked=include_revoked)

    def listing(
        self, *, task_id: str = "", site_id: str = "", include_revoked: bool = False
    ) -> BundleListing:
        """What the server's ``ListBundles`` answers."""
        bundles: list[BundleRef] = self.store.bundles(
            task_id=task_id or None, site_id=site_id or None, include_revoked=include_revoked
        )
        return BundleListing(bundles, self.store.unreadable_bundles())

    def fetch_metadata(self, name: str) -> bytes:
        """What the server's ``FetchMetadata`` answers.

        Raises:
            NotFoundError: no such metadata file.
        """
        return self.store.tuf.metadata_bytes(name)

    def fetch_target(self, path: str) -> bytes:
        """What the server's ``FetchTarget`` answers (a blob, checked against its digest).

        Raises:
            NotFoundError: no such target.
            StoreError: the blob no longer matches its digest.
        """
        return self.store.blobs.get(self.store.target_blob(path))

    def close(self) -> None:
        """Nothing to release: the store belongs to the caller."""
