"""The consortium's adapter: a version of a task's adapter role that its training sites co-sign.

An adapter of the generalist changes every hub's answers for a task, so no
one site may put one in service. It takes effect only when the consortium
stands behind it:

1. The sites that trained it (FedAvg with Flower) each receive the final
   weights. One of them writes the bundle and signs it (``model.sig``).
2. That site proposes the next version of the task's adapter role
   (``_adapter.<task>``, :func:`propose_adapter_role`): the previous
   version plus one, listing exactly this bundle's files. Each training site
   checks the bundle against the weights it received and what it reported,
   and signs the proposal with its site key (:func:`endorse`).
3. The registry accepts the bundle only with the proposal signed by enough of
   those sites (:func:`check_backing`): the consortium's threshold, at least
   :data:`MIN_SIGNERS`, and a majority of the sites the card says trained it.
   The role's delegation carries the threshold under the registry's targets
   key, so every hub's TUF client verifies it, and hubs and the audit apply
   this module's rule again.

The role's version orders the task's adapters across the consortium: a hub
serves the one the role lists now, never the largest number a site chose.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from securesystemslib.exceptions import UnverifiedSignatureError
from securesystemslib.signer import CryptoSigner, Signature
from tuf.api.metadata import Metadata, TargetFile, Targets
from tuf.api.serialization.json import JSONSerializer

from protocol import AdapterCard
from registry._tuf import (
    ADAPTER_TARGETS,
    EXPIRY,
    adapter_role,
    adapter_target_path,
    parse_targets,
    site_tuf_key,
)
from registry.errors import RejectCode, RejectedError
from signing import load_private_key

__all__ = [
    "MIN_SIGNERS",
    "Endorsement",
    "announced_adapter",
    "assemble_adapter_role",
    "check_adapter_role",
    "check_backing",
    "endorse",
    "parse_adapter_path",
    "propose_adapter_role",
    "required_signers",
    "role_signers",
]

#: However the consortium sets its threshold, no adapter takes effect on fewer sites' word.
MIN_SIGNERS = 2
#: A task id (protocol.Identifier's pattern).
_TASK_ID = re.compile(r"[a-z0-9](?:[a-z0-9._-]{0,62}[a-z0-9])?")
#: The longest a role version may be valid (TUF's freeze protection needs an expiry).
_MAX_VALIDITY = EXPIRY["site"] + timedelta(days=1)


@dataclass(frozen=True)
class Endorsement:
    """One site's signature over a proposed version of an adapter role."""

    keyid: str
    signature: str  # hex

    def to_json(self) -> str:
        """As JSON (what a site sends back to the SuperLink)."""
        return json.dumps({"keyid": self.keyid, "signature": self.signature})

    @classmethod
    def from_json(cls, text: str) -> Endorsement:
        """From :meth:`to_json`; raises ``ValueError`` for anything else."""
        document = json.loads(text)
        if not isinstance(document, dict) or set(document) != {"keyid", "signature"}:
            raise ValueError("an endorsement is {keyid, signature}")
        keyid, signature = document["keyid"], document["signature"]
        if not (isinstance(keyid, str) and isinstance(signature, str)):
            raise ValueError("an endorsement's keyid and signature are strings")
        if len(keyid) > 128 or len(signature) > 1024:
            raise ValueError("an endorsement's keyid or signature is too long")
        return cls(keyid, signature)


def parse_adapter_path(path: str) -> tuple[str, str, str] | None:
    """``(task, digest, file)`` of a consortium adapter target path, or None for any other."""
    parts = path.split("/")
    if len(parts) != 4 or parts[0] != ADAPTER_TARGETS or any(p in ("", ".", "..") for p in parts):
        return None
    return parts[1], parts[2], parts[3]


