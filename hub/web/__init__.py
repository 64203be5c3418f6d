"""The hub's diagnosis API: the service around :mod:`hub`'s engine, over HTTP.

:class:`Hub` runs the engine as a service (registry sync in the background,
the generalist's adapters, the access log, admission control, metrics);
:func:`create_app` is its FastAPI application, composed from routers;
:func:`serve` and :func:`serving` are its one hardened HTTP server (header and
body timeouts, no plain HTTP off loopback), used by ``gsco hub serve`` and the
simulation alike. :class:`HubClient` calls it. Needs the ``hub`` extra.
"""

from hub.web._app import create_app
from hub.web._auth import KeyFile, create_client_key, remove_client_key
from hub.web._client import HubClient
from hub.web._fhir import FHIR_MEDIA_TYPE, diagnostic_report
from hub.web._server import ServerOptions, serve, serving
from hub.web._service import Admission, Hub, HubConfig

__all__ = [
    "FHIR_MEDIA_TYPE",
    "Admission",
    "Hub",
    "HubClient",
    "HubConfig",
    "KeyFile",
    "ServerOptions",
    "create_app",
    "create_client_key",
    "diagnostic_report",
    "remove_client_key",
    "serve",
    "serving",
]
