"""One error shape, every time: every 4xx and 5xx body is a :class:`protocol.ErrorResponse`.

``{"error": {"type", "message"}, "request_id"}``. Each error type knows its
status once (``HubError.http_status``, and :data:`_FOREIGN_STATUS` for the
protocol's errors); the handlers are registered once, by
:func:`install_error_handlers`. Anything else is a bug: logged with its
traceback, answered 500 without one. 503 (with ``Retry-After``) means the hub
is full or not ready.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from hub.errors import (
    AuthenticationError,
    HubError,
    OverloadedError,
    PayloadTooLargeError,
    RequestTimeoutError,
)
from protocol import EncodingError, GscoError, ImageDecodeError, SchemaError

__all__ = ["BodyLimit", "error_response", "install_error_handlers", "request_id", "status_of"]

log = logging.getLogger(__name__)

_Scope = MutableMapping[str, Any]
_Message = MutableMapping[str, Any]
_Receive = Callable[[], Awaitable[_Message]]
_Send = Callable[[_Message], Awaitable[None]]

#: HTTP statuses of errors defined outside the hub (the hub's own carry ``http_status``).
_FOREIGN_STATUS: tuple[tuple[type[GscoError], int], ...] = (
    (ImageDecodeError, 422),
    (SchemaError, 400),
    (EncodingError, 400),
)
#: Names of framework errors, by status, in the error body's ``type``.
_HTTP_ERROR_TYPES = {
    404: "NotFoundError",
    405: "MethodNotAllowedError",
    413: "PayloadTooLargeError",
}
_MAX_MESSAGE = 4000


def status_of(exc: GscoError) -> int:
    if isinstance(exc, HubError):
        return exc.http_status
    for kind, status in _FOREIGN_STATUS:
        if isinstance(exc, kind):
            return status
    return 500


def _body(error_type: str, message: str, request_id: str) -> dict[str, Any]:
    return {
        "error": {"type": error_type[:100], "message": message[:_MAX_MESSAGE]},
        "request_id": request_id,
    }


def error_response(exc: GscoError, request_id: str) -> JSONResponse:
    status = status_of(exc)
    message = str(exc) if status < 500 else f"internal error ({type(exc).__name__}); see the log"
    headers = {"X-Request-Id": request_id}
    if isinstance(exc, OverloadedError):
        headers["Retry-After"] = str(exc.retry_after_s)
    if isinstance(exc, AuthenticationError):
        headers["WWW-Authenticate"] = "Bearer"
    return JSONResponse(
        _body(type(exc).__name__, message, request_id), status_code=status, headers=headers
    )


def request_id(request: Request) -> str:
    return str(getattr(request.state, "request_id", None) or "-")


class BodyLimit:
    """Bounds every request body: ``limit`` bytes (413) and ``timeout_s`` between chunks (408).

    A declared ``Content-Length`` over the limit is refused before a byte is
    read; a chunked body is counted as it arrives.
    """

    def __init__(
        self,
        app: Callable[[_Scope, _Receive, _Send], Awaitable[None]],
        limit: int,
        timeout_s: float,
    ) -> None:
        self.app = app
        self.limit = limit
        self.timeout_s = timeout_s

    async def __call__(self, scope: _Scope, receive: _Receive, send: _Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        too_large = PayloadTooLargeError(f"the request body is larger than {self.limit} bytes")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await error_response(too_large, "-")(scope, receive, send)
            return
        seen = 0
        body_done = False

        async def counted() -> _Message:
            nonlocal seen, body_done
            if body_done:  # after the body, receive() only waits for a disconnect: no deadline
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), self.timeout_s)
            except TimeoutError:
                raise RequestTimeoutError(
                    f"the request body did not arrive within {self.timeout_s:g} s"
                ) from None
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise too_large
                body_done = not message.get("more_body", False)
            else:
                body_done = True
            return message

        # The endpoint that reads the body answers these errors (413, 408) in the error shape.
        await self.app(scope, counted, send)


def install_error_handlers(app: FastAPI) -> None:
    """Answers every error in the one error shape (a bug: 500, its traceback logged)."""

    async def gsco_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, GscoError)
        if status_of(exc) >= 500:
            log.error("request %s: %s", request_id(request), exc, exc_info=exc)
        return error_response(exc, request_id(request))

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        kind = _HTTP_ERROR_TYPES.get(exc.status_code, "BadRequestError")
        return JSONResponse(
            _body(kind, str(exc.detail), request_id(request)),
            status_code=exc.status_code,
            headers=dict(exc.headers or {}),
        )

    async def validation_error(request: Request, exc: Exception) -> Response:
        return JSONResponse(
            _body("BadRequestError", str(exc), request_id(request)), status_code=400
        )

    async def bug(request: Request, exc: Exception) -> Response:
        log.error("request %s failed", request_id(request), exc_info=exc)
        return JSONResponse(
            _body(
                "InternalError",
                f"internal error ({type(exc).__name__}); see the log",
                request_id(request),
            ),
            status_code=500,
        )

    app.add_exception_handler(GscoError, gsco_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(Exception, bug)
