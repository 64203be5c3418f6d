"""The hub's endpoints, as routers: diagnosis, the tasks in service, health and metrics.

Work that costs CPU (parsing a JSON body, base64, decoding, preprocessing,
hashing, the access log's write) runs in the hub's worker pool, never on the
event loop, so ``/healthz`` answers at once under a burst.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable
from typing import Any, TypeVar

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response

from hub._engine import Diagnosis
from hub.errors import AuthenticationError, BadRequestError, SpecialistRuntimeError
from hub.web._fhir import FHIR_MEDIA_TYPE, diagnostic_report
from hub.web._openapi import DIAGNOSE_BODY, DIAGNOSE_RESPONSES, TASKS_RESPONSES
from hub.web._parse import api_key, parse_request
from hub.web._service import Admission, Hub
from protocol import DiagnoseResponse, Mode

__all__ = ["diagnose_router", "status_router", "tasks_router"]

log = logging.getLogger(__name__)

_T = TypeVar("_T")


def _authenticate(hub: Hub, request: Request, endpoint: str) -> str:
    """The client's id (``anonymous`` on a hub without keys); a 401 otherwise."""
    if hub.api_keys is None:
        return "anonymous"
    client = hub.api_keys.identify(api_key(request))
    if client is None:
        hub.metrics.auth_failures.labels(endpoint=endpoint).inc()
        raise AuthenticationError("a valid API key is required (Authorization: Bearer KEY)")
    return client


async def _record(hub: Hub, **fields: Any) -> None:
    access_log = hub.access_log
    if access_log is not None:  # resolves once the record is durable (group commit)
        await asyncio.wrap_future(access_log.submit(**fields))


def _observe(hub: Hub, response: DiagnoseResponse) -> None:
    metrics = hub.metrics
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


def diagnose_router(hub: Hub) -> APIRouter:
    """``POST /v1/diagnose``: one image, the task's specialists and the generalist."""
    router = APIRouter()
    admission = Admission(hub.config.max_in_flight, hub.config.max_queue, hub.config.retry_after_s)
    metrics = hub.metrics

    async def in_pool(work: Callable[[], _T]) -> _T:
        return await asyncio.get_running_loop().run_in_executor(hub.executor, work)

    async def refused(
        exc: Exception, request_id: str, client: str, task_id: str | None, mode: Mode | None
    ) -> None:
        # Every refusal is counted and logged (failed authentications included),
        # then answered by the error handlers; a bug stays a bug (500, traceback).
        if isinstance(exc, SpecialistRuntimeError):
            log.error("request %s: %s", request_id, exc)
        metrics.errors.labels(type=type(exc).__name__).inc()
        metrics.requests.labels(
            mode_requested=mode.value if mode else "", mode_used="", outcome="error"
        ).inc()
        await _record(
            hub,
            request_id=request_id,
            client_id=client,
            outcome=type(exc).__name__[:64],
            task_id=task_id,
            mode_requested=mode,
        )

    @router.post(
        "/v1/diagnose",
        openapi_extra=DIAGNOSE_BODY,
        response_model=None,
        responses=DIAGNOSE_RESPONSES,
    )
    async def diagnose(request: Request) -> Response:
        """Diagnoses one image with the task's verified specialists and the generalist."""
        request_id = uuid.uuid4().hex
        request.state.request_id = request_id
        client = "unauthenticated"
        task_id = None
        mode = None
        try:
            client = _authenticate(hub, request, "/v1/diagnose")
            parsed, image, media_type = await parse_request(request, in_pool)
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
            await refused(exc, request_id, client, task_id, mode)
            raise
        response = diagnosis.response
        _observe(hub, response)
        await _record(
            hub,
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

    return router


def tasks_document(hub: Hub) -> dict[str, Any]:
    """What ``/v1/tasks`` answers: every task in service, its specialists, adapter and policy."""
    catalog = hub.catalog
    engine = hub.engine
    calibrations = engine.calibrations.known() if engine is not None else {}
    adapters = engine.adapters if engine is not None else {}

    def adapter(task: str) -> dict[str, Any] | None:
        if task not in adapters:
            return None
        served = adapters[task]
        return {
            "name": served.name,
            "bundle_digest": served.digest,
            "source": served.source,
            "endorsed_by": list(served.endorsed_by),
            "card": served.card.model_dump(mode="json"),
        }

    def entry(task: str, group: Any) -> dict[str, Any]:
        in_service = engine.policy_in_service(task) if engine is not None else None
        return {
            "task": catalog.task_spec(task).model_dump(mode="json"),
            "arbitration_policy": in_service.model_dump(mode="json") if in_service else None,
            "adapter": adapter(task),
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

    return {
        "registry_snapshot_version": catalog.snapshot_version,
        "synced_at": catalog.synced_at.isoformat() if catalog.synced_at else None,
        "tasks": [entry(task, group) for task, group in catalog.specialists.items()],
    }


def tasks_router(hub: Hub) -> APIRouter:
    """``GET /v1/tasks``: what the hub serves."""
    router = APIRouter()

    @router.get("/v1/tasks", response_model=None, responses=TASKS_RESPONSES)
    async def tasks(request: Request) -> Response:
        """Tasks in service, with their verified specialists and the sites that published them."""
        _authenticate(hub, request, "/v1/tasks")
        return JSONResponse(tasks_document(hub))

    return router


def readiness_document(hub: Hub) -> dict[str, Any]:
    """What ``/readyz`` answers: the tasks loaded, the last sync, the generalist."""
    catalog = hub.catalog
    last = hub.last_sync
    return {
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


_JSON_OBJECT = {"content": {"application/json": {"schema": {"type": "object"}}}}


def status_router(hub: Hub) -> APIRouter:
    """``/healthz``, ``/readyz`` and ``/metrics``: for orchestrators and Prometheus."""
    router = APIRouter()

    @router.get(
        "/healthz", responses={200: {"description": "The process answers.", **_JSON_OBJECT}}
    )
    async def healthz() -> dict[str, str]:
        """Liveness: the process answers."""
        return {"status": "ok"}

    @router.get(
        "/readyz",
        response_model=None,
        responses={
            200: {"description": "At least one task is served.", **_JSON_OBJECT},
            503: {"description": "No verified specialist is loaded yet.", **_JSON_OBJECT},
        },
    )
    async def readyz() -> JSONResponse:
        """Readiness: which tasks have a verified specialist loaded (503 while none)."""
        body = readiness_document(hub)
        return JSONResponse(body, status_code=200 if body["ready"] else 503)

    @router.get(
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
        return Response(hub.metrics.render(), media_type="text/plain; version=0.0.4")

    return router