def _now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def propose_adapter_role(
    previous: bytes | None, task_id: str, bundle_digest: str, files: Mapping[str, bytes]
) -> bytes:
    """The next version of the task's adapter role, unsigned: exactly this bundle's files.

    ``previous``: the role's current metadata as the registry serves it (None
    when the task never had one). Every signer signs the same bytes.
    """
    version = 1
    if previous is not None:
        version = _parse(previous, RejectCode.INVALID_TUF_METADATA).signed.version + 1
    targets = {}
    for name, data in sorted(files.items()):
        path = adapter_target_path(task_id, bundle_digest, name)
        targets[path] = TargetFile.from_data(path, data, ["sha256"])
    metadata = Metadata(Targets(version=version, expires=_now() + EXPIRY["site"], targets=targets))
    return metadata.to_bytes(JSONSerializer(compact=True))


def endorse(proposal: bytes, private_key: Path, password: bytes | None = None) -> Endorsement:
    """This site's signature over ``proposal`` (run at the site, with its own key)."""
    metadata = _parse(proposal, RejectCode.INVALID_TUF_METADATA)
    private = load_private_key(private_key, password)
    public = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    signature = metadata.sign(CryptoSigner(private, site_tuf_key(public)), append=False)
    return Endorsement(signature.keyid, signature.signature)


def assemble_adapter_role(proposal: bytes, endorsements: Iterable[Endorsement]) -> bytes:
    """``proposal`` with every endorsement's signature attached (checked by the registry)."""
    metadata = _parse(proposal, RejectCode.INVALID_TUF_METADATA)
    metadata.signatures.clear()
    for endorsement in endorsements:
        metadata.signatures[endorsement.keyid] = Signature(endorsement.keyid, endorsement.signature)
    return metadata.to_bytes(JSONSerializer(compact=True))


def _parse(data: bytes, code: RejectCode) -> Metadata[Targets]:
    return parse_targets(data, code, "the adapter role metadata")


def announced_adapter(data: bytes) -> tuple[str, str, dict[str, tuple[int, str]]]:
    """Which task, bundle and files a proposed adapter role announces (unverified).

    Raises:
        RejectedError: ``UNAUTHENTICATED`` unless it lists one bundle of one task.
    """
    metadata = _parse(data, RejectCode.UNAUTHENTICATED)
    found = [parse_adapter_path(path) for path in metadata.signed.targets]
    if not found or any(f is None for f in found):
        raise RejectedError(
            RejectCode.UNAUTHENTICATED,
            "an adapter role lists paths _adapters/<task>/<digest>/<file> only",
        )
    parsed = [f for f in found if f is not None]
    if len({(task, digest) for task, digest, _ in parsed}) != 1:
        raise RejectedError(RejectCode.UNAUTHENTICATED, "an adapter role lists one bundle")
    task_id, digest = parsed[0][0], parsed[0][1]
    if not _TASK_ID.fullmatch(task_id):
        raise RejectedError(RejectCode.UNAUTHENTICATED, f"not a task id: {task_id[:80]!r}")
    files = {}
    for path, target in metadata.signed.targets.items():
        sha256 = target.hashes.get("sha256")
        if sha256 is None or set(target.hashes) != {"sha256"}:
            raise RejectedError(RejectCode.UNAUTHENTICATED, f"target {path} needs its sha256 only")
        files[path.rsplit("/", 1)[1]] = (target.length, sha256)
    return task_id, digest, files


