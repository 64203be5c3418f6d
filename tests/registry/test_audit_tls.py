"""TLS serving, the trust root export and the audit of a registry folder."""

from __future__ import annotations

import datetime
import ipaddress
import json
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from registry import RegistryClient, RegistryUnavailableError
from tests.bundles import read_files, write_bundle_files
from tests.conftest import SiteKeys
from tests.servers import RunningRegistry, start_registry
from tests.test_cli import gsco


def _self_signed(directory: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def test_tls_client_and_plain_client(tmp_path: Path, site_a: SiteKeys) -> None:
    cert, key = _self_signed(tmp_path)
    server = start_registry(
        tmp_path / "reg", "--tls-cert", str(cert), "--tls-key", str(key), ca=cert.read_bytes()
    )
    try:
        with server.client() as client:
            client.enroll("site-a", site_a.public.pem)
            assert [s.site_id for s in client.sites()] == ["site-a"]
        plain = RegistryClient(server.address, timeout_s=3)
        with plain, pytest.raises(RegistryUnavailableError):
            plain.sites()
        # The health check the registry image runs, over TLS as compose runs it.
        healthy = gsco("registry", "health", "--registry", server.address, "--tls-ca", str(cert))
        assert healthy.returncode == 0, healthy.stderr
        assert "SERVING" in healthy.stdout
        no_ca = gsco("registry", "health", "--registry", server.address, "--timeout", "2")
        assert no_ca.returncode == 1
        assert no_ca.stderr.startswith("error: registry ")
    finally:
        server.stop()


def test_trust_root_and_audit(running: RunningRegistry, tmp_path: Path, site_a: SiteKeys) -> None:
    with running.client() as client:
        client.publish_files(read_files(write_bundle_files(tmp_path / "b", site_a)), site_a.private)
    running.stop()
    exported = gsco("registry", "trust-root", "--root", str(running.root))
    assert exported.returncode == 0
    assert json.loads(exported.stdout)["signed"]["_type"] == "root"

    audit = gsco("audit", "registry", "--root", str(running.root), "--out", str(tmp_path / "a"))
    assert audit.returncode == 0, audit.stdout
    assert "0 failure(s)" in audit.stdout
    assert "| site-a | pneumonia-cxr |" in (tmp_path / "a" / "report.md").read_text()

    log = running.root / "events.jsonl"
    lines = log.read_text().splitlines(keepends=True)
    lines[0] = lines[0].replace("site-a", "site-z")
    log.write_text("".join(lines))
    tampered = gsco("audit", "registry", "--root", str(running.root), "--out", str(tmp_path / "b"))
    assert tampered.returncode == 1
    assert "FAIL event-log" in tampered.stdout
