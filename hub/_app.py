"""The hub's HTTP API (FastAPI; OpenAPI documentation at ``/docs``, ``/openapi.json``).

``POST /v1/diagnose`` takes either ``multipart/form-data`` (an ``image`` file
and form fields) or ``application/json`` (a :class:`protocol.DiagnoseRequest`
with the image in base64). Images may be PNG, JPEG, DICOM or a NumPy ``.npy``
array.

One error shape, every time: every 4xx and 5xx body is a
:class:`protocol.ErrorResponse`, ``{"error": {"type", "message"}, "request_id"}``.
Each error type knows its status once (``HubError.http_status``, and
:data:`_FOREIGN_STATUS` for the protocol's errors); the handlers are registered
once, here. Anything else is a bug: logged with its traceback, answered 500
without one. 503 (with ``Retry-After``) means the hub is full or not ready.

Work that costs CPU (parsing a JSON body, base64, decoding, preprocessing,
hashing, the access log's write) runs in the hub's worker pool, never on the
event loop, so ``/healthz`` answers at once under a burst. A request body must
arrive within ``body_timeout_s`` (408) and within ``max_body_bytes`` (413,
declared or chunked).
"""

from __future__ import annotations

import asyncio
import copy
import logging
import re
import signal
import threading
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from contextlib import asynccontextmanager
from typing import Any, TypeVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from pydantic.json_schema import models_json_schema
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.formparsers import MultiPartException

from hub._engine import Diagnosis
from hub._fhir import FHIR_MEDIA_TYPE, diagnostic_report
from hub._service import Admission, Hub
from hub.errors import (
    AuthenticationError,
    BadRequestError,
    HubError,
    OverloadedError,
    PayloadTooLargeError,
    RequestTimeoutError,
    SpecialistRuntimeError,
)
from protocol import (
    DiagnoseRequest,
    DiagnoseResponse,
    EncodingError,
    ErrorResponse,
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
_T = TypeVar("_T")

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


def _status(exc: GscoError) -> int:
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


def _error(exc: GscoError, request_id: str) -> JSONResponse:
    status = _status(exc)
    message = str(exc) if status < 500 else f"internal error ({type(exc).__name__}); see the log"
    headers = {"X-Request-Id": request_id}
    if isinstance(exc, OverloadedError):
        headers["Retry-After"] = str(exc.retry_after_s)
    if isinstance(exc, AuthenticationError):
        headers["WWW-Authenticate"] = "Bearer"
    return JSONResponse(
        _body(type(exc).__name__, message, request_id), status_code=status, headers=headers
    )


def _request_id(request: Request) -> str:
    return str(getattr(request.state, "request_id", None) or "-")


class _BodyLimit:
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
            await _error(too_large, "-")(scope, receive, send)
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
        f"unsupported image content type {value[:100]!r}: use "
        + ", ".join(m.value for m in MediaType),
        status=415,
    )


_TRUE, _FALSE = {"1", "true", "yes"}, {"0", "false", "no"}


def _form_document(fields: dict[str, str]) -> dict[str, Any]:
    """The form's fields as a DiagnoseRequest document (strictly typed, as JSON would be)."""
    document: dict[str, Any] = {
        "task_id": fields.get("task_id", ""),
        "mode": fields.get("mode", Mode.GSCO.value),
        # a placeholder: the image travels as the file, not as base64
        "image": {"media_type": MediaType.PNG.value, "data_base64": "AAAA"},
    }
    if "fhir" in fields:
        flag = fields["fhir"].strip().lower()
        if flag not in _TRUE | _FALSE:
            raise BadRequestError("fhir must be true or false")
        document["fhir"] = flag in _TRUE
    if "top_k" in fields:
        text = fields["top_k"].strip()
        if not re.fullmatch(r"[0-9]{1,6}", text):
            raise BadRequestError("top_k must be a whole number")
        document["top_k"] = int(text)
    return document