def check_adapter_role(
    data: bytes,
    *,
    task_id: str,
    bundle_digest: str,
    files: Mapping[str, str],
    sizes: Mapping[str, int],
    previous: bytes | None,
) -> Metadata[Targets]:
    """The structure of a proposed adapter role version (signatures: :func:`role_signers`).

    It must be the next version after ``previous``, list exactly this
    bundle's files with their sizes and hashes, delegate nothing, and expire
    within a year.

    Raises:
        RejectedError: ``STALE_VERSION`` (not the next version: a replay or a
            jump) or ``INVALID_TUF_METADATA``.
    """
    metadata = _parse(data, RejectCode.INVALID_TUF_METADATA)
    signed = metadata.signed
    expected_version = 1
    if previous is not None:
        expected_version = _parse(previous, RejectCode.INVALID_TUF_METADATA).signed.version + 1
    if signed.version != expected_version:
        raise RejectedError(
            RejectCode.STALE_VERSION,
            f"adapter role {adapter_role(task_id)} version {signed.version}: the next is "
            f"{expected_version} (a replay or a jump)",
        )
    now = _now()
    if not now < signed.expires <= now + _MAX_VALIDITY:
        raise RejectedError(
            RejectCode.INVALID_TUF_METADATA,
            f"the adapter role expires {signed.expires.isoformat()}: it must be valid now and "
            f"for at most {_MAX_VALIDITY.days} days",
        )
    if signed.delegations is not None:
        raise RejectedError(RejectCode.INVALID_TUF_METADATA, "an adapter role delegates nothing")
    expected = {
        adapter_target_path(task_id, bundle_digest, name): (sizes[name], {"sha256": sha256})
        for name, sha256 in files.items()
    }
    listed = {path: (t.length, t.hashes) for path, t in signed.targets.items()}
    if listed != expected:
        raise RejectedError(
            RejectCode.INVALID_TUF_METADATA,
            "the adapter role must list exactly this bundle's files, sizes and hashes",
        )
    return metadata


def role_signers(
    metadata: Metadata[Targets], keys_by_site: Mapping[str, Iterable[bytes]]
) -> frozenset[str]:
    """The distinct sites one of whose keys (PEM) signed ``metadata`` validly.

    A site with several keys counts once; a signature by a key that is not
    given (unknown, revoked) counts for nobody.
    """
    signed_bytes = metadata.signed_bytes
    signers = set()
    for site_id, pems in keys_by_site.items():
        for pem in pems:
            key = site_tuf_key(pem)
            signature = metadata.signatures.get(key.keyid)
            if signature is None:
                continue
            try:
                key.verify_signature(signature, signed_bytes)
            except UnverifiedSignatureError:
                continue
            signers.add(site_id)
            break
    return frozenset(signers)


def required_signers(card: AdapterCard, threshold: int) -> int:
    """How many training sites must co-sign ``card``'s adapter.

    The consortium's ``threshold``, never fewer than :data:`MIN_SIGNERS`, and a
    majority of the sites the card says trained it.
    """
    return max(threshold, MIN_SIGNERS, len(card.training.sites) // 2 + 1)


def check_backing(
    card: AdapterCard,
    signers: frozenset[str],
    signed_by: str,
    threshold: int,
    enrolled: Iterable[str],
) -> tuple[str, ...]:
    """The training sites whose co-signatures put the adapter in service; raises without enough.

    Only sites the card names as trainers count (they are the ones who could
    check the weights); every trainer the card names must be enrolled; the
    site that signed the bundle must be among the co-signers.

    Raises:
        RejectedError: ``NO_CONSORTIUM_BACKING``.
    """
    trainers = set(card.training.sites)
    strangers = sorted(trainers - set(enrolled))
    if strangers:
        raise RejectedError(
            RejectCode.NO_CONSORTIUM_BACKING,
            f"the card names training sites that are not enrolled: {', '.join(strangers[:5])}",
        )
    counted = tuple(sorted(signers & trainers))
    needed = required_signers(card, threshold)
    if signed_by not in counted or len(counted) < needed:
        raise RejectedError(
            RejectCode.NO_CONSORTIUM_BACKING,
            f"adapter {card.task_id} v{card.version} is co-signed by "
            f"{len(counted)} of its {len(trainers)} training sites "
            f"({', '.join(counted) or 'none'}"
            + ("" if signed_by in counted else f"; not by {signed_by}, which signed the bundle")
            + f"); it needs {needed} (the consortium's threshold {threshold}, at least "
            f"{MIN_SIGNERS}, and a majority of its trainers)",
        )
    return counted
