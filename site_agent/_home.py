"""The site's home folder: its identity and signing key, created once by ``gsco site init``.

Layout::

    HOME/site.json        site id, key id, creation time (SiteConfig)
    HOME/keys/site.key    ECDSA P-256 private key, mode 0600 (never leaves the site)
    HOME/keys/site.pub    the public key the consortium enrols
    HOME/egress.jsonl     the egress ledger: every bundle that left the site
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from pydantic import AwareDatetime

from protocol import GscoError, Identifier, Sha256Hex, StrictModel, canonical_json
from signing import PublicKey, generate_site_key, load_public_key
from site_agent._ledger import EgressLedger
from site_agent.errors import SiteHomeError

__all__ = ["SiteConfig", "SiteHome", "default_site_home", "init_site", "open_site"]

CONFIG_FILE = "site.json"


class SiteConfig(StrictModel):
    """``site.json``."""

    schema_version: Literal[1] = 1
    site_id: Identifier
    key_id: Sha256Hex
    created_at: AwareDatetime


@dataclass(frozen=True)
class SiteHome:
    """An initialised site home folder."""

    root: Path
    config: SiteConfig

    @property
    def private_key(self) -> Path:
        """Path of the site's private key."""
        return self.root / "keys" / "site.key"

    @property
    def public_key_path(self) -> Path:
        """Path of the site's public key."""
        return self.root / "keys" / "site.pub"

    @property
    def ledger(self) -> EgressLedger:
        """The site's egress ledger."""
        return EgressLedger(self.root / "egress.jsonl")

    def public_key(self) -> PublicKey:
        """The site's public key."""
        return load_public_key(self.public_key_path)


def default_site_home() -> Path:
    """``$GSCO_SITE_HOME``, else ``~/.gsco/site``."""
    return Path(os.environ.get("GSCO_SITE_HOME", Path.home() / ".gsco" / "site"))


def init_site(root: Path, site_id: str) -> SiteHome:
    """Creates a site home with a new key pair.

    Raises:
        SiteHomeError: the folder is already a site home, or ``site_id`` is invalid.
        signing.KeyFileError: the key files cannot be written.
    """
    if (root / CONFIG_FILE).exists():
        raise SiteHomeError(f"{root} is already a site home; refusing to overwrite it")
    try:
        SiteConfig.model_validate(
            {"site_id": site_id, "key_id": "0" * 64, "created_at": datetime.now(UTC)}
        )
    except ValueError as exc:
        raise SiteHomeError(
            f"invalid site id {site_id!r}: use lower-case letters, digits, '-', '.', '_'"
        ) from exc
    keys = root / "keys"
    keys.mkdir(parents=True, exist_ok=True)
    os.chmod(keys, 0o700)
    public = generate_site_key(keys / "site.key", keys / "site.pub")
    config = SiteConfig(site_id=site_id, key_id=public.key_id, created_at=datetime.now(UTC))
    (root / CONFIG_FILE).write_bytes(canonical_json(config) + b"\n")
    return SiteHome(root, config)


def open_site(root: Path) -> SiteHome:
    """Opens an initialised site home.

    Raises:
        SiteHomeError: ``root`` is not a site home (run ``gsco site init``) or is malformed.
    """
    path = root / CONFIG_FILE
    if not path.is_file():
        raise SiteHomeError(f"{root} is not a site home: run 'gsco site init' first")
    try:
        config = SiteConfig.parse(path.read_bytes())
    except GscoError as exc:
        raise SiteHomeError(f"{path}: {exc}") from exc
    return SiteHome(root, config)