async def _parse_request(
    request: Request,
    in_pool: Callable[[Callable[[], tuple[DiagnoseRequest, bytes]]], Awaitable[Any]],
) -> tuple[DiagnoseRequest, bytes, MediaType | None]:
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "application/json":
        raw = await request.body()  # 413 and 408 come from here, unconverted

        def parse() -> tuple[DiagnoseRequest, bytes]:
            try:
                body = DiagnoseRequest.parse(raw)
            except GscoError as exc:
                raise BadRequestError(str(exc)) from exc
            return body, body.image.decode()

        parsed: DiagnoseRequest
        image: bytes
        parsed, image = await in_pool(parse)
        return parsed, image, parsed.image.media_type
    if content_type == "multipart/form-data":
        try:
            form = await request.form(max_files=1, max_fields=10, max_part_size=1024 * 1024)
        except MultiPartException as exc:
            raise BadRequestError(f"malformed multipart body: {exc.message}") from exc
        except StarletteHTTPException as exc:  # Starlette turns its multipart errors into these
            raise BadRequestError(f"malformed multipart body: {exc.detail}") from exc
        upload = form.get("image")
        if upload is None or isinstance(upload, str):
            raise BadRequestError("the multipart body needs a file field named 'image'")
        fields = {k: v for k, v in form.items() if k != "image" and isinstance(v, str)}
        try:
            form_request = DiagnoseRequest.parse(_form_document(fields))
        except GscoError as exc:
            raise BadRequestError(str(exc)) from exc
        data = await upload.read()
        return form_request, data, _media_type(upload.content_type, upload.filename)
    raise BadRequestError(
        f"unsupported content type {content_type[:100] or 'none'!r}: "
        "send multipart/form-data or application/json",
        status=415,
    )


_ERROR_REF = {"$ref": "#/components/schemas/ErrorResponse"}


def _error_doc(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ERROR_REF}}}


_DIAGNOSE_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The diagnosis, with its evidence and provenance "
        "(a FHIR DiagnosticReport when asked for with fhir or Accept).",
        "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/DiagnoseResponse"}},
            FHIR_MEDIA_TYPE: {"schema": {"type": "object"}},
        },
    },
    400: _error_doc("A malformed request."),
    401: _error_doc("A missing or unknown API key."),
    404: _error_doc("No verified specialist serves the task."),
    408: _error_doc("The body did not arrive in time."),
    413: _error_doc("The body or the image is too large."),
    415: _error_doc("An unsupported content type or image type."),
    422: _error_doc("The image cannot be decoded, or breaks the decoding limits."),
    500: _error_doc("A bug in the hub (logged with its traceback)."),
    503: _error_doc("The hub is at capacity or not ready; see Retry-After."),
}
_TASKS_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "Tasks in service and their verified specialists.",
        "content": {"application/json": {"schema": {"type": "object"}}},
    },
    401: _error_doc("A missing or unknown API key."),
    500: _error_doc("A bug in the hub."),
}
_DIAGNOSE_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["task_id", "image"],
                    "properties": {
                        "task_id": dict(
                            DiagnoseRequest.model_json_schema()["properties"]["task_id"]
                        ),
                        "image": {"type": "string", "format": "binary"},
                        "mode": {"type": "string", "enum": [m.value for m in Mode]},
                        "top_k": {"type": "integer", "minimum": 1, "maximum": 50},
                        "fhir": {"type": "boolean"},
                    },
                }
            },
            "application/json": {"schema": {"$ref": "#/components/schemas/DiagnoseRequest"}},
        },
    }
}


