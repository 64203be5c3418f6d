"""The hub's HTTP API (FastAPI; OpenAPI documentation at ``/docs``, ``/openapi.json``).

``POST /v1/diagnose`` takes either ``multipart/form-data`` (an ``image`` file
and form fields) or ``application/json`` (a :class:`protocol.DiagnoseRequest`
with the image in base64). Images may be PNG, JPEG, DICOM or a NumPy ``.npy``
array. Errors have one shape (:mod:`hub.web._errors`). A request body must
arrive within ``body_timeout_s`` (408) and within ``max_body_bytes`` (413,
declared or chunked).
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from hub.web._errors import BodyLimit, install_error_handlers
from hub.web._openapi import openapi_document
from hub.web._routes import diagnose_router, status_router, tasks_router
from hub.web._service import Hub

__all__ = ["create_app"]

log = logging.getLogger(__name__)


def create_app(hub: Hub) -> BodyLimit:
    """The ASGI application of ``hub``: it starts the hub on startup and closes it on shutdown."""

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        report = hub.start()
        if not report.ok:
            log.warning("first registry sync failed: %s", report.error)
        keys = hub.api_keys
        if keys is not None and threading.current_thread() is threading.main_thread():
            # SIGHUP reloads the API key file at once (it also reloads by itself on change).
            signal.signal(signal.SIGHUP, lambda *_: keys.reload())
        try:
            yield
        finally:
            await hub.aclose()

    app = FastAPI(
        title="GSCo hub",
        version="1",
        summary="Diagnosis by generalist-specialist collaboration over verified specialists.",
        lifespan=lifespan,
    )
    app.openapi = lambda: openapi_document(  # type: ignore[method-assign]
        app, hub.api_keys is None, sorted(hub.catalog.tasks)
    )
    install_error_handlers(app)
    app.include_router(diagnose_router(hub))
    app.include_router(tasks_router(hub))
    app.include_router(status_router(hub))
    return BodyLimit(app, hub.config.max_body_bytes, hub.config.body_timeout_s)
