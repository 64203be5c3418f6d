"""The consortium's folder: its CA, the SuperLink's certificate, state and configuration.

Made once by ``gsco federation init``; every other ``gsco federation``
command opens it. Layout::

    ROOT/consortium.json      name, SuperLink address, hosts (ConsortiumConfig)
    ROOT/tls/ca.pem           the CA every SuperNode is given (--root-certificates)
    ROOT/tls/ca.key           the CA's key, mode 0600 (only with a CA made here)
    ROOT/tls/superlink.pem    the SuperLink's certificate (hosts as subject alt names)
    ROOT/tls/superlink.key    its key, mode 0600
    ROOT/state/superlink.db   the SuperLink's database: registered SuperNodes, runs
    ROOT/flwr/config.toml     the ``flwr`` CLI's connection to this SuperLink (FLWR_HOME)

With ``--certificate/--key/--ca`` the operator's own certificate is checked
and copied instead (no CA key is then held here).
"""

from __future__ import annotations

import ipaddress
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Literal

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from pydantic import AwareDatetime, Field

from federation.errors import CertificateError, ConsortiumError
from protocol import GscoError, Identifier, StrictModel, canonical_json, flwr_connection_toml
from signing import KeyFileError, write_new_file

__all__ = [
    "DEFAULT_PORT",
    "Consortium",
    "ConsortiumConfig",
    "OwnCertificate",
    "init_consortium",
    "open_consortium",
]

CONFIG_FILE = "consortium.json"
#: The SuperLink's one HTTPS port (Fleet, Control and Runtime APIs), Flower's Fleet default.
DEFAULT_PORT = 9092
#: How long a certificate made here is valid (the CA for ten years).
CERT_DAYS = 825
CA_DAYS = 3650


class ConsortiumConfig(StrictModel):
    """``consortium.json``."""

    schema_version: Literal[1] = 1
    name: Identifier
    hosts: tuple[str, ...] = Field(min_length=1)  # names the SuperLink is reached by
    port: int = Field(ge=1, le=65535)
    own_certificate: bool  # the operator's certificate, not one made here
    created_at: AwareDatetime


@dataclass(frozen=True)
class OwnCertificate:
    """An operator's own certificate for the SuperLink, with its key and its CA."""

    certificate: Path
    key: Path
    ca: Path


@dataclass(frozen=True)
class Consortium:
    """An initialised consortium folder."""

    root: Path
    config: ConsortiumConfig

    @property
    def address(self) -> str:
        """``host:port`` at which sites reach the SuperLink (the first host)."""
        return f"{self.config.hosts[0]}:{self.config.port}"

    @property
    def ca_certificate(self) -> Path:
        """The CA certificate sites verify the SuperLink with."""
        return self.root / "tls" / "ca.pem"

    @property
    def certificate(self) -> Path:
        """The SuperLink's certificate."""
        return self.root / "tls" / "superlink.pem"

    @property
    def key(self) -> Path:
        """The SuperLink's private key."""
        return self.root / "tls" / "superlink.key"

    @property
    def database(self) -> Path:
        """The SuperLink's persistent state."""
        return self.root / "state" / "superlink.db"

    @property
    def flwr_home(self) -> Path:
        """``FLWR_HOME`` of the ``flwr`` CLI calls made for this consortium."""
        return self.root / "flwr"

    def check_certificates(self, now: datetime | None = None) -> None:
        """Checks that the SuperLink's certificate matches its key, its CA and the hosts.

        Raises:
            CertificateError: unreadable, mismatched, not yet or no longer valid.
        """
        _check_pair(self.certificate, self.key, self.ca_certificate, self.config.hosts, now)


def init_consortium(
    root: Path,
    name: str,
    *,
    hosts: Sequence[str] = ("127.0.0.1", "localhost"),
    port: int = DEFAULT_PORT,
    own: OwnCertificate | None = None,
) -> Consortium:
    """Makes the consortium folder ``root``: a CA and the SuperLink's certificate, or ``own``.

    Nothing is overwritten: a folder that already holds a consortium is refused.

    Raises:
        ConsortiumError: ``root`` holds a consortium already, or a value is invalid.
        CertificateError: ``own`` does not check (see :meth:`Consortium.check_certificates`).
    """
    if (root / CONFIG_FILE).exists():
        raise ConsortiumError(f"{root} is a consortium folder already; nothing was changed")
    try:
        config = ConsortiumConfig(
            name=name,
            hosts=tuple(hosts),
            port=port,
            own_certificate=own is not None,
            created_at=datetime.now(UTC),
        )
    except ValueError as exc:
        raise ConsortiumError(f"invalid consortium settings: {exc}") from exc
    if own is not None:  # checked before anything is written
        _check_pair(own.certificate, own.key, own.ca, config.hosts, None)
    tls = root / "tls"
    tls.mkdir(parents=True, exist_ok=True)
    (root / "state").mkdir(exist_ok=True)
    consortium = Consortium(root, config)
    if own is not None:
        shutil.copyfile(own.ca, consortium.ca_certificate)
        shutil.copyfile(own.certificate, consortium.certificate)
        _write_new(consortium.key, own.key.read_bytes(), 0o600)
    else:
        _make_certificates(consortium, name)
    _write_flwr_config(consortium)
    _write_new(root / CONFIG_FILE, canonical_json(config.model_dump(mode="json")), 0o644)
    return consortium


