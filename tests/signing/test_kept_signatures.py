"""Bundles signed by earlier releases must stay verifiable.

``tests/fixtures/signed-bundle-v1`` was signed once (model-signing 1.1.1, the
private key thrown away) and is never re-signed: if a change to hashing,
signing or verification stops it verifying, old published bundles would stop
verifying too.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from signing import FileChangedError, KeyRing, load_public_key, verify_bundle_dir

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "signed-bundle-v1"


def _ring() -> KeyRing:
    return KeyRing.from_pems({"fixture-site": load_public_key(FIXTURE / "fixture-site.pub").pem})


def test_v1_bundle_still_verifies() -> None:
    expected = json.loads((FIXTURE / "expected.json").read_text())
    manifest = verify_bundle_dir(FIXTURE / "bundle", _ring(), expected_site_id="fixture-site")
    assert manifest.key_id == expected["key_id"]
    assert manifest.digest == expected["digest"]
    assert dict(manifest.files) == expected["files"]


def test_v1_bundle_copy_detects_tampering(tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "bundle"
    shutil.copytree(FIXTURE / "bundle", copy)
    (copy / "weights.bin").write_bytes(b"\x00" * 1024)
    with pytest.raises(FileChangedError):
        verify_bundle_dir(copy, _ring())
