"""Workarounds for the web stack's dependencies, each naming the version it was written for.

The request-header timeout: uvicorn (:data:`UVICORN_CHECKED`) closes idle
keep-alive connections (``timeout_keep_alive``) but sets no deadline on a
request's headers: a client that connects and sends nothing, or dribbles half a
request line, holds its connection for ever (the "slowloris" class). This wraps
uvicorn's protocol so that a connection whose next request's headers are not
complete within ``seconds`` is closed. Once the headers are in, the app's body
timeout (``HubConfig.body_timeout_s``) takes over.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.auto import AutoHTTPProtocol

__all__ = ["UVICORN_CHECKED", "with_header_timeout"]

#: The uvicorn release whose HTTP protocol class :func:`with_header_timeout` extends
#: (``tests/test_compat.py`` fails when another is installed).
UVICORN_CHECKED = "0.49.0"


def with_header_timeout(seconds: float) -> type:
    """Uvicorn's HTTP protocol class, with a deadline on every request's headers."""

    class _HeaderDeadline(AutoHTTPProtocol):  # type: ignore[misc, valid-type]
        _gsco_deadline: asyncio.TimerHandle | None = None

        def _gsco_arm(self) -> None:
            self._gsco_disarm()
            self._gsco_deadline = self.loop.call_later(seconds, self._gsco_expire)

        def _gsco_disarm(self) -> None:
            if self._gsco_deadline is not None:
                self._gsco_deadline.cancel()
                self._gsco_deadline = None

        def _gsco_waiting_for_headers(self) -> bool:
            cycle = getattr(self, "cycle", None)
            return cycle is None or bool(cycle.response_complete)

        def _gsco_expire(self) -> None:
            self._gsco_deadline = None
            if self._gsco_waiting_for_headers() and not self.transport.is_closing():
                self.transport.close()

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            self._gsco_arm()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if not self._gsco_waiting_for_headers():
                self._gsco_disarm()  # a request is under way: the body timeout applies

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._gsco_arm()  # the next request's headers, on a kept-alive connection

        def connection_lost(self, exc: Exception | None) -> None:
            self._gsco_disarm()
            super().connection_lost(exc)

    return _HeaderDeadline
