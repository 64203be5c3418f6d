"""Errors of the generalist backends.

::

    GeneralistError
    ├── GeneralistUnavailableError   the server is down, unreachable or too slow (transport)
    ├── GeneralistResponseError      the server answered, but not usably (outside the label
    │                                set, malformed JSON, a 4xx)
    ├── AdapterLoadError             the server would not load a LoRA adapter
    └── ServeError                   the embedded CPU server could not be prepared or started
"""

from __future__ import annotations

from protocol.errors import GscoError

__all__ = [
    "AdapterLoadError",
    "GeneralistError",
    "GeneralistResponseError",
    "GeneralistUnavailableError",
    "ServeError",
]


class GeneralistError(GscoError):
    """Root of the generalist's errors."""


class GeneralistUnavailableError(GeneralistError):
    """The generalist could not be reached, or did not answer within the timeout."""


class GeneralistResponseError(GeneralistError):
    """The generalist's answer cannot be used."""


class AdapterLoadError(GeneralistError):
    """The generalist's server refused (or could not be asked) to load a LoRA adapter."""


class ServeError(GeneralistError):
    """Preparing or starting the embedded vLLM server failed."""
