"""Reading a diagnosis request: JSON or multipart, the API key, the image's media type."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import Request
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.formparsers import MultiPartException

from hub.errors import BadRequestError
from protocol import DiagnoseRequest, GscoError, MediaType, Mode

__all__ = ["api_key", "parse_request"]


def api_key(request: Request) -> str | None:
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


async def parse_request(
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
