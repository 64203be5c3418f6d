"""Consortium membership: a registry site, bound to the one SuperNode key it may connect with.

The registry's enrolment is the membership; the SuperLink's registered keys
follow it. A site is added only while it is enrolled and not revoked in the
registry, and :func:`reconcile` unregisters the node key of every member whose
registry identity is gone or revoked, so the two cannot silently disagree.
``ROOT/members.json`` records which node (id, key digest) belongs to which site.
Changes to it hold an exclusive lock (``ROOT/members.lock``) from reading the
list to writing it, so that two operators adding sites at once both land.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from pydantic import AwareDatetime, Field

from federation._consortium import Consortium
from federation._superlink import register_node, unregister_node
from federation.errors import MembershipError
from protocol import GscoError, Identifier, Sha256Hex, SiteKey, StrictModel, canonical_json

__all__ = ["Member", "add_site", "members", "node_key_digest", "reconcile", "remove_site"]

MEMBERS_FILE = "members.json"
MEMBERS_LOCK = "members.lock"
#: An OpenSSH public key line is well under this.
MAX_NODE_KEY_BYTES = 16 * 1024
#: The curves Flower accepts for SuperNode keys.
_NIST_CURVES = ("secp256r1", "secp384r1", "secp521r1")


class Member(StrictModel):
    """One site of the consortium and its SuperNode."""

    site_id: Identifier
    node_id: int = Field(ge=0)
    node_key_sha256: Sha256Hex  # of the OpenSSH public key line
    added_at: AwareDatetime


class _Members(StrictModel):
    schema_version: Literal[1] = 1
    members: tuple[Member, ...] = ()


def members(consortium: Consortium) -> list[Member]:
    """The consortium's members, in the order they were added.

    Raises:
        MembershipError: ``members.json`` is unreadable or invalid.
    """
    path = consortium.root / MEMBERS_FILE
    if not path.is_file():
        return []
    try:
        return list(_Members.parse(path.read_bytes()).members)
    except (OSError, GscoError) as exc:
        raise MembershipError(f"{path}: {exc}") from exc


@contextlib.contextmanager
def _changing(consortium: Consortium) -> Iterator[None]:
    """Holds the membership's lock: one change at a time, across processes."""
    with (consortium.root / MEMBERS_LOCK).open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _save(consortium: Consortium, entries: Iterable[Member]) -> None:
    """Replaces ``members.json`` atomically (under :func:`_changing`)."""
    path = consortium.root / MEMBERS_FILE
    partial = path.with_suffix(".json.partial")
    with partial.open("wb") as out:
        out.write(canonical_json(_Members(members=tuple(entries)).model_dump(mode="json")))
        out.flush()
        os.fsync(out.fileno())
    os.replace(partial, path)


def node_key_digest(node_key: Path) -> str:
    """Checks an OpenSSH SuperNode public key file; returns the sha256 of its key line.

    Raises:
        MembershipError: unreadable, too large, not OpenSSH, not ECDSA on a NIST curve.
    """
    try:
        if node_key.stat().st_size > MAX_NODE_KEY_BYTES:
            raise MembershipError(f"{node_key}: too large for a public key")
        data = node_key.read_bytes()
    except OSError as exc:
        raise MembershipError(f"cannot read {node_key}: {exc.strerror or exc}") from exc
    try:
        key = serialization.load_ssh_public_key(data)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise MembershipError(
            f"{node_key}: not an OpenSSH public key ({exc}); hand over the file that "
            f"'gsco site node-key' printed"
        ) from exc
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name not in _NIST_CURVES:
        raise MembershipError(f"{node_key}: SuperNode keys must be ECDSA on a NIST curve (P-256)")
    line = key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return hashlib.sha256(line).hexdigest()


def _enrolled(site_id: str, sites: Iterable[SiteKey]) -> SiteKey | None:
    current = [s for s in sites if s.site_id == site_id]
    live = [s for s in current if not s.revoked]
    return live[-1] if live else None


def add_site(
    consortium: Consortium, site_id: str, node_key: Path, sites: Iterable[SiteKey]
) -> Member:
    """Registers ``site_id``'s SuperNode key with the SuperLink and records the binding.

    ``sites`` is the registry's list of enrolled keys (revoked ones included).

    Raises:
        MembershipError: the site is not enrolled or is revoked in the registry, is a
            member already, or the key is invalid or already another member's.
        SuperLinkError: the SuperLink refused the key or could not be reached.
    """
    digest = node_key_digest(node_key)
    if _enrolled(site_id, sites) is None:
        raise MembershipError(
            f"site {site_id!r} is not enrolled in the registry (or is revoked): enrol it "
            f"with 'gsco registry enroll' first; the registry is the consortium's membership"
        )
    with _changing(consortium):
        current = members(consortium)
        for member in current:
            if member.site_id == site_id:
                raise MembershipError(
                    f"site {site_id!r} is a member already (node {member.node_id}); "
                    f"'gsco federation remove-site {site_id}' first to change its key"
                )
            if member.node_key_sha256 == digest:
                raise MembershipError(f"{node_key} is the node key of site {member.site_id!r}")
        node_id = register_node(consortium, node_key)
        member = Member(
            site_id=site_id, node_id=node_id, node_key_sha256=digest, added_at=datetime.now(UTC)
        )
        _save(consortium, [*current, member])
        return member


def remove_site(consortium: Consortium, site_id: str) -> Member:
    """Unregisters ``site_id``'s SuperNode from the SuperLink and drops the binding.

    Raises:
        MembershipError: the site is not a member.
        SuperLinkError: the SuperLink refused or could not be reached (nothing dropped).
    """
    with _changing(consortium):
        current = members(consortium)
        found = [m for m in current if m.site_id == site_id]
        if not found:
            raise MembershipError(f"site {site_id!r} is not a member of {consortium.config.name}")
        unregister_node(consortium, found[0].node_id)
        _save(consortium, [m for m in current if m.site_id != site_id])
        return found[0]


def reconcile(consortium: Consortium, sites: Iterable[SiteKey]) -> list[Member]:
    """Removes every member whose registry identity is gone or revoked; returns them.

    Raises:
        SuperLinkError: the SuperLink could not be reached (the member stays listed).
    """
    known = list(sites)
    removed = []
    for member in members(consortium):
        if _enrolled(member.site_id, known) is None:
            removed.append(remove_site(consortium, member.site_id))
    return removed
