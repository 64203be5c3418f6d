"""Errors of the generalist backends.

::

    GeneralistError
    ├── GeneralistUnavailableError   the server is down, unreachable or too slow (transport)
    ├── GeneralistResponseError      the server answered, but not usably (outside the label
    │                                set, malformed JSON, a 4xx)
    └── ServeError                   the embedded CPU server could not be prepared or started
"""

from __future__ import annotations

from protocol.errors import GscoError

__all__ = ["GeneralistError", "GeneralistResponseError", "GeneralistUnavailableError", "ServeError"]


class GeneralistError(GscoError):
    """Root of the generalist's errors."""


class GeneralistUnavailableError(GeneralistError):
    """The generalist could not be reached, or did not answer within the timeout."""


class GeneralistResponseError(GeneralistError):
    """The generalist's answer cannot be used."""


class ServeError(GeneralistError):
    """Preparing or starting the embedded vLLM server failed."""
