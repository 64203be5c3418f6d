"""Fetching bundles through TUF: what a hub trusts, without trusting the registry's storage.

:class:`TrustedRegistry` keeps TUF metadata in a local folder, starts from a
root given out of band (``1.root.json``), updates with ``tuf.ngclient`` over
the registry's gRPC API, and hands out only bundle files whose length and
sha256 match metadata signed by the publishing site, under delegations signed
by the registry, in a snapshot that is not older than one already seen.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Protocol
from urllib.parse import quote

from tuf.api import exceptions as tuf_errors
from tuf.api.metadata import Metadata, Targets
from tuf.ngclient import FetcherInterface, Updater, UpdaterConfig

from registry._adapter import ADAPTER_BUNDLE_FILES
from registry._tuf import adapter_role, adapter_target_path, target_path
from registry._verify import BUNDLE_FILES, REQUIRED_FILES
from registry.errors import (
    NotFoundError,
    RegistryError,
    RegistryUnavailableError,
    UntrustedMetadataError,
)
from signing import SIGNATURE_FILE

__all__ = ["TrustedRegistry", "TufSource"]

_METADATA_URL = "gsco-registry:/metadata/"
_TARGETS_URL = "gsco-registry:/targets/"


class TufSource(Protocol):
    """Where untrusted TUF metadata and target files come from (a :class:`RegistryClient`)."""

    def fetch_metadata(self, name: str) -> bytes:
        """One metadata file, e.g. ``timestamp.json`` (raises NotFoundError if absent)."""
        ...

    def fetch_target(self, path: str) -> bytes:
        """One target file by its target path (raises NotFoundError if absent)."""
        ...


class _Unreachable(tuf_errors.DownloadError):
    """The registry could not be reached: a transport failure, not bad metadata."""

    def __init__(self, cause: RegistryUnavailableError) -> None:
        super().__init__(str(cause))
        self.cause = cause


def _download_failed(exc: tuf_errors.DownloadError, what: str) -> RegistryError:
    """Keeps "the registry is unreachable" apart from "what it served is not trusted"."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, _Unreachable):
            return RegistryUnavailableError(f"{what}: {seen.cause}")
        seen = seen.__cause__ or seen.__context__
    return UntrustedMetadataError(f"{what}: {exc}")


class _GrpcFetcher(FetcherInterface):
    """Maps ngclient's URLs onto the registry's FetchMetadata and FetchTarget calls."""

    def __init__(self, client: TufSource) -> None:
        self._client = client

    def _fetch(self, url: str) -> Iterator[bytes]:
        try:
            if url.startswith(_METADATA_URL):
                data = self._client.fetch_metadata(url.removeprefix(_METADATA_URL))
            elif url.startswith(_TARGETS_URL):
                data = self._client.fetch_target(url.removeprefix(_TARGETS_URL))
            else:
                raise tuf_errors.DownloadError(f"unexpected URL {url}")
        except NotFoundError as exc:
            raise tuf_errors.DownloadHTTPError(str(exc), 404) from exc
        except RegistryUnavailableError as exc:
            raise _Unreachable(exc) from exc
        except RegistryError as exc:
            raise tuf_errors.DownloadError(str(exc)) from exc
        return iter([data])


