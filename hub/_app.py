"""The hub's HTTP API (FastAPI; OpenAPI documentation at ``/docs``).

``POST /v1/diagnose`` takes either ``multipart/form-data`` (an ``image`` file
and form fields) or ``application/json`` (a :class:`protocol.DiagnoseRequest`
with the image in base64). Images may be PNG, JPEG, DICOM or a NumPy ``.npy``
array. Every error is JSON ``{"error": {"type", "message"}, "request_id"}``
with a 4xx status for the client's mistakes, 503 (with ``Retry-After``) when
the hub is full or not ready, and never a traceback.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from hub._engine import Diagnosis
from hub._fhir import FHIR_MEDIA_TYPE, diagnostic_report
from hub._service import Admission, Hub
from hub.errors import (
    AuthenticationError,
    BadRequestError,
    OverloadedError,
    PayloadTooLargeError,
    SpecialistRuntimeError,
    UnknownTaskError,
)
from protocol import (
    DiagnoseRequest,
    GscoError,
    ImageDecodeError,
    MediaType,
    Mode,
    SchemaError,
)

__all__ = ["create_app"]

log = logging.getLogger(__name__)

_Scope = MutableMapping[str, Any]
_Message = MutableMapping[str, Any]
_Receive = Callable[[], Awaitable[_Message]]
_Send = Callable[[_Message], Awaitable[None]]


def _status(exc: Exception) -> int:
    if isinstance(exc, BadRequestError):
        return exc.status
    if isinstance(exc, AuthenticationError):
        return 401
    if isinstance(exc, UnknownTaskError):
        return 404
    if isinstance(exc, ImageDecodeError):
        return 422
    if isinstance(exc, SchemaError):
        return 400
    if isinstance(exc, OverloadedError):
        return 503
    return 500


def _error(exc: Exception, request_id: str) -> JSONResponse:
    status = _status(exc)
    message = str(exc) if status != 500 else f"internal error ({type(exc).__name__}); see the log"
    headers = {"X-Request-Id": request_id}
    if isinstance(exc, OverloadedError):
        headers["Retry-After"] = str(exc.retry_after_s)
    if isinstance(exc, AuthenticationError):
        headers["WWW-Authenticate"] = "Bearer"
    return JSONResponse(
        {"error": {"type": type(exc).__name__, "message": message}, "request_id": request_id},
        status_code=status,
        headers=headers,
    )


class _BodyLimit:
    """Refuses request bodies over ``limit`` bytes before they are read whole (413)."""

    def __init__(self, app: Callable[[_Scope, _Receive, _Send], Awaitable[None]], limit: int):
        self.app = app
        self.limit = limit

    async def __call__(self, scope: _Scope, receive: _Receive, send: _Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        too_large = PayloadTooLargeError(f"the request body is larger than {self.limit} bytes")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await _error(too_large, "-")(scope, receive, send)
            return
        seen = 0

        async def counted() -> _Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise too_large
            return message

        # The endpoint that reads the body answers the PayloadTooLargeError with a 413.
        await self.app(scope, counted, send)


def _api_key(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    if header.lower().startswith("bearer "):
        return header[7:].strip()
    return request.headers.get("x-api-key")


def _media_type(content_type: str | None, filename: str | None) -> MediaType | None:
    value = (content_type or "").split(";")[0].strip().lower()
    if value in {m.value for m in MediaType}:
        return MediaType(value)
    if value in {"", "application/octet-stream"}:
        suffix = (filename or "").rsplit(".", 1)[-1].lower()
        return {
            "png": MediaType.PNG,
            "jpg": MediaType.JPEG,
            "jpeg": MediaType.JPEG,
            "dcm": MediaType.DICOM,
            "npy": MediaType.NPY,
        }.get(suffix)
    raise BadRequestError(
        f"unsupported image content type {value!r}: use " + ", ".join(m.value for m in MediaType),
        status=415,
    )


async def _parse_request(request: Request) -> tuple[DiagnoseRequest, bytes, MediaType | None]:
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "application/json":
        try:
            body = DiagnoseRequest.parse(await request.body())
        except GscoError as exc:
            raise BadRequestError(str(exc)) from exc
        return body, body.image.decode(), body.image.media_type
    if content_type == "multipart/form-data":
        form = await request.form(max_files=1, max_fields=10)
        upload = form.get("image")
        if upload is None or isinstance(upload, str):
            raise BadRequestError("the multipart body needs a file field named 'image'")
        fields = {k: v for k, v in form.items() if k != "image" and isinstance(v, str)}
        document: dict[str, Any] = {
            "task_id": fields.get("task_id", ""),
            "mode": fields.get("mode", Mode.GSCO.value),
            "fhir": fields.get("fhir", "false").lower() in {"1", "true", "yes"},
            # a placeholder: the image travels as the file, not as base64
            "image": {"media_type": MediaType.PNG.value, "data_base64": "AAAA"},
        }
        if "top_k" in fields:
            document["top_k"] = fields["top_k"]
        try:
            parsed = DiagnoseRequest.parse(json.dumps(document).encode())
        except GscoError as exc:
            raise BadRequestError(str(exc)) from exc
        data = await upload.read()
        return parsed, data, _media_type(upload.content_type, upload.filename)
    raise BadRequestError(
        f"unsupported content type {content_type or 'none'!r}: "
        "send multipart/form-data or application/json",
        status=415,
    )


_DIAGNOSE_DOC: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["task_id", "image"],
                    "properties": {
                        "task_id": {"type": "string"},
                        "image": {"type": "string", "format": "binary"},
                        "mode": {"type": "string", "enum": [m.value for m in Mode]},
                        "top_k": {"type": "integer", "minimum": 1, "maximum": 50},
                        "fhir": {"type": "boolean"},
                    },
                }
            },
            "application/json": {"schema": DiagnoseRequest.model_json_schema()},
        },
    }
}


def create_app(hub: Hub, *, manage_lifecycle: bool = True) -> Any:
    """The ASGI application of ``hub`` (starts and stops it unless told not to)."""

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if manage_lifecycle:
            report = hub.start()
            if not report.ok:
                log.warning("first registry sync failed: %s", report.error)
        try:
            yield
        finally:
            if manage_lifecycle:
                await hub.aclose()

    app = FastAPI(
        title="GSCo hub",
        version="1",
        summary="Diagnosis by generalist-specialist collaboration over verified specialists.",
        lifespan=lifespan,
    )
    admission = Admission(hub.config.max_in_flight, hub.config.max_queue, hub.config.retry_after_s)
    metrics = hub.metrics

    def authenticate(request: Request) -> str:
        if hub.api_keys is None:
            return "anonymous"
        client = hub.api_keys.identify(_api_key(request))
        if client is None:
            raise AuthenticationError("a valid API key is required (Authorization: Bearer KEY)")
        return client

    @app.post("/v1/diagnose", openapi_extra=_DIAGNOSE_DOC, response_model=None)
    async def diagnose(request: Request) -> Response:
        """Diagnoses one image with the task's verified specialists and the generalist."""
        request_id = uuid.uuid4().hex
        client = "unknown"
        image_sha256 = None
        task_id = None
        mode = None
        try:
            client = authenticate(request)
            parsed, image, media_type = await _parse_request(request)
            task_id, mode = parsed.task_id, parsed.mode
            if len(image) == 0:
                raise BadRequestError("the image is empty")
            assert hub.engine is not None
            metrics.in_flight.inc()
            try:
                async with admission.slot():
                    diagnosis: Diagnosis = await hub.engine.diagnose(
                        request_id=request_id,
                        task_id=parsed.task_id,
                        image=image,
                        media_type=media_type,
                        mode=parsed.mode,
                        top_k=parsed.top_k,
                    )
            finally:
                metrics.in_flight.dec()
        except (GscoError, ValueError) as exc:
            if isinstance(exc, ValueError):
                exc = BadRequestError(str(exc))
            if isinstance(exc, SpecialistRuntimeError):
                log.error("request %s: %s", request_id, exc)
            metrics.errors.labels(type=type(exc).__name__).inc()
            metrics.requests.labels(
                mode_requested=mode.value if mode else "", mode_used="", outcome="error"
            ).inc()
            if hub.access_log is not None and client != "unknown":
                hub.access_log.append(
                    request_id=request_id,
                    client_id=client,
                    outcome=type(exc).__name__,
                    image_sha256=image_sha256,
                    task_id=task_id,
                    mode_requested=mode,
                )
            return _error(exc, request_id)
        response = diagnosis.response
        timings = response.timings
        for stage in ("decode", "specialists", "retrieval", "generalist", "total"):
            value = getattr(timings, f"{stage}_ms")
            if value is not None:
                metrics.stage_seconds.labels(stage=stage).observe(value / 1000.0)
        metrics.requests.labels(
            mode_requested=response.mode_requested.value,
            mode_used=response.mode_used.value,
            outcome="ok",
        ).inc()
        if response.degraded:
            metrics.degraded.inc()
        if hub.access_log is not None:
            hub.access_log.append(
                request_id=request_id,
                client_id=client,
                outcome="ok",
                image_sha256=diagnosis.image_sha256,
                task_id=response.task_id,
                mode_requested=response.mode_requested,
                mode_used=response.mode_used,
                degraded=response.degraded,
                label=response.label,
                specialist_digests=tuple(s.bundle_digest for s in response.specialists),
                registry_snapshot_version=response.registry_snapshot_version,
            )
        headers = {"X-Request-Id": request_id}
        if parsed.fhir or FHIR_MEDIA_TYPE in request.headers.get("accept", ""):
            return JSONResponse(
                diagnostic_report(response, diagnosis.image_sha256),
                media_type=FHIR_MEDIA_TYPE,
                headers=headers,
            )
        return Response(response.model_dump_json(), media_type="application/json", headers=headers)

    @app.get("/v1/tasks")
    async def tasks(request: Request) -> Response:
        """Tasks in service, with their verified specialists and the sites that published them."""
        try:
            authenticate(request)
        except AuthenticationError as exc:
            return _error(exc, "-")
        catalog = hub.catalog
        body = {
            "registry_snapshot_version": catalog.snapshot_version,
            "synced_at": catalog.synced_at.isoformat() if catalog.synced_at else None,
            "tasks": [
                {
                    "task": catalog.task_spec(task).model_dump(mode="json"),
                    "sites": sorted({s.card.site_id for s in group}),
                    "specialists": [
                        {
                            **s.provenance.model_dump(mode="json"),
                            "providers": list(s.providers),
                            "index_mode": s.card.index.mode.value,
                            "index_entries": s.index_size,
                            "calibration_temperature": s.card.calibration_temperature,
                            "held_out_accuracy": s.card.metrics.accuracy,
                            "training_privacy": (
                                s.card.training_privacy.model_dump(mode="json")
                                if s.card.training_privacy
                                else None
                            ),
                        }
                        for s in group
                    ],
                }
                for task, group in catalog.specialists.items()
            ],
        }
        return JSONResponse(body)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        """Liveness: the process answers."""
        return {"status": "ok"}

    @app.get("/readyz", response_model=None)
    async def readyz() -> JSONResponse:
        """Readiness: which tasks have a verified specialist loaded (503 while none)."""
        catalog = hub.catalog
        last = hub.last_sync
        body = {
            "ready": bool(catalog.tasks),
            "tasks": {task: len(group) for task, group in catalog.specialists.items()},
            "registry_snapshot_version": catalog.snapshot_version,
            "last_sync": None
            if last is None
            else {
                "ok": last.ok,
                "error": last.error,
                "refused": last.rejected,
                "unreadable": last.unreadable,
                "seconds": round(last.seconds, 3),
            },
            "generalist": hub.engine.generalist.model
            if hub.engine is not None and hub.engine.generalist is not None
            else None,
        }
        return JSONResponse(body, status_code=200 if catalog.tasks else 503)

    @app.get("/metrics")
    async def metrics_endpoint() -> Response:
        """Prometheus metrics."""
        return Response(metrics.render(), media_type="text/plain; version=0.0.4")

    return _BodyLimit(app, hub.config.max_body_bytes)
