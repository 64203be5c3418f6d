"""The OpenAPI document: every status, the error schema, the API-key schemes."""

from __future__ import annotations

import copy
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic.json_schema import models_json_schema

from hub.web._fhir import FHIR_MEDIA_TYPE
from protocol import DiagnoseRequest, DiagnoseResponse, ErrorResponse, Mode

__all__ = ["DIAGNOSE_BODY", "DIAGNOSE_RESPONSES", "TASKS_RESPONSES", "openapi_document"]


_ERROR_REF = {"$ref": "#/components/schemas/ErrorResponse"}


def _error_doc(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ERROR_REF}}}


DIAGNOSE_RESPONSES: dict[int | str, dict[str, Any]] = {
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
TASKS_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "Tasks in service and their verified specialists.",
        "content": {"application/json": {"schema": {"type": "object"}}},
    },
    401: _error_doc("A missing or unknown API key."),
    500: _error_doc("A bug in the hub."),
}
DIAGNOSE_BODY: dict[str, Any] = {
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


def openapi_document(app: FastAPI, anonymous: bool, task_ids: list[str]) -> dict[str, Any]:
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
