"""Signing and verification of specialist bundles with OpenSSF model-signing.

A bundle is a directory; ``model.sig`` inside it is a sigstore bundle whose
DSSE envelope carries an in-toto statement listing every other file with its
sha256, signed with the site's ECDSA P-256 key. Signing goes through
model-signing; verification is :func:`verify_manifest`, a pure function (bytes
and digests in, a :class:`VerifiedManifest` out) that the registry, the hub and
the auditor all call, and that tells exactly what is wrong when it fails.
"""

from signing._bundle import (
    digest_bundle_dir,
    digest_files,
    read_signature,
    sign_bundle,
    verify_bundle_dir,
)
from signing._envelope import SIGNATURE_FILE, is_safe_relative_path
from signing._keys import (
    KeyRing,
    PublicKey,
    TrustedKey,
    generate_site_key,
    load_private_key,
    load_public_key,
    write_new_file,
)
from signing._verify import VerifiedManifest, bundle_digest, signature_key_id, verify_manifest
from signing.errors import (
    BadSignatureError,
    BundleError,
    BundleLayoutError,
    FileAddedError,
    FileChangedError,
    FileMissingError,
    KeyExistsError,
    KeyFileError,
    MalformedSignatureError,
    ManifestMismatchError,
    SignFailedError,
    SigningError,
    SiteMismatchError,
    UnknownKeyError,
    UnsupportedManifestError,
    VerificationError,
)

__all__ = [
    "SIGNATURE_FILE",
    "BadSignatureError",
    "BundleError",
    "BundleLayoutError",
    "FileAddedError",
    "FileChangedError",
    "FileMissingError",
    "KeyExistsError",
    "KeyFileError",
    "KeyRing",
    "MalformedSignatureError",
    "ManifestMismatchError",
    "PublicKey",
    "SignFailedError",
    "SigningError",
    "SiteMismatchError",
    "TrustedKey",
    "UnknownKeyError",
    "UnsupportedManifestError",
    "VerificationError",
    "VerifiedManifest",
    "bundle_digest",
    "digest_bundle_dir",
    "digest_files",
    "generate_site_key",
    "is_safe_relative_path",
    "load_private_key",
    "load_public_key",
    "read_signature",
    "sign_bundle",
    "signature_key_id",
    "verify_bundle_dir",
    "verify_manifest",
    "write_new_file",
]
