"""Errors of the site agent.

::

SiteError
├── SiteHomeError        the site's home folder is missing, malformed or already set up
"""

from __future__ import annotations

from protocol.errors import GscoError

__all__ = ["SiteError", "SiteHomeError"]


class SiteError(GscoError):
    """Root of the site agent's errors."""


class SiteHomeError(SiteError):
    """The site's home folder is missing, malformed, or already initialised."""
