"""Signing a bundle with model-signing, and every way verification must fail."""

from __future__ import annotations

import base64
import json
import os
import shutil
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from signing import (
    SIGNATURE_FILE,
    BadSignatureError,
    BundleLayoutError,
    FileAddedError,
    FileChangedError,
    FileMissingError,
    KeyRing,
    MalformedSignatureError,
    SiteMismatchError,
    UnknownKeyError,
    UnsupportedManifestError,
    VerificationError,
    bundle_digest,
    digest_bundle_dir,
    load_private_key,
    read_signature,
    sign_bundle,
    verify_bundle_dir,
    verify_manifest,
)
from signing._envelope import pae
from tests.conftest import SiteKeys, card_dict


@pytest.fixture
def bundle(tmp_path: Path, site_a: SiteKeys) -> Path:
    """A signed bundle of site-a: three files, one in a sub-folder."""
    directory = tmp_path / "bundle"
    directory.mkdir()
    (directory / "model.onnx").write_bytes(os.urandom(4096))
    (directory / "card.json").write_text(json.dumps(card_dict(site_id="site-a")))
    (directory / "extra").mkdir()
    (directory / "extra" / "index.npz").write_bytes(b"\x93NUMPY" + bytes(200))
    sign_bundle(directory, site_a.private)
    return directory


def test_sign_then_verify(bundle: Path, ring_a: KeyRing, site_a: SiteKeys) -> None:
    manifest = verify_bundle_dir(bundle, ring_a, expected_site_id="site-a")
    assert manifest.site_id == "site-a"
    assert manifest.key_id == site_a.public.key_id
    assert set(manifest.files) == {"model.onnx", "card.json", "extra/index.npz"}
    assert manifest.files == digest_bundle_dir(bundle)
    assert manifest.digest == bundle_digest(manifest.files)


def test_digest_names_content_not_signature(bundle: Path, site_a: SiteKeys) -> None:
    first = verify_bundle_dir(bundle, KeyRing([site_a.trusted()])).digest
    resigned = sign_bundle(bundle, site_a.private)  # ECDSA: a different signature
    assert resigned.digest == first


def test_model_signing_itself_accepts_our_bundles(bundle: Path, site_a: SiteKeys) -> None:
    import model_signing.verifying

    model_signing.verifying.Config().use_elliptic_key_verifier(
        public_key=site_a.public_path
    ).verify(bundle, bundle / SIGNATURE_FILE)


def test_flipped_byte_is_a_changed_file(bundle: Path, ring_a: KeyRing) -> None:
    path = bundle / "model.onnx"
    data = bytearray(path.read_bytes())
    data[1234] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(FileChangedError, match="changed: model.onnx") as caught:
        verify_bundle_dir(bundle, ring_a)
    assert caught.value.changed == ["model.onnx"]
    assert caught.value.missing == caught.value.added == []


def test_added_file(bundle: Path, ring_a: KeyRing) -> None:
    (bundle / "extra" / "payload.py").write_text("import os")
    with pytest.raises(FileAddedError, match="added: extra/payload.py"):
        verify_bundle_dir(bundle, ring_a)


def test_added_git_file_is_not_ignored(bundle: Path, ring_a: KeyRing) -> None:
    (bundle / ".gitattributes").write_text("* filter=evil")
    with pytest.raises(FileAddedError, match=r"\.gitattributes"):
        verify_bundle_dir(bundle, ring_a)


def test_deleted_file(bundle: Path, ring_a: KeyRing) -> None:
    (bundle / "card.json").unlink()
    with pytest.raises(FileMissingError, match="missing: card.json"):
        verify_bundle_dir(bundle, ring_a)


def test_another_sites_key_is_unknown(bundle: Path, site_b: SiteKeys) -> None:
    with pytest.raises(UnknownKeyError, match="unknown or revoked key"):
        verify_bundle_dir(bundle, KeyRing([site_b.trusted()]))


def test_bundle_resigned_by_another_site_is_unknown_to_a_ring_of_site_a(
    bundle: Path, ring_a: KeyRing, site_b: SiteKeys
) -> None:
    sign_bundle(bundle, site_b.private)
    with pytest.raises(UnknownKeyError):
        verify_bundle_dir(bundle, ring_a)


def test_signed_by_a_but_claimed_for_b(bundle: Path, site_a: SiteKeys, site_b: SiteKeys) -> None:
    ring = KeyRing([site_a.trusted(), site_b.trusted()])
    with pytest.raises(SiteMismatchError, match="signed by site 'site-a' but claims site 'site-b'"):
        verify_bundle_dir(bundle, ring, expected_site_id="site-b")