class TrustedRegistry:
    """Bundles from one registry, verified through TUF."""

    def __init__(self, client: TufSource, cache_dir: Path, trusted_root: bytes) -> None:
        self._client = client
        self._metadata_dir = cache_dir / "metadata"
        self._targets_dir = cache_dir / "targets"
        self._metadata_dir.mkdir(parents=True, exist_ok=True)
        self._targets_dir.mkdir(parents=True, exist_ok=True)
        if not (self._metadata_dir / "root.json").exists():
            (self._metadata_dir / "root.json").write_bytes(trusted_root)
        self._updater: Updater | None = None

    def refresh(self) -> int:
        """Updates the trusted metadata; returns the snapshot version now trusted.

        Raises:
            UntrustedMetadataError: rollback, freeze (expired metadata), bad signatures.
            RegistryUnavailableError: the registry cannot be reached.
        """
        updater = Updater(
            str(self._metadata_dir),
            _METADATA_URL,
            str(self._targets_dir),
            _TARGETS_URL,
            fetcher=_GrpcFetcher(self._client),
            config=UpdaterConfig(prefix_targets_with_hash=False),
            bootstrap=None,  # trust the local root.json (written from the out-of-band root)
        )
        try:
            updater.refresh()
        except tuf_errors.RepositoryError as exc:
            raise UntrustedMetadataError(f"TUF refused the registry's metadata: {exc}") from exc
        except tuf_errors.DownloadError as exc:
            raise _download_failed(exc, "TUF could not fetch metadata") from exc
        self._updater = updater
        snapshot = self._metadata_dir / "snapshot.json"
        return int(json.loads(snapshot.read_bytes())["signed"]["version"])

    def _refreshed(self) -> Updater:
        if self._updater is None:
            self.refresh()
        assert self._updater is not None
        return self._updater

    def delegated_key_ids(self) -> dict[str, frozenset[str]]:
        """The key ids each site may sign with, from the registry-signed delegations.

        Read from the ``targets.json`` that the last :meth:`refresh` verified, so
        a key the registry lists but did not delegate to (or revoked) is absent.
        """
        self._refreshed()
        targets = Metadata[Targets].from_bytes((self._metadata_dir / "targets.json").read_bytes())
        delegations = targets.signed.delegations
        if delegations is None or delegations.roles is None:
            return {}
        return {name: frozenset(role.keyids) for name, role in delegations.roles.items()}

    def resolves(self, site_id: str, bundle_digest: str) -> bool:
        """Whether the trusted metadata still lists the bundle (it does not once revoked).

        Raises:
            UntrustedMetadataError: the site's delegated metadata is refused.
            RegistryUnavailableError: the registry cannot be reached.
        """
        try:
            info = self._refreshed().get_targetinfo(
                target_path(site_id, bundle_digest, SIGNATURE_FILE)
            )
        except tuf_errors.RepositoryError as exc:
            raise UntrustedMetadataError(f"TUF refused site {site_id}'s metadata: {exc}") from exc
        except tuf_errors.DownloadError as exc:
            raise _download_failed(exc, f"TUF could not fetch site {site_id}'s metadata") from exc
        return info is not None

    def adapter_resolves(self, task_id: str, bundle_digest: str) -> bool:
        """Whether the task's consortium adapter role, as trusted now, lists this bundle.

        TUF checks the role's signatures against its delegation's keys and
        threshold (the registry's targets key signs both).

        Raises:
            UntrustedMetadataError: the role is refused (too few valid signatures,
                a rollback, expired).
            RegistryUnavailableError: the registry cannot be reached.
        """
        path = adapter_target_path(task_id, bundle_digest, SIGNATURE_FILE)
        try:
            info = self._refreshed().get_targetinfo(path)
        except tuf_errors.RepositoryError as exc:
            raise UntrustedMetadataError(
                f"TUF refused the consortium's adapter role for {task_id}: {exc}"
            ) from exc
        except tuf_errors.DownloadError as exc:
            raise _download_failed(
                exc, f"TUF could not fetch the adapter role of {task_id}"
            ) from exc
        return info is not None

    def adapter_delegation(self, task_id: str) -> tuple[int, frozenset[str]] | None:
        """The task's adapter role as the registry delegates it: ``(threshold, key ids)``."""
        self._refreshed()
        targets = Metadata[Targets].from_bytes((self._metadata_dir / "targets.json").read_bytes())
        delegations = targets.signed.delegations
        role = (delegations.roles or {}).get(adapter_role(task_id)) if delegations else None
        return (role.threshold, frozenset(role.keyids)) if role is not None else None

    def adapter_role_metadata(self, task_id: str) -> Metadata[Targets]:
        """The task's adapter role as TUF verified it at the last :meth:`adapter_resolves`.

        Raises:
            NotFoundError: not verified yet.
        """
        path = self._metadata_dir / f"{quote(adapter_role(task_id), '')}.json"
        if not path.is_file():
            raise NotFoundError(f"no verified adapter role for {task_id}")
        return Metadata[Targets].from_bytes(path.read_bytes())

    def adapter_files(self, task_id: str, bundle_digest: str) -> dict[str, bytes]:
        """A consortium adapter's files, each checked against the role's lengths and hashes.

        Raises:
            NotFoundError: the trusted role does not list the bundle.
            UntrustedMetadataError: the role or a file is refused.
            RegistryUnavailableError: the registry cannot be reached.
        """
        return self._files(
            lambda name: adapter_target_path(task_id, bundle_digest, name),
            ADAPTER_BUNDLE_FILES,
            ADAPTER_BUNDLE_FILES,
            f"the consortium adapter {bundle_digest[:16]}… for {task_id}",
        )

    def bundle_files(
        self, site_id: str, bundle_digest: str, *, adapter: bool = False
    ) -> dict[str, bytes]:
        """A bundle's files (an adapter bundle's with ``adapter``), each verified against TUF.

        Raises:
            NotFoundError: the trusted metadata does not resolve the bundle
                (never published, revoked, or its key revoked).
            UntrustedMetadataError: a file's length or hash differs (a swapped file).
            RegistryUnavailableError: the registry cannot be reached.
        """
        names, required = (
            (ADAPTER_BUNDLE_FILES, ADAPTER_BUNDLE_FILES)
            if adapter
            else (BUNDLE_FILES, REQUIRED_FILES)
        )
        return self._files(
            lambda name: target_path(site_id, bundle_digest, name),
            names,
            required,
            f"bundle {bundle_digest[:16]}… of site {site_id}",
        )

    def _files(
        self,
        path_of: Callable[[str], str],
        names: Iterable[str],
        required: Iterable[str],
        what: str,
    ) -> dict[str, bytes]:
        updater = self._refreshed()
        files: dict[str, bytes] = {}
        for name in sorted(names):
            path = path_of(name)
            try:
                info = updater.get_targetinfo(path)
                if info is None:
                    continue
                with tempfile.TemporaryDirectory(dir=self._targets_dir) as tmp:
                    local = updater.download_target(info, str(Path(tmp) / "target"))
                    files[name] = Path(local).read_bytes()
            except tuf_errors.RepositoryError as exc:
                raise UntrustedMetadataError(f"TUF refused {path}: {exc}") from exc
            except tuf_errors.DownloadError as exc:
                raise _download_failed(exc, f"TUF could not fetch {path}") from exc
        if not set(files) >= set(required):
            raise NotFoundError(
                f"{what} is not in the trusted metadata (never published, or revoked)"
            )
        return files
