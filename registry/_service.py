"""The gRPC servicer: wire messages in, :class:`Registry` calls, typed errors to status codes."""

from __future__ import annotations

import hmac
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import grpc

from protocol import GscoError, SchemaError
from protocol._pb import registry_pb2 as pb
from protocol._pb import registry_pb2_grpc as pb_grpc
from protocol.serde import bundle_ref_to_pb, site_key_to_pb, unreadable_to_pb
from registry._core import Registry
from registry._uploads import UploadGate, UploadLimits, receive_upload
from registry.errors import (
    ConflictError,
    NotFoundError,
    PermissionDeniedError,
    RejectCode,
    RejectedError,
    StoreError,
)
from signing import KeyFileError

__all__ = ["CHUNK_BYTES", "RegistryServicer"]

#: Bytes per streamed chunk, both directions.
CHUNK_BYTES = 1024 * 1024
_T = TypeVar("_T")


def _status(exc: GscoError) -> grpc.StatusCode:
    if isinstance(exc, RejectedError):
        return (
            grpc.StatusCode.RESOURCE_EXHAUSTED
            if exc.code in (RejectCode.TOO_LARGE, RejectCode.BUSY, RejectCode.TIMED_OUT)
            else grpc.StatusCode.INVALID_ARGUMENT
        )
    for kind, code in (
        (NotFoundError, grpc.StatusCode.NOT_FOUND),
        (PermissionDeniedError, grpc.StatusCode.PERMISSION_DENIED),
        (ConflictError, grpc.StatusCode.ALREADY_EXISTS),
        (KeyFileError, grpc.StatusCode.INVALID_ARGUMENT),
        (SchemaError, grpc.StatusCode.INVALID_ARGUMENT),
        (StoreError, grpc.StatusCode.INTERNAL),
    ):
        if isinstance(exc, kind):
            return code
    return grpc.StatusCode.INTERNAL


class RegistryServicer(pb_grpc.RegistryServicer):
    """Serves one :class:`Registry`."""

    def __init__(
        self, registry: Registry, admin_token: str, uploads: UploadLimits | None = None
    ) -> None:
        self._registry = registry
        self._admin_token = admin_token.encode()
        self._uploads = UploadGate(uploads or UploadLimits())

    def _call(self, context: grpc.ServicerContext, work: Callable[[], _T]) -> _T:
        try:
            return work()
        except GscoError as exc:
            context.abort(_status(exc), str(exc))
            raise  # unreachable: abort raises

    def _require_admin(self, context: grpc.ServicerContext) -> None:
        metadata = dict(context.invocation_metadata())
        supplied = str(metadata.get("authorization", "")).removeprefix("Bearer ").encode()
        if not hmac.compare_digest(supplied, self._admin_token):
            raise PermissionDeniedError("this call needs the registry's admin token")

    def EnrollSite(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802
        """Enrols a site key (admin)."""

        def work() -> Any:
            self._require_admin(context)
            return site_key_to_pb(
                self._registry.enroll(request.site_id, request.public_key_pem.encode())
            )

        return self._call(context, work)

    def ListSites(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802
        """Lists enrolled keys."""
        sites = self._registry.sites(include_revoked=request.include_revoked)
        return pb.ListSitesResponse(sites=[site_key_to_pb(s) for s in sites])

    def Publish(self, request_iterator: Iterator[Any], context: grpc.ServicerContext) -> Any:  # noqa: N802
        """Receives a bundle (header, then chunks), verifies it and stores it."""
        return self._call(context, lambda: self._publish(request_iterator, context))

    def _publish(self, messages: Iterator[Any], context: grpc.ServicerContext) -> Any:
        with receive_upload(messages, context, self._registry, self._uploads) as upload:
            ref = self._registry.publish(upload.read(), upload.site_targets)
        return pb.PublishResponse(bundle=bundle_ref_to_pb(ref))

    def ListBundles(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802
        """Lists bundles."""
        refs = self._registry.bundles(
            task_id=request.task_id or None,
            site_id=request.site_id or None,
            include_revoked=request.include_revoked,
        )
        return pb.ListBundlesResponse(
            bundles=[bundle_ref_to_pb(r) for r in refs],
            unreadable=[unreadable_to_pb(u) for u in self._registry.unreadable_bundles()],
        )

    def FetchBundle(self, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:  # noqa: N802
        """Streams a bundle's files in chunks."""
        files = self._call(context, lambda: self._registry.bundle_files(request.bundle_digest))
        for name, digest in sorted(files.items()):
            data = self._call(context, lambda d=digest: self._registry.blobs.get(d))  # type: ignore[misc]
            for offset in range(0, max(len(data), 1), CHUNK_BYTES):
                yield pb.FileChunk(
                    name=name, offset=offset, data=data[offset : offset + CHUNK_BYTES]
                )

    def FetchMetadata(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802
        """One TUF metadata file."""
        content = self._call(context, lambda: self._registry.tuf.metadata_bytes(request.name))
        return pb.FetchMetadataResponse(content=content)

    def FetchTarget(self, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:  # noqa: N802
        """One TUF target file, ``<site>/<bundle digest>/<file>``, in chunks."""
        registry = self._registry
        data = self._call(context, lambda: registry.blobs.get(registry.target_blob(request.path)))
        for offset in range(0, max(len(data), 1), CHUNK_BYTES):
            chunk = data[offset : offset + CHUNK_BYTES]
            yield pb.FileChunk(name=request.path, offset=offset, data=chunk)

    def FetchEventLog(self, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:  # noqa: N802
        """The committed event log in chunks, each naming the committed head."""
        (count, digest), lines = self._call(context, self._registry.event_log)
        data = b"".join(lines[:count])
        for offset in range(0, max(len(data), 1), CHUNK_BYTES):
            yield pb.EventLogChunk(
                head_count=count,
                head_hash=digest,
                offset=offset,
                data=data[offset : offset + CHUNK_BYTES],
            )

    def Revoke(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802
        """Revokes a bundle or a site key (admin)."""

        def work() -> Any:
            self._require_admin(context)
            if request.WhichOneof("target") == "bundle_digest":
                count = self._registry.revoke_bundle(request.bundle_digest, request.reason)
            elif request.WhichOneof("target") == "key_id":
                count = self._registry.revoke_key(request.key_id, request.reason)
            else:
                raise NotFoundError("name a bundle digest or a key id to revoke")
            return pb.RevokeResponse(revoked_count=count)

        return self._call(context, work)