def test_key_hint_swapped_to_another_enrolled_key(
    bundle: Path, site_a: SiteKeys, site_b: SiteKeys
) -> None:
    signature = json.loads(read_signature(bundle))
    signature["verificationMaterial"]["publicKey"]["hint"] = site_b.public.key_id
    (bundle / SIGNATURE_FILE).write_text(json.dumps(signature))
    ring = KeyRing([site_a.trusted(), site_b.trusted()])
    with pytest.raises(BadSignatureError, match="site-b"):
        verify_bundle_dir(bundle, ring)


def test_payload_swapped_under_a_valid_signature(
    bundle: Path, tmp_path: Path, ring_a: KeyRing, site_a: SiteKeys
) -> None:
    other = tmp_path / "other"
    shutil.copytree(bundle, other)
    (other / "model.onnx").write_bytes(b"a different model")
    sign_bundle(other, site_a.private)
    mine = json.loads(read_signature(bundle))
    mine["dsseEnvelope"]["payload"] = json.loads(read_signature(other))["dsseEnvelope"]["payload"]
    (bundle / SIGNATURE_FILE).write_text(json.dumps(mine))
    with pytest.raises(BadSignatureError):
        verify_bundle_dir(bundle, ring_a)


@pytest.mark.parametrize(
    "content",
    [b"", b"not json", b"{}", b'{"mediaType": "application/vnd.dev.sigstore.bundle.v0.3+json"}'],
)
def test_malformed_signature_file(bundle: Path, ring_a: KeyRing, content: bytes) -> None:
    (bundle / SIGNATURE_FILE).write_bytes(content)
    with pytest.raises(MalformedSignatureError):
        verify_bundle_dir(bundle, ring_a)


def test_oversized_signature_file(bundle: Path, ring_a: KeyRing) -> None:
    (bundle / SIGNATURE_FILE).write_bytes(b" " * (2 * 1024 * 1024))
    with pytest.raises(MalformedSignatureError, match="larger than"):
        verify_bundle_dir(bundle, ring_a)


def test_unsigned_bundle(bundle: Path, ring_a: KeyRing) -> None:
    (bundle / SIGNATURE_FILE).unlink()
    with pytest.raises(BundleLayoutError, match="not signed"):
        verify_bundle_dir(bundle, ring_a)


def test_symlink_in_bundle_is_refused(bundle: Path, ring_a: KeyRing, site_a: SiteKeys) -> None:
    (bundle / "link").symlink_to("/etc/passwd")
    with pytest.raises(BundleLayoutError, match="symlink"):
        verify_bundle_dir(bundle, ring_a)
    with pytest.raises(BundleLayoutError, match="symlink"):
        sign_bundle(bundle, site_a.private)


def test_not_a_directory(tmp_path: Path, ring_a: KeyRing) -> None:
    with pytest.raises(BundleLayoutError, match="not a bundle directory"):
        verify_bundle_dir(tmp_path / "nope", ring_a)


def _resign_statement(bundle: Path, site: SiteKeys, mutate: object) -> None:
    """Re-signs ``model.sig`` over an edited statement with the site's real key."""
    signature = json.loads(read_signature(bundle))
    statement = json.loads(base64.b64decode(signature["dsseEnvelope"]["payload"]))
    mutate(statement)  # type: ignore[operator]
    payload = json.dumps(statement).encode()
    key = load_private_key(site.private)
    sig = key.sign(pae("application/vnd.in-toto+json", payload), ec.ECDSA(hashes.SHA256()))
    signature["dsseEnvelope"]["payload"] = base64.b64encode(payload).decode()
    signature["dsseEnvelope"]["signatures"][0]["sig"] = base64.b64encode(sig).decode()
    (bundle / SIGNATURE_FILE).write_text(json.dumps(signature))


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda s: s["predicate"]["serialization"].update(method="shards"), "not accepted"),
        (lambda s: s["predicate"]["serialization"].update(allow_symlinks=True), "not accepted"),
        (
            lambda s: s["predicate"]["serialization"].update(ignore_paths=["model.onnx"]),
            "ignores other paths",
        ),
        (lambda s: s["predicate"]["resources"][0].update(name="../escape"), "unsafe file name"),
        (lambda s: s["predicate"]["resources"][0].update(name="/etc/passwd"), "unsafe file name"),
        (lambda s: s["predicate"].update(resources=[]), "names no files"),
    ],
)
def test_validly_signed_but_unacceptable_statement(
    bundle: Path, ring_a: KeyRing, site_a: SiteKeys, mutate: object, message: str
) -> None:
    _resign_statement(bundle, site_a, mutate)
    with pytest.raises(UnsupportedManifestError, match=message):
        verify_bundle_dir(bundle, ring_a)


def test_pure_verification_needs_no_files(bundle: Path, ring_a: KeyRing) -> None:
    signature = read_signature(bundle)
    files = digest_bundle_dir(bundle)
    shutil.rmtree(bundle)
    assert verify_manifest(signature, files, ring_a).files == files
    with pytest.raises(VerificationError):
        verify_manifest(signature, {**files, "card.json": "0" * 64}, ring_a)
