"""Receiving a publication: authenticated before its body, streamed to disk under quotas.

The order is what bounds an attacker's cost to the registry:

1. the header (one gRPC message, at most two chunk sizes) must arrive within
   ``header_timeout_s``;
2. its declared names and sizes are checked against the limits, and its signed
   site metadata against the site's enrolled keys (:meth:`Registry.authenticate_upload`):
   an unauthenticated sender is refused here, having sent nothing but a header;
3. the upload takes a slot of its site (``max_uploads_per_site``) and of the
   registry (``max_uploads_total``, ``max_inflight_bytes``), or is refused as ``BUSY``;
4. the body is written to temporary files in the registry's ``tmp`` folder,
   hashed on the way, never more bytes than declared, within a deadline that
   grows with the declared size;
5. the signature is checked from the hashes alone (:meth:`Registry.check_signature`);
   only then are the files read into memory for the content checks.
"""

from __future__ import annotations

import hashlib
import tempfile
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from registry._core import Registry
from registry.errors import RejectCode, RejectedError
from signing import SIGNATURE_FILE

__all__ = ["ReceivedUpload", "UploadGate", "UploadLimits", "receive_upload"]


@dataclass(frozen=True)
class UploadLimits:
    """Bounds on uploads in progress. Sizes in bytes, times in seconds."""

    max_uploads_total: int = 4  # uploads receiving at once, all sites together
    max_uploads_per_site: int = 1  # uploads receiving at once for one site
    max_inflight_bytes: int = 4 * 1024**3  # declared bytes of all uploads receiving at once
    header_timeout_s: float = 10.0  # from the stream's start to its header
    min_upload_bytes_per_s: int = 256 * 1024  # slower bodies are cut off ...
    upload_grace_s: float = 60.0  # ... after this much time plus size / rate


class UploadGate:
    """Counts uploads in progress and refuses those over the limits (never waits)."""

    def __init__(self, limits: UploadLimits) -> None:
        self.limits = limits
        self._lock = threading.Lock()
        self._per_site: dict[str, int] = {}
        self._total = 0
        self._bytes = 0

    @contextmanager
    def slot(self, site_id: str, declared_bytes: int) -> Iterator[None]:
        """Holds one upload slot of ``site_id`` while the body is received.

        Raises:
            RejectedError: ``BUSY``, when the site or the registry is at its limit.
        """
        limits = self.limits
        with self._lock:
            if self._per_site.get(site_id, 0) >= limits.max_uploads_per_site:
                raise RejectedError(
                    RejectCode.BUSY,
                    f"site {site_id} has {limits.max_uploads_per_site} upload(s) in progress; "
                    "retry when it is done",
                )
            if (
                self._total >= limits.max_uploads_total
                or self._bytes + declared_bytes > limits.max_inflight_bytes
            ):
                raise RejectedError(
                    RejectCode.BUSY, "the registry is receiving its limit of uploads; retry later"
                )
            self._per_site[site_id] = self._per_site.get(site_id, 0) + 1
            self._total += 1
            self._bytes += declared_bytes
        try:
            yield
        finally:
            with self._lock:
                self._per_site[site_id] -= 1
                if not self._per_site[site_id]:
                    del self._per_site[site_id]
                self._total -= 1
                self._bytes -= declared_bytes


@dataclass(frozen=True)
class ReceivedUpload:
    """A body on disk whose every file matched its declared size and sha256."""

    site_targets: bytes
    paths: Mapping[str, Path]
    digests: Mapping[str, str]  # name -> sha256, model.sig included
    sizes: Mapping[str, int]

    def read(self) -> dict[str, bytes]:
        """The files' bytes (after the signature stage passed)."""
        return {name: path.read_bytes() for name, path in self.paths.items()}


