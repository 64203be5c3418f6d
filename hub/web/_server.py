"""The hub's HTTP server: one hardened uvicorn configuration for the CLI and the simulation."""

from __future__ import annotations

import contextlib
import ipaddress
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import uvicorn

from hub.errors import HubConfigError
from hub.web._app import create_app
from hub.web._compat import with_header_timeout
from hub.web._service import Hub

__all__ = ["ServerOptions", "serve", "serving"]


@dataclass(frozen=True)
class ServerOptions:
    """How the hub's HTTP server listens; the defaults are the safe ones."""

    tls_cert: Path | None = None
    tls_key: Path | None = None
    #: A TLS proxy terminates in front: trust its X-Forwarded-* headers.
    behind_tls_proxy: bool = False
    #: Seconds a request's headers may take before the connection is closed.
    header_timeout_s: float = 10.0
    #: An idle kept-alive connection is closed after this many seconds.
    keep_alive_s: float = 5.0
    graceful_shutdown_s: float = 10.0

    def check(self, host: str) -> None:
        """Refuses half a TLS configuration, and API keys over plain HTTP off loopback."""
        if (self.tls_cert is None) != (self.tls_key is None):
            raise HubConfigError("pass both --tls-cert and --tls-key, or neither")
        if not _loopback(host) and self.tls_cert is None and not self.behind_tls_proxy:
            raise HubConfigError(
                f"refusing to serve API keys over plain HTTP on {host}: pass --tls-cert/--tls-key "
                "(or --behind-tls-proxy when a TLS proxy terminates in front)"
            )

    @property
    def scheme(self) -> str:
        return "https" if self.tls_cert else "http"


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _server(hub: Hub, options: ServerOptions) -> uvicorn.Server:
    return uvicorn.Server(
        uvicorn.Config(
            create_app(hub),
            log_level="warning",
            ssl_certfile=str(options.tls_cert) if options.tls_cert else None,
            ssl_keyfile=str(options.tls_key) if options.tls_key else None,
            timeout_graceful_shutdown=int(options.graceful_shutdown_s),
            timeout_keep_alive=int(options.keep_alive_s),
            access_log=False,  # the hub's own access log records every answer
            proxy_headers=options.behind_tls_proxy,  # X-Forwarded-* means nothing without a proxy
            http=with_header_timeout(options.header_timeout_s),  # slow or silent headers
        )
    )


def serve(listener: socket.socket, hub: Hub, options: ServerOptions) -> None:
    """Serves ``hub`` on a bound ``listener`` until interrupted (SIGINT or SIGTERM)."""
    _server(hub, options).run(sockets=[listener])


@contextlib.contextmanager
def serving(
    hub: Hub, options: ServerOptions = ServerOptions(), *, start_timeout_s: float = 300.0
) -> Iterator[str]:
    """Serves ``hub`` on a free loopback port in a thread; yields its base URL.

    The same server as :func:`serve`, for a process that runs the hub beside
    other work (the simulation). Stops it on exit.

    Raises:
        HubConfigError: the server did not start within ``start_timeout_s``.
    """
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    server = _server(hub, options)
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [listener]}, name="gsco-hub-http", daemon=True
    )
    thread.start()
    try:
        deadline = time.monotonic() + start_timeout_s
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise HubConfigError("the hub's HTTP server did not start")
            time.sleep(0.05)
        yield f"{options.scheme}://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=60)
        listener.close()
