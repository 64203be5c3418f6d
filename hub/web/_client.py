"""A client of the hub's HTTP API (what ``gsco diagnose`` and the simulations use)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx

from hub.errors import HubRequestError, HubUnavailableError
from protocol import DiagnoseResponse, GscoError, MediaType, Mode

__all__ = ["HubClient"]

_SUFFIX_TYPES = {
    ".png": MediaType.PNG,
    ".jpg": MediaType.JPEG,
    ".jpeg": MediaType.JPEG,
    ".dcm": MediaType.DICOM,
    ".npy": MediaType.NPY,
}


class HubClient:
    """Calls one hub (``http(s)://host:port``) with one API key."""

    def __init__(
        self,
        url: str,
        api_key: str | None = None,
        *,
        timeout_s: float = 120.0,
        verify: bool | str = True,
    ) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.Client(
            base_url=url.rstrip("/"), headers=headers, timeout=timeout_s, verify=verify
        )
        self.url = url

    def __enter__(self) -> HubClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Closes connections."""
        self._http.close()

    def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise HubUnavailableError(f"cannot reach the hub at {self.url}: {exc}") from exc
        if response.status_code >= 400:
            try:
                error = response.json()["error"]
                error_type, message = str(error["type"]), str(error["message"])
            except (ValueError, KeyError, TypeError):
                error_type, message = "HTTPError", response.text[:300]
            retry = response.headers.get("retry-after")
            raise HubRequestError(
                response.status_code, error_type, message, float(retry) if retry else None
            )
        return response

    def diagnose(
        self,
        image: bytes | Path,
        task_id: str,
        *,
        mode: Mode = Mode.GSCO,
        top_k: int = 5,
        media_type: MediaType | None = None,
    ) -> DiagnoseResponse:
        """Diagnoses one image (a file, or its bytes with ``media_type``).

        Raises:
            HubRequestError: the hub refused the request (4xx/5xx with its reason).
            HubUnavailableError: the hub cannot be reached.
        """
        if isinstance(image, Path):
            media_type = media_type or _SUFFIX_TYPES.get(image.suffix.lower())
            name, data = image.name, image.read_bytes()
        else:
            name, data = "image", image
        content_type = media_type.value if media_type else "application/octet-stream"
        response = self._send(
            "POST",
            "/v1/diagnose",
            data={"task_id": task_id, "mode": mode.value, "top_k": str(top_k)},
            files={"image": (name, data, content_type)},
        )
        try:
            return DiagnoseResponse.parse(response.content)
        except GscoError as exc:
            raise HubRequestError(
                response.status_code, "InvalidResponse", f"unexpected response: {exc}"
            ) from exc

    def tasks(self) -> dict[str, Any]:
        """``GET /v1/tasks``."""
        result: dict[str, Any] = json.loads(self._send("GET", "/v1/tasks").content)
        return result

    def ready(self) -> dict[str, Any]:
        """``GET /readyz`` (also when it answers 503)."""
        try:
            response = self._http.get("/readyz")
        except httpx.HTTPError as exc:
            raise HubUnavailableError(f"cannot reach the hub at {self.url}: {exc}") from exc
        result: dict[str, Any] = response.json()
        return result
