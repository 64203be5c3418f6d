"""Errors of the consortium's federation side (``gsco federation``).

::

    FederationError
    ├── ConsortiumError        the consortium folder is missing, incomplete or already made
    ├── CertificateError       a certificate or key is unreadable, mismatched or expired
    ├── MembershipError        a site that is not enrolled (or is revoked) in the registry,
    │                          or a node key that is not the one the consortium holds
    └── SuperLinkError         the SuperLink could not be started, reached or asked
"""

from __future__ import annotations

from protocol.errors import GscoError

__all__ = [
    "CertificateError",
    "ConsortiumError",
    "FederationError",
    "MembershipError",
    "SuperLinkError",
]


class FederationError(GscoError):
    """Base of the federation's errors."""


class ConsortiumError(FederationError):
    """The consortium folder is missing, incomplete, or exists when it must not."""


class CertificateError(FederationError):
    """A certificate or key is unreadable, does not match, or is not valid now."""


class MembershipError(FederationError):
    """A site is not an enrolled, unrevoked registry site, or its node key is not the one held."""


class SuperLinkError(FederationError):
    """The SuperLink could not be started, reached, or did not do what it was asked."""