def _openapi(app: FastAPI, anonymous: bool, task_ids: list[str]) -> dict[str, Any]:
    """The OpenAPI document: every status, the error schema, the API-key schemes.

    Made anew for each request (it is small), so that the tasks in service are
    its examples of ``task_id``.
    """
    document = copy.deepcopy(
        get_openapi(title=app.title, version=app.version, summary=app.summary, routes=app.routes)
    )
    _, schemas = models_json_schema(
        [
            (DiagnoseRequest, "validation"),
            (DiagnoseResponse, "serialization"),
            (ErrorResponse, "serialization"),
        ],
        ref_template="#/components/schemas/{model}",
    )
    components = document.setdefault("components", {})
    components.setdefault("schemas", {}).update(schemas.get("$defs", {}))
    components["securitySchemes"] = {
        "bearerAuth": {
            "type": "http",
            "scheme": "bearer",
            "description": "Authorization: Bearer KEY",
        },
        "apiKeyHeader": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
    }
    security: list[dict[str, list[str]]] = [{"bearerAuth": []}, {"apiKeyHeader": []}]
    if anonymous:
        security.append({})  # this hub serves without keys (a loopback demo)
    for path in ("/v1/diagnose", "/v1/tasks"):
        for operation in document["paths"].get(path, {}).values():
            operation["security"] = security
    if task_ids:
        form = document["paths"]["/v1/diagnose"]["post"]["requestBody"]["content"]
        form["multipart/form-data"]["schema"]["properties"]["task_id"]["examples"] = task_ids
        components["schemas"]["DiagnoseRequest"]["properties"]["task_id"]["examples"] = task_ids
    return document


