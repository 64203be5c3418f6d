"""The site's publishing use case: its own signature checked, the bundle sent, the ledger written.

``gsco site publish``, a simulated hospital and a deployed SuperNode publish
through :func:`publish_bundle`, so every bundle that leaves a site has been
checked against the site's own key first and is recorded in its egress
ledger, with the registry's answer, before the call returns.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from site_agent._home import SiteHome

if TYPE_CHECKING:
    from protocol import BundleRef
    from signing import VerifiedManifest

__all__ = ["PublishedBundle", "publish_bundle"]


@dataclass(frozen=True)
class PublishedBundle:
    """What the registry accepted, and the manifest the ledger recorded."""

    ref: BundleRef
    manifest: VerifiedManifest
    registry: str


def publish_bundle(
    site: SiteHome,
    bundle: Path,
    registry: str,
    *,
    root_certificates: bytes | None = None,
    timeout_s: float = 300.0,
) -> PublishedBundle:
    """Checks ``bundle``'s signature against ``site``'s key, publishes it and records it.

    Nothing is sent when the site's own check fails: a bundle signed by
    another key, changed after signing or not signed at all stays here.

    Raises:
        SigningError: the bundle is not validly signed by this site
            (see :func:`signing.verify_bundle_dir`).
        RejectedError: the registry refused it; its reason is the message.
        RegistryError: the registry could not be reached or answered badly.
        LedgerError: the egress ledger could not be written (the registry has
            the bundle; ``gsco audit registry --ledger`` shows the gap).
    """
    from registry import RegistryClient
    from signing import KeyRing, TrustedKey, verify_bundle_dir

    manifest = verify_bundle_dir(
        bundle,
        KeyRing([TrustedKey(site.config.site_id, site.public_key())]),
        expected_site_id=site.config.site_id,
    )
    with RegistryClient(
        registry, root_certificates=root_certificates, timeout_s=timeout_s
    ) as client:
        ref = client.publish(bundle, site.private_key)
    site.ledger.record_publication(registry, ref, dict(manifest.files))
    return PublishedBundle(ref, manifest, registry)
