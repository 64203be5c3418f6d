"""The site's SuperNode key: what its Flower SuperNode authenticates to the consortium with.

Separate from the signing key (one key, one purpose): ``HOME/keys/supernode.key``
(ECDSA P-256, OpenSSH format, mode 0600, made once and never overwritten) and
``HOME/keys/supernode.pub``, the line the site hands to the consortium
(``gsco federation add-site SITE supernode.pub``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from signing import KeyExistsError, write_new_file
from site_agent._home import SiteHome

__all__ = ["NodeKey", "node_key"]


@dataclass(frozen=True)
class NodeKey:
    """The SuperNode key pair's files, and whether this call made them."""

    private: Path
    public: Path
    created: bool


def node_key(site: SiteHome) -> NodeKey:
    """The site's SuperNode key, made on first use (existing files are never replaced).

    Raises:
        KeyFileError: the key files cannot be written, or only one of them exists.
    """
    private = site.root / "keys" / "supernode.key"
    public = site.root / "keys" / "supernode.pub"
    if private.is_file() and public.is_file():
        return NodeKey(private, public, created=False)
    if private.exists() or public.exists():
        raise KeyExistsError(
            f"only one of {private.name} and {public.name} exists in {private.parent}; "
            f"move it away to make a new SuperNode key (and re-register it with the consortium)"
        )
    key = ec.generate_private_key(ec.SECP256R1())
    write_new_file(
        private,
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        ),
        0o600,
    )
    line = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    write_new_file(public, line + f" gsco-{site.config.site_id}\n".encode(), 0o644)
    return NodeKey(private, public, created=True)
