"""Bundle directories on disk: hashing, signing with model-signing, verifying.

The I/O around the pure :func:`signing.verify_manifest`.
"""

from __future__ import annotations

import hashlib
import stat
from collections.abc import Mapping
from pathlib import Path

import model_signing.hashing
import model_signing.signing
from cryptography.hazmat.primitives import serialization

from signing._envelope import MAX_SIGNATURE_BYTES, SIGNATURE_FILE, is_safe_relative_path
from signing._keys import KeyRing, PublicKey, load_private_key
from signing._verify import VerifiedManifest, verify_manifest
from signing.errors import BundleLayoutError, MalformedSignatureError, SignFailedError

__all__ = ["digest_bundle_dir", "digest_files", "sign_bundle", "verify_bundle_dir"]

#: Read files in blocks of this many bytes when hashing.
HASH_BLOCK_BYTES = 1024 * 1024


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(HASH_BLOCK_BYTES):
            digest.update(block)
    return digest.hexdigest()


def digest_files(files: Mapping[str, bytes]) -> dict[str, str]:
    """``{name: sha256}`` of a bundle held in memory, every file except ``model.sig``.

    The in-memory twin of :func:`digest_bundle_dir`: what :func:`verify_manifest`
    and :func:`bundle_digest` take.
    """
    return {
        name: hashlib.sha256(data).hexdigest()
        for name, data in files.items()
        if name != SIGNATURE_FILE
    }


def digest_bundle_dir(bundle_dir: Path) -> dict[str, str]:
    """Returns ``{relative posix path: sha256}`` of every file except ``model.sig``.

    Raises:
        BundleLayoutError: ``bundle_dir`` is not a directory, or holds a symlink,
            a special file or a name that is not a plain relative path.
    """
    if bundle_dir.is_symlink() or not bundle_dir.is_dir():
        raise BundleLayoutError(f"{bundle_dir} is not a bundle directory")
    files: dict[str, str] = {}
    pending = [bundle_dir]
    while pending:
        directory = pending.pop()
        for entry in sorted(directory.iterdir()):
            name = entry.relative_to(bundle_dir).as_posix()
            mode = entry.lstat().st_mode
            if stat.S_ISLNK(mode):
                raise BundleLayoutError(f"bundle holds a symlink: {name}")
            if not is_safe_relative_path(name):
                raise BundleLayoutError(f"bundle holds an unsafe file name: {name!r}")
            if stat.S_ISDIR(mode):
                pending.append(entry)
            elif not stat.S_ISREG(mode):
                raise BundleLayoutError(f"bundle holds a special file: {name}")
            elif name != SIGNATURE_FILE:
                files[name] = _sha256_file(entry)
    return files


def sign_bundle(
    bundle_dir: Path, private_key_path: Path, *, password: bytes | None = None
) -> VerifiedManifest:
    """Signs every file of ``bundle_dir`` into ``bundle_dir/model.sig`` with model-signing.

    The result is verified before returning, with the public half of the key,
    so a bundle that this returns for will verify anywhere the key is trusted.

    Raises:
        KeyFileError: the private key cannot be read or is not P-256.
        BundleLayoutError: see :func:`digest_bundle_dir`.
        SignFailedError: model-signing failed.
    """
    key = load_private_key(private_key_path, password)
    public = PublicKey.from_pem(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    if not digest_bundle_dir(bundle_dir):
        raise BundleLayoutError(f"{bundle_dir} holds no files to sign")
    hashing_config = model_signing.hashing.Config().use_file_serialization(  # type: ignore[no-untyped-call]
        hashing_algorithm="sha256", allow_symlinks=False
    )
    hashing_config.set_ignored_paths(paths=[SIGNATURE_FILE], ignore_git_paths=False)
    try:
        (
            model_signing.signing.Config()  # type: ignore[no-untyped-call]
            .use_elliptic_key_signer(
                private_key=private_key_path,
                password=password.decode("utf-8") if password else None,
            )
            .set_hashing_config(hashing_config)
            .sign(bundle_dir, bundle_dir / SIGNATURE_FILE)
        )
    except (ValueError, OSError) as exc:
        raise SignFailedError(f"signing {bundle_dir} failed: {exc}") from exc
    return verify_bundle_dir(bundle_dir, KeyRing.from_pems({"self": public.pem}))


def read_signature(bundle_dir: Path) -> bytes:
    """Reads ``model.sig`` of a bundle (bounded in size)."""
    if bundle_dir.is_symlink() or not bundle_dir.is_dir():
        raise BundleLayoutError(f"{bundle_dir} is not a bundle directory")
    path = bundle_dir / SIGNATURE_FILE
    if path.is_symlink() or not path.is_file():
        raise BundleLayoutError(f"{bundle_dir} has no {SIGNATURE_FILE}: it is not signed")
    if path.stat().st_size > MAX_SIGNATURE_BYTES:
        raise MalformedSignatureError(
            f"{SIGNATURE_FILE} is larger than {MAX_SIGNATURE_BYTES} bytes"
        )
    return path.read_bytes()


def verify_bundle_dir(
    bundle_dir: Path, keyring: KeyRing, *, expected_site_id: str | None = None
) -> VerifiedManifest:
    """Verifies a bundle directory against ``keyring`` (see :func:`signing.verify_manifest`)."""
    signature = read_signature(bundle_dir)
    return verify_manifest(
        signature, digest_bundle_dir(bundle_dir), keyring, expected_site_id=expected_site_id
    )
