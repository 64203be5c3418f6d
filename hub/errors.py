"""Errors of the hub.

::

    HubError
    ├── HubConfigError          the hub's configuration is unusable (missing root, bad key file)
    ├── AuthenticationError     a missing or unknown API key
    ├── UnknownTaskError        no such task, or no verified specialist serves it yet
    ├── BadRequestError         a request the API refuses (wrong content type, bad fields)
    │   └── PayloadTooLargeError    the body or the image exceeds the configured bounds
    ├── SpecialistLoadError     a verified bundle cannot be turned into a runtime session
    ├── SpecialistRuntimeError  a loaded specialist failed on an input
    ├── OverloadedError         the request queue is full (HTTP 503 with Retry-After)
    └── AccessLogError          the access log is unreadable or its hash chain is broken

Image decoding errors are :class:`protocol.ImageDecodeError`; generalist
failures are :class:`generalist.GeneralistError` and never reach a client:
they turn the answer into a degraded ``ensemble``.
"""

from __future__ import annotations

from protocol.errors import GscoError

__all__ = [
    "AccessLogError",
    "AuthenticationError",
    "BadRequestError",
    "HubConfigError",
    "HubError",
    "OverloadedError",
    "PayloadTooLargeError",
    "SpecialistLoadError",
    "SpecialistRuntimeError",
    "UnknownTaskError",
]


class HubError(GscoError):
    """Root of the hub's errors."""


class HubConfigError(HubError):
    """The hub's configuration is unusable."""


class AuthenticationError(HubError):
    """A missing or unknown API key."""


class UnknownTaskError(HubError):
    """No such task, or no verified specialist for it is loaded yet."""


class BadRequestError(HubError):
    """A request the API refuses.

    Attributes:
        status: the HTTP status it answers with (400, or 415 for a wrong content type).
    """

    status = 400

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        if status is not None:
            self.status = status


class PayloadTooLargeError(BadRequestError):
    """The request body or the image is larger than the configured bounds."""

    status = 413


class SpecialistLoadError(HubError):
    """A verified bundle cannot be loaded into onnxruntime or faiss."""


class SpecialistRuntimeError(HubError):
    """A loaded specialist failed on an input."""


class OverloadedError(HubError):
    """The hub's request queue is full.

    Attributes:
        retry_after_s: how long the client should wait before retrying.
    """

    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class AccessLogError(HubError):
    """The access log is unreadable or its hash chain is broken."""
