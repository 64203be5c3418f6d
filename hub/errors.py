"""Errors of the hub.

::

    HubError
    ├── HubConfigError          the hub's configuration is unusable (missing root, bad key file)
    ├── AuthenticationError     a missing or unknown API key
    ├── UnknownTaskError        no such task, or no verified specialist serves it yet
    ├── BadRequestError         a request the API refuses (wrong content type, bad fields)
    │   ├── PayloadTooLargeError    the body or the image exceeds the configured bounds
    │   └── RequestTimeoutError     the body did not arrive in time (408)
    ├── SpecialistLoadError     a verified bundle cannot be turned into a runtime session
    ├── AdapterRefusedError     an adapter bundle fails verification or does not fit the generalist
    ├── SpecialistRuntimeError  a loaded specialist failed on an input
    ├── OverloadedError         the request queue is full (HTTP 503 with Retry-After)
    ├── AccessLogError          the access log is unreadable or its hash chain is broken
    ├── PolicyFitError          a policy fit's evidence or a site's answer to it is unusable
    ├── HubRequestError         (client side) the hub refused a request: its status and reason
    └── HubUnavailableError     (client side) the hub cannot be reached

Every class knows its HTTP status once (``http_status``); the API's handlers
are registered once, at the seam (``hub.web._errors``), and an error that is not a
:class:`protocol.GscoError` is a bug: logged with its traceback, answered 500.
Image decoding errors are :class:`protocol.ImageDecodeError` (422); generalist
failures are :class:`generalist.GeneralistError` and never reach a client:
they turn the answer into a degraded ``ensemble``.
"""

from __future__ import annotations

from typing import ClassVar

from protocol.errors import GscoError

__all__ = [
    "AccessLogError",
    "AdapterRefusedError",
    "AuthenticationError",
    "BadRequestError",
    "HubConfigError",
    "HubError",
    "HubRequestError",
    "HubUnavailableError",
    "OverloadedError",
    "PayloadTooLargeError",
    "PolicyFitError",
    "RequestTimeoutError",
    "SpecialistLoadError",
    "SpecialistRuntimeError",
    "UnknownTaskError",
]


class HubError(GscoError):
    """Root of the hub's errors.

    Attributes:
        http_status: the status the API answers this error with.
    """

    http_status: ClassVar[int] = 500


class HubConfigError(HubError):
    """The hub's configuration is unusable."""


class AuthenticationError(HubError):
    """A missing or unknown API key."""

    http_status = 401


class UnknownTaskError(HubError):
    """No such task, or no verified specialist for it is loaded yet."""

    http_status = 404


class BadRequestError(HubError):
    """A request the API refuses: 400, or the status given (415 for a wrong content type)."""

    http_status = 400

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        if status is not None:
            self.http_status = status  # type: ignore[misc]


class PayloadTooLargeError(BadRequestError):
    """The request body or the image is larger than the configured bounds."""

    http_status = 413


class RequestTimeoutError(BadRequestError):
    """The request body did not arrive within the body timeout."""

    http_status = 408


class SpecialistLoadError(HubError):
    """A verified bundle cannot be loaded into onnxruntime or faiss."""


class AdapterRefusedError(HubError):
    """An adapter bundle failed verification, or was tuned for another generalist or prompt."""

    http_status = 422


class SpecialistRuntimeError(HubError):
    """A loaded specialist failed on an input."""


class OverloadedError(HubError):
    """The hub's request queue is full.

    Attributes:
        retry_after_s: how long the client should wait before retrying.
    """

    http_status = 503

    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class AccessLogError(HubError):
    """The access log is unreadable or its hash chain is broken."""


class HubRequestError(HubError):
    """The hub refused a request.

    Attributes:
        status: the HTTP status.
        error_type: the hub's error type name (``UnknownTaskError``, ...).
        retry_after_s: the ``Retry-After`` the hub sent with a 503, if any.
    """

    def __init__(
        self, status: int, error_type: str, message: str, retry_after_s: float | None = None
    ) -> None:
        super().__init__(f"the hub answered {status} {error_type}: {message}")
        self.status = status
        self.error_type = error_type
        self.retry_after_s = retry_after_s


class HubUnavailableError(HubError):
    """The hub cannot be reached."""


class PolicyFitError(HubError):
    """A policy cannot be fitted: no usable validation evidence, or a malformed question or answer.

    Raised at a site for a question it will not answer (see
    :class:`hub.PolicyEvidence`), and where the sites' answers are summed, for
    answers that do not fit together.
    """