def open_consortium(root: Path) -> Consortium:
    """Opens the consortium folder ``root``.

    Raises:
        ConsortiumError: no consortium there, or its configuration is invalid.
    """
    path = root / CONFIG_FILE
    if not path.is_file():
        raise ConsortiumError(
            f"{root} is not a consortium folder: run 'gsco federation init --root {root}' first"
        )
    try:
        config = ConsortiumConfig.parse(path.read_bytes())
    except GscoError as exc:
        raise ConsortiumError(f"{path}: {exc}") from exc
    consortium = Consortium(root, config)
    for needed in (consortium.ca_certificate, consortium.certificate, consortium.key):
        if not needed.is_file():
            raise ConsortiumError(f"{root}: {needed.name} is missing")
    return consortium


def _make_certificates(consortium: Consortium, name: str) -> None:
    now = datetime.now(UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{name} consortium CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = []
    for host in consortium.config.hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    certificate = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{name} SuperLink")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=CERT_DAYS))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    pkcs8, plain = serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    _write_new(consortium.root / "tls" / "ca.key", ca_key.private_bytes(pem, pkcs8, plain), 0o600)
    _write_new(consortium.ca_certificate, ca.public_bytes(pem), 0o644)
    _write_new(consortium.key, key.private_bytes(pem, pkcs8, plain), 0o600)
    _write_new(consortium.certificate, certificate.public_bytes(pem), 0o644)


def _write_flwr_config(consortium: Consortium) -> None:
    """The ``flwr`` CLI's connection: the SuperLink on loopback, verified with the CA."""
    consortium.flwr_home.mkdir(exist_ok=True)
    text = (
        "# Written by gsco federation init: how this consortium's flwr CLI calls reach\n"
        "# its SuperLink (the operator runs them on the SuperLink's machine).\n"
    ) + flwr_connection_toml(
        consortium.config.name,
        f"127.0.0.1:{consortium.config.port}",
        consortium.ca_certificate.resolve(),
    )
    (consortium.flwr_home / "config.toml").write_text(text)


def _load_certificate(path: Path) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise CertificateError(f"{path}: not a readable PEM certificate ({exc})") from exc


def _check_pair(
    certificate_path: Path,
    key_path: Path,
    ca_path: Path,
    hosts: Sequence[str],
    now: datetime | None,
) -> None:
    certificate = _load_certificate(certificate_path)
    ca = _load_certificate(ca_path)
    try:
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise CertificateError(f"{key_path}: not a readable unencrypted PEM key ({exc})") from exc
    public = serialization.PublicFormat.SubjectPublicKeyInfo
    der = serialization.Encoding.DER
    if key.public_key().public_bytes(der, public) != certificate.public_key().public_bytes(
        der, public
    ):
        raise CertificateError(f"{key_path} is not the key of {certificate_path}")
    try:
        certificate.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature) as exc:
        raise CertificateError(f"{certificate_path} was not issued by {ca_path} ({exc})") from exc
    moment = now or datetime.now(UTC)
    if not certificate.not_valid_before_utc <= moment <= certificate.not_valid_after_utc:
        raise CertificateError(
            f"{certificate_path} is valid from {certificate.not_valid_before_utc:%Y-%m-%d} "
            f"to {certificate.not_valid_after_utc:%Y-%m-%d}, not now"
        )
    try:
        names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        raise CertificateError(f"{certificate_path} names no hosts (no subjectAltName)") from None
    covered = {str(ip) for ip in names.get_values_for_type(x509.IPAddress)}
    covered |= set(names.get_values_for_type(x509.DNSName))
    missing = [host for host in hosts if host not in covered]
    if missing:
        raise CertificateError(
            f"{certificate_path} does not name {', '.join(missing)} "
            f"(it names {', '.join(sorted(covered)) or 'nothing'})"
        )


def _write_new(path: Path, data: bytes, mode: int) -> None:
    try:
        write_new_file(path, data, mode)
    except KeyFileError as exc:
        raise ConsortiumError(str(exc)) from exc
