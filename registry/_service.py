"""The gRPC servicer: wire messages in, :class:`Registry` calls, typed errors to status codes."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import grpc

from protocol import GscoError, SchemaError
from protocol._pb import registry_pb2 as pb
from protocol._pb import registry_pb2_grpc as pb_grpc
from protocol.serde import bundle_ref_to_pb, site_key_to_pb
from registry._core import Registry
from registry._verify import check_names_and_sizes
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
            if exc.code is RejectCode.TOO_LARGE
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

    def __init__(self, registry: Registry, admin_token: str) -> None:
        self._registry = registry
        self._admin_token = admin_token.encode()

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
        return self._call(context, lambda: self._publish(request_iterator))

    def _publish(self, messages: Iterator[Any]) -> Any:
        limits = self._registry.limits
        first = next(messages, None)
        if first is None or first.WhichOneof("part") != "header":
            raise RejectedError(RejectCode.MISSING_FILE, "a publication starts with its header")
        declared = {entry.name: entry for entry in first.header.files}
        # Refuse before receiving a byte; verify_publication checks the bytes again.
        check_names_and_sizes({n: e.size_bytes for n, e in declared.items()}, limits)
        buffers = {name: bytearray() for name in declared}
        for message in messages:
            chunk = message.chunk
            if message.WhichOneof("part") != "chunk" or chunk.name not in buffers:
                raise RejectedError(
                    RejectCode.BAD_FILE_NAME, f"a chunk of an undeclared file {chunk.name!r}"
                )
            buffer = buffers[chunk.name]
            if (
                chunk.offset != len(buffer)
                or len(buffer) + len(chunk.data) > declared[chunk.name].size_bytes
            ):
                raise RejectedError(RejectCode.TOO_LARGE, f"{chunk.name}: more bytes than declared")
            buffer.extend(chunk.data)
        files = {}
        for name, buffer in buffers.items():
            entry = declared[name]
            if (
                len(buffer) != entry.size_bytes
                or hashlib.sha256(buffer).hexdigest() != entry.sha256
            ):
                raise RejectedError(
                    RejectCode.FILE_CHANGED, f"{name} arrived incomplete or altered"
                )
            files[name] = bytes(buffer)
        ref = self._registry.publish(files, first.header.site_targets_metadata)
        return pb.PublishResponse(bundle=bundle_ref_to_pb(ref))

    def ListBundles(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802
        """Lists bundles."""
        refs = self._registry.bundles(
            task_id=request.task_id or None,
            site_id=request.site_id or None,
            include_revoked=request.include_revoked,
        )
        return pb.ListBundlesResponse(bundles=[bundle_ref_to_pb(r) for r in refs])

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
