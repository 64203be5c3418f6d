"""The registry client used by site agents, hubs, administrators and auditors."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import grpc

from protocol import BundleRef, SchemaError, SiteKey, UnreadableBundle
from protocol._pb import registry_pb2 as pb
from protocol._pb import registry_pb2_grpc as pb_grpc
from protocol.serde import bundle_ref_from_pb, site_key_from_pb, unreadable_from_pb
from registry._service import CHUNK_BYTES
from registry._tuf import adapter_role as adapter_role_name
from registry._tuf import build_site_targets
from registry.errors import (
    ConflictError,
    NotFoundError,
    PermissionDeniedError,
    RegistryError,
    RegistryUnavailableError,
    RejectCode,
    RejectedError,
)
from signing import bundle_digest, digest_files, is_safe_relative_path

__all__ = ["BundleListing", "RegistryClient"]

_T = TypeVar("_T")


def _translate(exc: grpc.RpcError) -> RegistryError:
    code, details = exc.code(), exc.details() or ""
    if code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED):
        name, _, message = details.partition(": ")
        if name in RejectCode.__members__:
            return RejectedError(RejectCode(name), message)
    kinds: dict[grpc.StatusCode, type[RegistryError]] = {
        grpc.StatusCode.NOT_FOUND: NotFoundError,
        grpc.StatusCode.PERMISSION_DENIED: PermissionDeniedError,
        grpc.StatusCode.ALREADY_EXISTS: ConflictError,
        grpc.StatusCode.UNAVAILABLE: RegistryUnavailableError,
        grpc.StatusCode.DEADLINE_EXCEEDED: RegistryUnavailableError,
    }
    return kinds.get(code, RegistryError)(f"registry: {details or code.name}")


@dataclass(frozen=True)
class BundleListing:
    """What :meth:`RegistryClient.listing` returns."""

    bundles: list[BundleRef]
    unreadable: list[UnreadableBundle]


class RegistryClient:
    """A connection to one registry (``host:port``)."""

    def __init__(
        self,
        target: str,
        *,
        admin_token: str | None = None,
        root_certificates: bytes | None = None,
        timeout_s: float = 120.0,
    ) -> None:
        options = [
            ("grpc.max_receive_message_length", CHUNK_BYTES * 2),
            ("grpc.max_send_message_length", CHUNK_BYTES * 2),
        ]
        self._channel = (
            grpc.secure_channel(target, grpc.ssl_channel_credentials(root_certificates), options)
            if root_certificates is not None
            else grpc.insecure_channel(target, options)
        )
        self._stub = pb_grpc.RegistryStub(self._channel)  # type: ignore[no-untyped-call]
        self._admin = [("authorization", f"Bearer {admin_token}")] if admin_token else []
        self.target = target
        self.timeout_s = timeout_s

    def __enter__(self) -> RegistryClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Closes the channel."""
        self._channel.close()

    def _call(self, work: Callable[[], _T]) -> _T:
        try:
            return work()
        except grpc.RpcError as exc:
            raise _translate(exc) from exc

    def wait_ready(self, timeout_s: float = 10.0) -> None:
        """Blocks until the registry answers (raises RegistryUnavailableError)."""
        try:
            grpc.channel_ready_future(self._channel).result(timeout=timeout_s)
        except grpc.FutureTimeoutError as exc:
            raise RegistryUnavailableError(f"registry {self.target} did not answer") from exc

    def enroll(self, site_id: str, public_key_pem: bytes) -> SiteKey:
        """Enrols a site key (needs the admin token)."""
        request = pb.EnrollSiteRequest(site_id=site_id, public_key_pem=public_key_pem.decode())
        return site_key_from_pb(
            self._call(
                lambda: self._stub.EnrollSite(request, timeout=self.timeout_s, metadata=self._admin)
            )
        )

    def sites(self, *, include_revoked: bool = False) -> list[SiteKey]:
        """Enrolled keys."""
        response = self._call(
            lambda: self._stub.ListSites(
                pb.ListSitesRequest(include_revoked=include_revoked), timeout=self.timeout_s
            )
        )
        return [site_key_from_pb(s) for s in response.sites]

    def publish(self, bundle_dir: Path, site_key: Path, password: bytes | None = None) -> BundleRef:
        """Streams a signed bundle directory plus its TUF metadata, signed by ``site_key``."""
        files = {p.name: p.read_bytes() for p in sorted(bundle_dir.iterdir()) if p.is_file()}
        return self.publish_files(files, site_key, password)

    def publish_files(
        self, files: dict[str, bytes], site_key: Path, password: bytes | None = None
    ) -> BundleRef:
        """Streams a bundle given as ``{name: bytes}`` (see :meth:`publish`)."""
        site_targets = b""
        site_id = _claimed_site(files)
        if site_id is not None:
            try:
                previous: bytes | None = self.fetch_metadata(f"{site_id}.json")
            except NotFoundError:
                previous = None
            digest = bundle_digest(digest_files(files))
            site_targets = build_site_targets(previous, site_id, digest, files, site_key, password)
        response = self._call(
            lambda: self._stub.Publish(_messages(files, site_targets), timeout=self.timeout_s)
        )
        return bundle_ref_from_pb(response.bundle)

    def publish_adapter(self, files: dict[str, bytes], adapter_role: bytes) -> BundleRef:
        """Streams a consortium adapter bundle with its co-signed role version.

        ``adapter_role``: the task's next adapter role version with its training
        sites' signatures (:func:`registry.assemble_adapter_role`).
        """
        response = self._call(
            lambda: self._stub.Publish(_messages(files, adapter_role), timeout=self.timeout_s)
        )
        return bundle_ref_from_pb(response.bundle)

    def adapter_role(self, task_id: str) -> bytes | None:
        """The task's consortium adapter role as the registry serves it (None: none yet).

        Untrusted bytes: what a site proposing the next version builds on
        (the registry refuses any version but the next).
        """
        try:
            return self.fetch_metadata(f"{adapter_role_name(task_id)}.json")
        except NotFoundError:
            return None

    def fetch_metadata(self, name: str) -> bytes:
        """One TUF metadata file (untrusted bytes: give them to a TUF client)."""
        request = pb.FetchMetadataRequest(name=name)
        response = self._call(lambda: self._stub.FetchMetadata(request, timeout=self.timeout_s))
        return bytes(response.content)

    def fetch_target(self, path: str) -> bytes:
        """One target file (untrusted bytes: give them to a TUF client)."""

        def work() -> bytes:
            data = bytearray()
            request = pb.FetchTargetRequest(path=path)
            for chunk in self._stub.FetchTarget(request, timeout=self.timeout_s):
                data.extend(chunk.data)
            return bytes(data)

        return self._call(work)

    def event_log(self) -> tuple[tuple[int, str], list[bytes]]:
        """The registry's committed event-log head and lines (untrusted: verify them)."""

        def work() -> tuple[tuple[int, str], list[bytes]]:
            data = bytearray()
            head = (0, "")
            for chunk in self._stub.FetchEventLog(
                pb.FetchEventLogRequest(), timeout=self.timeout_s
            ):
                head = (int(chunk.head_count), str(chunk.head_hash))
                data.extend(chunk.data)
            return head, bytes(data).splitlines(keepends=True)

        return self._call(work)

    def bundles(
        self, *, task_id: str = "", site_id: str = "", include_revoked: bool = False
    ) -> list[BundleRef]:
        """Published bundles (entries that do not decode are left out; see :meth:`listing`)."""
        return self.listing(
            task_id=task_id, site_id=site_id, include_revoked=include_revoked
        ).bundles

    def listing(
        self, *, task_id: str = "", site_id: str = "", include_revoked: bool = False
    ) -> BundleListing:
        """Published bundles, and the entries that cannot be used.

        An entry that does not decode into a valid :class:`BundleRef` (a
        registry older than the schema's bounds, say) is reported in
        ``unreadable`` instead of failing the whole listing, so that one bad
        row never stops a hub's sync.
        """
        request = pb.ListBundlesRequest(
            task_id=task_id, site_id=site_id, include_revoked=include_revoked
        )
        response = self._call(lambda: self._stub.ListBundles(request, timeout=self.timeout_s))
        refs: list[BundleRef] = []
        unreadable = [unreadable_from_pb(u) for u in response.unreadable]
        for message in response.bundles:
            try:
                refs.append(bundle_ref_from_pb(message))
            except SchemaError as exc:
                unreadable.append(
                    UnreadableBundle(
                        bundle_digest=message.bundle_digest[:200], problem=str(exc)[:2000]
                    )
                )
        return BundleListing(refs, unreadable)

    def fetch(self, bundle_digest: str) -> dict[str, bytes]:
        """A bundle's files as ``{name: bytes}`` (verify them with :func:`verify_publication`)."""

        def work() -> dict[str, bytes]:
            files: dict[str, bytearray] = {}
            request = pb.FetchBundleRequest(bundle_digest=bundle_digest)
            for chunk in self._stub.FetchBundle(request, timeout=self.timeout_s):
                buffer = files.setdefault(chunk.name, bytearray())
                if chunk.offset != len(buffer):
                    raise RegistryError(f"registry sent {chunk.name} out of order")
                buffer.extend(chunk.data)
            return {name: bytes(data) for name, data in files.items()}

        return self._call(work)

    def revoke_bundle(self, bundle_digest: str, reason: str) -> int:
        """Revokes a bundle (admin)."""
        request = pb.RevokeRequest(bundle_digest=bundle_digest, reason=reason)
        return int(
            self._call(
                lambda: self._stub.Revoke(request, timeout=self.timeout_s, metadata=self._admin)
            ).revoked_count
        )

    def revoke_key(self, key_id: str, reason: str) -> int:
        """Revokes a site key and every bundle it signed (admin)."""
        request = pb.RevokeRequest(key_id=key_id, reason=reason)
        return int(
            self._call(
                lambda: self._stub.Revoke(request, timeout=self.timeout_s, metadata=self._admin)
            ).revoked_count
        )


def _claimed_site(files: dict[str, bytes]) -> str | None:
    """The site id the card names, if readable (the registry checks it properly).

    ``card.json`` for a specialist, ``adapter_card.json`` for an adapter.
    """
    card = files.get("card.json", files.get("adapter_card.json", b""))
    try:
        site = json.loads(card).get("site_id")
    except (ValueError, AttributeError):
        return None
    return (
        site if isinstance(site, str) and is_safe_relative_path(site) and "/" not in site else None
    )


def _messages(files: dict[str, bytes], site_targets: bytes) -> Iterator[Any]:
    header = pb.PublishHeader(
        files=[
            pb.FileEntry(name=name, size_bytes=len(data), sha256=hashlib.sha256(data).hexdigest())
            for name, data in sorted(files.items())
        ],
        site_targets_metadata=site_targets,
    )
    yield pb.PublishMessage(header=header)
    for name, data in sorted(files.items()):
        for offset in range(0, len(data), CHUNK_BYTES):
            yield pb.PublishMessage(
                chunk=pb.FileChunk(
                    name=name, offset=offset, data=data[offset : offset + CHUNK_BYTES]
                )
            )
