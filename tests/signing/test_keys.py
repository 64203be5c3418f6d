"""Site keys: generation, permissions, refusal to overwrite, curve checks."""

from __future__ import annotations

import hashlib
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from signing import (
    KeyExistsError,
    KeyFileError,
    KeyRing,
    PublicKey,
    generate_site_key,
    load_private_key,
    load_public_key,
)


def test_private_key_is_owner_only(tmp_path: Path) -> None:
    public = generate_site_key(tmp_path / "k", tmp_path / "k.pub")
    assert stat.S_IMODE((tmp_path / "k").stat().st_mode) == 0o600
    assert load_public_key(tmp_path / "k.pub") == public
    assert load_private_key(tmp_path / "k").curve.name == "secp256r1"


def test_key_id_is_model_signings_hint(tmp_path: Path) -> None:
    public = generate_site_key(tmp_path / "k", tmp_path / "k.pub")
    assert public.key_id == hashlib.sha256((tmp_path / "k.pub").read_bytes()).hexdigest()


@pytest.mark.parametrize("existing", ["k", "k.pub"])
def test_refuses_to_overwrite(tmp_path: Path, existing: str) -> None:
    (tmp_path / existing).write_text("precious")
    with pytest.raises(KeyExistsError, match="refusing to overwrite"):
        generate_site_key(tmp_path / "k", tmp_path / "k.pub")
    assert (tmp_path / existing).read_text() == "precious"
    other = "k.pub" if existing == "k" else "k"
    assert not (tmp_path / other).exists()


def test_password_protected_private_key(tmp_path: Path) -> None:
    generate_site_key(tmp_path / "k", tmp_path / "k.pub", password=b"s3cret")
    with pytest.raises(KeyFileError):
        load_private_key(tmp_path / "k")
    assert load_private_key(tmp_path / "k", b"s3cret").curve.name == "secp256r1"


def test_other_curves_and_algorithms_are_refused() -> None:
    p384 = ec.generate_private_key(ec.SECP384R1()).public_key()
    edwards = ed25519.Ed25519PrivateKey.generate().public_key()
    for key in (p384, edwards):
        pem = key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        with pytest.raises(KeyFileError, match="P-256"):
            PublicKey.from_pem(pem)


def test_garbage_key_files(tmp_path: Path) -> None:
    (tmp_path / "bad.pub").write_text("-----BEGIN PUBLIC KEY-----\nnope\n")
    with pytest.raises(KeyFileError, match="not a PEM public key"):
        load_public_key(tmp_path / "bad.pub")
    with pytest.raises(KeyFileError, match="cannot read"):
        load_public_key(tmp_path / "missing.pub")


def test_key_ring_is_indexed_by_key_id(tmp_path: Path) -> None:
    public = generate_site_key(tmp_path / "k", tmp_path / "k.pub")
    ring = KeyRing.from_pems({"site-a": public.pem})
    assert list(ring) == [public.key_id]
    assert ring[public.key_id].site_id == "site-a"
