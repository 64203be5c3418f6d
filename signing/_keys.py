"""Site keys: ECDSA P-256 key pairs, their ids, and the key ring verifiers trust."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from signing.errors import KeyExistsError, KeyFileError

__all__ = ["KeyRing", "PublicKey", "TrustedKey", "generate_site_key", "load_public_key"]

#: Key files larger than this are not keys.
MAX_KEY_FILE_BYTES = 16 * 1024


@dataclass(frozen=True)
class PublicKey:
    """An ECDSA P-256 public key in canonical PEM (SubjectPublicKeyInfo) form."""

    pem: bytes

    @classmethod
    def from_pem(cls, data: bytes) -> PublicKey:
        """Parses a PEM public key; only P-256 is accepted.

        Raises:
            KeyFileError: not a PEM public key, or not P-256.
        """
        try:
            key = serialization.load_pem_public_key(data)
        except (ValueError, TypeError) as exc:
            raise KeyFileError(f"not a PEM public key: {exc}") from exc
        if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp256r1":
            raise KeyFileError("site keys must be ECDSA P-256 (secp256r1)")
        return cls(_public_pem(key))

    @property
    def key_id(self) -> str:
        """The sha256 of the canonical PEM: model-signing's key hint."""
        return hashlib.sha256(self.pem).hexdigest()

    def verifies(self, signature: bytes, data: bytes) -> bool:
        """Whether ``signature`` (DER ECDSA-SHA256) is valid over ``data``."""
        key = serialization.load_pem_public_key(self.pem)
        assert isinstance(key, ec.EllipticCurvePublicKey)  # checked in from_pem
        try:
            key.verify(signature, data, ec.ECDSA(hashes.SHA256()))
        except InvalidSignature:
            return False
        return True


def _public_pem(key: ec.EllipticCurvePublicKey) -> bytes:
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _read_key_file(path: Path) -> bytes:
    try:
        if path.stat().st_size > MAX_KEY_FILE_BYTES:
            raise KeyFileError(f"{path}: too large to be a key file")
        return path.read_bytes()
    except OSError as exc:
        raise KeyFileError(f"cannot read key file {path}: {exc.strerror or exc}") from exc


def load_public_key(path: Path) -> PublicKey:
    """Reads a PEM public key file (P-256 only)."""
    return PublicKey.from_pem(_read_key_file(path))


def load_private_key(path: Path, password: bytes | None = None) -> ec.EllipticCurvePrivateKey:
    """Reads a PEM private key file (P-256 only)."""
    try:
        key = serialization.load_pem_private_key(_read_key_file(path), password)
    except (ValueError, TypeError) as exc:
        raise KeyFileError(f"{path}: not a readable PEM private key ({exc})") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
        raise KeyFileError(f"{path}: site keys must be ECDSA P-256 (secp256r1)")
    return key


def write_new_file(path: Path, data: bytes, mode: int) -> None:
    """Writes ``data`` to a new file ``path`` with ``mode`` (a key: never overwritten), synced.

    Raises:
        KeyExistsError: ``path`` exists.
        KeyFileError: it cannot be created.
    """
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except FileExistsError as exc:
        raise KeyExistsError(f"{path} exists; refusing to overwrite a key") from exc
    except OSError as exc:
        raise KeyFileError(f"cannot create {path}: {exc.strerror or exc}") from exc
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.chmod(path, mode)  # the umask may have narrowed or (for 0600) nothing changed


def generate_site_key(
    private_path: Path, public_path: Path, *, password: bytes | None = None
) -> PublicKey:
    """Creates a new ECDSA P-256 key pair.

    The private key is written with mode 0600 (encrypted when ``password`` is
    given); neither file may exist beforehand.

    Raises:
        KeyExistsError: either file exists already (nothing is written).
        KeyFileError: a file cannot be created.
    """
    for path in (private_path, public_path):
        if path.exists() or path.is_symlink():
            raise KeyExistsError(f"{path} exists; refusing to overwrite a key")
    key = ec.generate_private_key(ec.SECP256R1())
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(password)
        if password
        else serialization.NoEncryption()
    )
    private_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    )
    public = PublicKey(_public_pem(key.public_key()))
    write_new_file(private_path, private_pem, 0o600)
    try:
        write_new_file(public_path, public.pem, 0o644)
    except KeyFileError:
        private_path.unlink()
        raise
    return public


@dataclass(frozen=True)
class TrustedKey:
    """A public key together with the site it was enrolled for."""

    site_id: str
    key: PublicKey


class KeyRing(Mapping[str, TrustedKey]):
    """The keys a verifier trusts, by key id. Immutable."""

    def __init__(self, keys: Iterable[TrustedKey] = ()) -> None:
        self._keys = {trusted.key.key_id: trusted for trusted in keys}

    @classmethod
    def from_pems(cls, pems_by_site: Mapping[str, bytes]) -> KeyRing:
        """A ring from PEM public keys given by site id."""
        return cls(TrustedKey(site, PublicKey.from_pem(pem)) for site, pem in pems_by_site.items())

    def __getitem__(self, key_id: str) -> TrustedKey:
        return self._keys[key_id]

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)