class _Deadline:
    """Cancels the RPC when its time is up; restartable with a new duration."""

    def __init__(self, context: Any) -> None:
        self._context = context
        self._timer: threading.Timer | None = None
        self.expired = threading.Event()

    def start(self, seconds: float) -> None:
        self.stop()

        def fire() -> None:
            self.expired.set()
            self._context.cancel()

        self._timer = threading.Timer(seconds, fire)
        self._timer.daemon = True
        self._timer.start()

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


@contextmanager
def receive_upload(
    messages: Iterator[Any], context: Any, registry: Registry, gate: UploadGate
) -> Iterator[ReceivedUpload]:
    """Receives one ``Publish`` stream (see the module docstring); removes its files after.

    Raises:
        RejectedError: the rule the upload broke; nothing is stored.
    """
    limits = gate.limits
    deadline = _Deadline(context)
    deadline.start(limits.header_timeout_s)
    directory: Path | None = None
    try:
        first = next(messages, None)
        deadline.stop()
        if first is None or first.WhichOneof("part") != "header":
            raise RejectedError(RejectCode.MISSING_FILE, "a publication starts with its header")
        declared = {
            entry.name: (int(entry.size_bytes), entry.sha256) for entry in first.header.files
        }
        if len(declared) != len(first.header.files):
            raise RejectedError(RejectCode.BAD_FILE_NAME, "the header names a file twice")
        site_targets = bytes(first.header.site_targets_metadata)
        site_id = registry.authenticate_upload(site_targets, declared)
        total = sum(size for size, _ in declared.values())
        with gate.slot(site_id, total):
            deadline.start(limits.upload_grace_s + total / limits.min_upload_bytes_per_s)
            directory = Path(tempfile.mkdtemp(dir=registry.blobs.tmp, prefix="upload-"))
            paths = _receive_body(messages, declared, directory)
            deadline.stop()
            digests = {name: sha256 for name, (_, sha256) in declared.items()}
            sizes = {name: size for name, (size, _) in declared.items()}
            signature = paths[SIGNATURE_FILE].read_bytes() if SIGNATURE_FILE in paths else None
            registry.check_signature(
                signature, {n: d for n, d in digests.items() if n != SIGNATURE_FILE}, sizes
            )
            yield ReceivedUpload(site_targets, paths, digests, sizes)
    except Exception:
        if deadline.expired.is_set():
            raise RejectedError(
                RejectCode.TIMED_OUT, "the upload did not arrive within its deadline"
            ) from None
        raise
    finally:
        deadline.stop()
        if directory is not None:
            for path in directory.iterdir():
                path.unlink(missing_ok=True)
            directory.rmdir()


def _receive_body(
    messages: Iterator[Any], declared: Mapping[str, tuple[int, str]], directory: Path
) -> dict[str, Path]:
    """Writes each declared file's chunks to ``directory``, hashing them; checks every file."""
    paths = {name: directory / f"{index}.part" for index, name in enumerate(sorted(declared))}
    handles = {name: open(path, "wb") for name, path in paths.items()}  # noqa: SIM115
    hashes = {name: hashlib.sha256() for name in declared}
    written = dict.fromkeys(declared, 0)
    try:
        for message in messages:
            chunk = message.chunk
            if message.WhichOneof("part") != "chunk" or chunk.name not in declared:
                raise RejectedError(
                    RejectCode.BAD_FILE_NAME, f"a chunk of an undeclared file {chunk.name[:80]!r}"
                )
            size = declared[chunk.name][0]
            if chunk.offset != written[chunk.name] or written[chunk.name] + len(chunk.data) > size:
                raise RejectedError(RejectCode.TOO_LARGE, f"{chunk.name}: more bytes than declared")
            handles[chunk.name].write(chunk.data)
            hashes[chunk.name].update(chunk.data)
            written[chunk.name] += len(chunk.data)
    finally:
        for handle in handles.values():
            handle.close()
    for name, (size, sha256) in declared.items():
        if written[name] != size or hashes[name].hexdigest() != sha256:
            raise RejectedError(RejectCode.FILE_CHANGED, f"{name} arrived incomplete or altered")
    return paths
