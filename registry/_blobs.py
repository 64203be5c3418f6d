"""Content-addressed blob storage: ``ROOT/blobs/ab/abcdef...`` named by sha256.

Writes are atomic: a temporary file in ``ROOT/tmp``, fsync, rename, fsync of
the directory. A crash leaves either the whole blob or a temporary file that
:meth:`BlobStore.recover` removes.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from registry.errors import NotFoundError, StoreError

__all__ = ["BlobStore"]


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class BlobStore:
    """Blobs under ``root``; ``tmp`` must be on the same file system."""

    def __init__(self, root: Path, *, create: bool = True) -> None:
        self.blobs = root / "blobs"
        self.tmp = root / "tmp"
        if create:
            self.blobs.mkdir(parents=True, exist_ok=True)
            self.tmp.mkdir(parents=True, exist_ok=True)

    def path(self, digest: str) -> Path:
        """Where the blob ``digest`` lives (whether or not it exists)."""
        if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            raise NotFoundError(f"not a sha256 digest: {digest!r}")
        return self.blobs / digest[:2] / digest

    def put(self, data: bytes) -> str:
        """Stores ``data`` (idempotent) and returns its sha256."""
        digest = hashlib.sha256(data).hexdigest()
        target = self.path(digest)
        if target.exists():
            return digest
        target.parent.mkdir(exist_ok=True)
        fd, temporary = _mkstemp(self.tmp)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temporary, target)
            _fsync_dir(target.parent)
        except OSError as exc:
            Path(temporary).unlink(missing_ok=True)
            raise StoreError(f"cannot store a blob: {exc}") from exc
        return digest

    def get(self, digest: str) -> bytes:
        """The blob's bytes.

        Raises:
            NotFoundError: no such blob.
            StoreError: the stored bytes no longer hash to ``digest``.
        """
        try:
            data = self.path(digest).read_bytes()
        except FileNotFoundError as exc:
            raise NotFoundError(f"no blob {digest}") from exc
        if hashlib.sha256(data).hexdigest() != digest:
            raise StoreError(f"blob {digest} is corrupt (its content changed)")
        return data

    def digests(self) -> Iterator[str]:
        """Every stored blob's digest."""
        for path in self.blobs.glob("??/*"):
            yield path.name

    def delete(self, digest: str) -> None:
        """Removes a blob (used by recovery for unreferenced blobs)."""
        self.path(digest).unlink(missing_ok=True)

    def clear_tmp(self) -> int:
        """Removes temporary files left by interrupted writes; returns how many."""
        removed = 0
        for path in self.tmp.iterdir():
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)  # an upload's files
            else:
                path.unlink(missing_ok=True)
            removed += 1
        return removed


def _mkstemp(directory: Path) -> tuple[int, str]:
    import tempfile

    return tempfile.mkstemp(dir=directory, prefix="blob-")