def create_app(hub: Hub, *, manage_lifecycle: bool = True) -> Any:
    """The ASGI application of ``hub`` (starts and stops it unless told not to)."""

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if manage_lifecycle:
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
            if manage_lifecycle:
                await hub.aclose()

    app = FastAPI(
        title="GSCo hub",
        version="1",
        summary="Diagnosis by generalist-specialist collaboration over verified specialists.",
        lifespan=lifespan,
    )
    app.openapi = lambda: _openapi(  # type: ignore[method-assign]
        app, hub.api_keys is None, sorted(hub.catalog.tasks)
    )
    admission = Admission(hub.config.max_in_flight, hub.config.max_queue, hub.config.retry_after_s)
    metrics = hub.metrics

    async def in_pool(work: Callable[[], _T]) -> _T:
        return await asyncio.get_running_loop().run_in_executor(hub.executor, work)

    # -- the error handlers, registered once ------------------------------------------

    async def gsco_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, GscoError)
        if _status(exc) >= 500:
            log.error("request %s: %s", _request_id(request), exc, exc_info=exc)
        return _error(exc, _request_id(request))

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        kind = _HTTP_ERROR_TYPES.get(exc.status_code, "BadRequestError")
        return JSONResponse(
            _body(kind, str(exc.detail), _request_id(request)),
            status_code=exc.status_code,
            headers=dict(exc.headers or {}),
        )

    async def validation_error(request: Request, exc: Exception) -> Response:
        return JSONResponse(
            _body("BadRequestError", str(exc), _request_id(request)), status_code=400
        )

    async def bug(request: Request, exc: Exception) -> Response:
        log.error("request %s failed", _request_id(request), exc_info=exc)
        return JSONResponse(
            _body(
                "InternalError",
                f"internal error ({type(exc).__name__}); see the log",
                _request_id(request),
            ),
            status_code=500,
        )

    app.add_exception_handler(GscoError, gsco_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(Exception, bug)

    def authenticate(request: Request, endpoint: str) -> str:
        if hub.api_keys is None:
            return "anonymous"
        client = hub.api_keys.identify(_api_key(request))
        if client is None:
            metrics.auth_failures.labels(endpoint=endpoint).inc()
            raise AuthenticationError("a valid API key is required (Authorization: Bearer KEY)")
        return client

    async def record(**fields: Any) -> None:
        access_log = hub.access_log
        if access_log is not None:  # resolves once the record is durable (group commit)
            await asyncio.wrap_future(access_log.submit(**fields))

    @app.post(
        "/v1/diagnose",
        openapi_extra=_DIAGNOSE_BODY,
        response_model=None,
        responses=_DIAGNOSE_RESPONSES,
    )
    async def diagnose(request: Request) -> Response:
        """Diagnoses one image with the task's verified specialists and the generalist."""
        request_id = uuid.uuid4().hex
        request.state.request_id = request_id
        client = "unauthenticated"
        task_id = None
        mode = None
        try:
            client = authenticate(request, "/v1/diagnose")
            parsed, image, media_type = await _parse_request(request, in_pool)
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
        except Exception as exc:
            # Every refusal is counted and logged (failed authentications included),
            # then answered by the handlers above; a bug stays a bug (500, traceback).
            if isinstance(exc, SpecialistRuntimeError):
                log.error("request %s: %s", request_id, exc)
            metrics.errors.labels(type=type(exc).__name__).inc()
            metrics.requests.labels(
                mode_requested=mode.value if mode else "", mode_used="", outcome="error"
            ).inc()
            await record(
                request_id=request_id,
                client_id=client,
                outcome=type(exc).__name__[:64],
                task_id=task_id,
                mode_requested=mode,
            )
            raise
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
        await record(
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

    @app.get("/v1/tasks", response_model=None, responses=_TASKS_RESPONSES)
    async def tasks(request: Request) -> Response:
        """Tasks in service, with their verified specialists and the sites that published them."""
        authenticate(request, "/v1/tasks")
        catalog = hub.catalog
        engine = hub.engine
        calibrations = engine.calibrations.known() if engine is not None else {}
        adapters = engine.adapters if engine is not None else {}
        body = {
            "registry_snapshot_version": catalog.snapshot_version,
            "synced_at": catalog.synced_at.isoformat() if catalog.synced_at else None,
            "tasks": [
                {
                    "task": catalog.task_spec(task).model_dump(mode="json"),
                    "arbitration_policy": (
                        in_service.model_dump(mode="json")
                        if engine is not None
                        and (in_service := engine.policy_in_service(task)) is not None
                        else None
                    ),
                    "adapter": (
                        {
                            "name": adapters[task].name,
                            "bundle_digest": adapters[task].digest,
                            "source": adapters[task].source,
                            "endorsed_by": list(adapters[task].endorsed_by),
                            "card": adapters[task].card.model_dump(mode="json"),
                        }
                        if task in adapters
                        else None
                    ),
                    "adapter_warning": hub.adapter_warnings.get(task),
                    "calibrations": [
                        {
                            "mode": mode,
                            "model": model,
                            "method": c.method.value,
                            "content_free": dict(zip(c.labels, c.content_free or (), strict=False)),
                        }
                        for (task_id, mode, model), c in sorted(calibrations.items())
                        if task_id == task
                    ],
                    "sites": sorted({s.card.site_id for s in group}),
                    "specialists": [
                        {
                            **s.provenance.model_dump(mode="json"),
                            "providers": list(s.providers),
                            "index_mode": s.card.index.mode.value,
                            "index_entries": s.index_size,
                            "calibration_temperature": s.card.calibration_temperature,
                            "held_out_accuracy": s.card.metrics.accuracy,
                            # all of them, with QWK and MAE for ordinal tasks
                            "held_out_metrics": s.card.metrics.model_dump(mode="json"),
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

    @app.get(
        "/healthz",
        responses={
            200: {
                "description": "The process answers.",
                "content": {"application/json": {"schema": {"type": "object"}}},
            }
        },
    )
    async def healthz() -> dict[str, str]:
        """Liveness: the process answers."""
        return {"status": "ok"}

    readiness = {"content": {"application/json": {"schema": {"type": "object"}}}}

    @app.get(
        "/readyz",
        response_model=None,
        responses={
            200: {"description": "At least one task is served.", **readiness},
            503: {"description": "No verified specialist is loaded yet.", **readiness},
        },
    )
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

    @app.get(
        "/metrics",
        response_model=None,
        response_class=PlainTextResponse,
        responses={
            200: {
                "description": "Prometheus metrics (text exposition format 0.0.4).",
                "content": {"text/plain": {"schema": {"type": "string"}}},
            }
        },
    )
    async def metrics_endpoint() -> Response:
        """Prometheus metrics."""
        return Response(metrics.render(), media_type="text/plain; version=0.0.4")

    return _BodyLimit(app, hub.config.max_body_bytes, hub.config.body_timeout_s)
