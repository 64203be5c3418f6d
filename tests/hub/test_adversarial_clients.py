"""What an adversarial client found, each fixed and held here, against a real ``gsco hub serve``.

One error shape for every refusal (framework errors included), strict wire
types, 413 for an oversized chunked body, 408 for a half-sent one, API keys
revoked without a restart, CPU work off the event loop, and a bounded
schemathesis run over the OpenAPI document (no 5xx, no schema violation).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from hub import verify_access_log
from hub.web import create_client_key
from protocol import ErrorResponse
from tests.conftest import SiteKeys
from tests.hub.conftest import png, publish
from tests.servers import GSCO, start_hub, start_registry

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, site_a: SiteKeys) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("hardening")
    registry = start_registry(root / "registry")
    with registry.client() as client:
        client.enroll("site-a", site_a.public.pem)
    publish(registry, site_a, root)
    keys = root / "clients.json"
    viewer = create_client_key(keys, "radiology-viewer")
    other = create_client_key(keys, "research-app")
    hub = start_hub(
        registry,
        root / "hub",
        "--api-keys", str(keys),
        "--no-generalist",
        "--body-timeout", "2",
        "--header-timeout", "2",
        "--max-body-mb", "2",
        "--max-queue", "64",
    )  # fmt: skip
    yield {"hub": hub, "keys": keys, "viewer": viewer, "other": other, "root": root}
    hub.stop()
    registry.stop()


def _headers(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _error_body(response: httpx.Response) -> ErrorResponse:
    assert response.headers["content-type"].startswith("application/json"), response.text
    return ErrorResponse.parse(response.content)  # strict: exactly the error schema


def _post(world: dict[str, Any], **kwargs: Any) -> httpx.Response:
    kwargs.setdefault("headers", _headers(world["viewer"]))
    return httpx.post(world["hub"].url + "/v1/diagnose", timeout=30, **kwargs)


# -- one error shape --------------------------------------------------------------------


def test_framework_errors_have_the_error_shape(world: dict[str, Any]) -> None:
    url = world["hub"].url
    missing = httpx.get(url + "/v1/nothing-here", timeout=10)
    assert missing.status_code == 404
    assert _error_body(missing).error.type == "NotFoundError"
    wrong_method = httpx.get(url + "/v1/diagnose", timeout=10)
    assert wrong_method.status_code == 405
    assert _error_body(wrong_method).error.type == "MethodNotAllowedError"


def test_multipart_limits_answer_in_the_error_shape(world: dict[str, Any]) -> None:
    fields = {f"field{i}": "x" for i in range(20)}  # over the 10-field limit
    answer = _post(
        world,
        files={"image": ("x.png", png(), "image/png")},
        data={"task_id": "pneumonia-cxr", **fields},
    )
    assert answer.status_code == 400
    assert "multipart" in _error_body(answer).error.message


def test_deeply_nested_json_is_a_400_not_a_500(world: dict[str, Any]) -> None:
    body = "[" * 100_000 + "]" * 100_000
    answer = _post(
        world,
        content=body.encode(),
        headers={**_headers(world["viewer"]), "content-type": "application/json"},
    )
    assert answer.status_code == 400, answer.text
    _error_body(answer)


@pytest.mark.parametrize(
    "document",
    [
        {"top_k": True},
        {"top_k": "5"},
        {"top_k": 5.0},
        {"fhir": "yes"},
        {"fhir": 1},
    ],
    ids=["top_k-true", "top_k-string", "top_k-float", "fhir-string", "fhir-int"],
)
def test_wire_types_are_strict(world: dict[str, Any], document: dict[str, Any]) -> None:
    import base64

    request = {
        "task_id": "pneumonia-cxr",
        "mode": "ensemble",
        "image": {"media_type": "image/png", "data_base64": base64.b64encode(png()).decode()},
        **document,
    }
    answer = _post(world, json=request)
    assert answer.status_code == 400, answer.text
    assert _error_body(answer).error.type == "BadRequestError"


def test_form_fields_are_strict_too(world: dict[str, Any]) -> None:
    for field, value in (("top_k", "abc"), ("top_k", "5.5"), ("fhir", "perhaps")):
        answer = _post(
            world,
            files={"image": ("x.png", png(), "image/png")},
            data={"task_id": "pneumonia-cxr", "mode": "ensemble", field: value},
        )
        assert answer.status_code == 400, (field, value, answer.text)
        _error_body(answer)
    answer = _post(
        world,
        files={"image": ("x.png", png(), "image/png")},
        data={"task_id": "pneumonia-cxr", "mode": "ensemble", "top_k": "3", "fhir": "false"},
    )
    assert answer.status_code == 200, answer.text


def test_an_oversized_chunked_body_is_413(world: dict[str, Any]) -> None:
    def chunks() -> Iterator[bytes]:
        for _ in range(40):  # 4 MB against a 2 MB limit, no Content-Length
            yield b"{" + b" " * (100 * 1024)

    answer = _post(
        world,
        content=chunks(),
        headers={**_headers(world["viewer"]), "content-type": "application/json"},
    )
    assert answer.status_code == 413, answer.text
    assert _error_body(answer).error.type == "PayloadTooLargeError"


def _until_closed(connection: socket.socket) -> bytes:
    """Everything the hub sends until it closes the connection."""
    data = b""
    while piece := connection.recv(65536):
        data += piece
    return data


def test_a_half_sent_body_is_cut_off_with_408(world: dict[str, Any]) -> None:
    host, port = world["hub"].url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=20) as connection:
        connection.sendall(
            b"POST /v1/diagnose HTTP/1.1\r\nHost: x\r\n"
            + f"Authorization: Bearer {world['viewer']}\r\n".encode()
            + b'Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{"task'
        )
        started = time.monotonic()
        reply = _until_closed(connection)
        waited = time.monotonic() - started
    assert reply.startswith(b"HTTP/1.1 408"), reply[:200]
    assert waited < 15  # the body timeout is 2 s; without one the hub waits forever
    _, _, body = reply.partition(b"\r\n\r\n")
    assert ErrorResponse.parse(body).error.type == "RequestTimeoutError"


@pytest.mark.parametrize(
    "sent",
    [b"", b"POST /v1/diagnose HTTP/1.1\r\nHost: x\r\n"],
    ids=["silent", "half-sent-headers"],
)
def test_a_connection_that_never_completes_its_headers_is_closed(
    world: dict[str, Any], sent: bytes
) -> None:
    host, port = world["hub"].url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=20) as connection:
        connection.sendall(sent)
        started = time.monotonic()
        assert connection.recv(65536) == b""  # closed by the hub, not by our timeout
        assert time.monotonic() - started < 15  # header timeout 2 s (none at all before)
    # Kept-alive connections get the same deadline for their next request.
    with socket.create_connection((host, int(port)), timeout=20) as connection:
        connection.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        reply = b""
        while b'{"status":"ok"}' not in reply:
            piece = connection.recv(65536)
            assert piece, reply
            reply += piece
        assert reply.startswith(b"HTTP/1.1 200")
        connection.sendall(b"GET /hea")
        started = time.monotonic()
        assert _until_closed(connection) == b""
        assert time.monotonic() - started < 15


# -- API keys ----------------------------------------------------------------------------


def test_a_removed_key_is_refused_within_two_seconds_without_a_restart(
    world: dict[str, Any],
) -> None:
    image = {"image": ("x.png", png(1), "image/png")}
    form = {"task_id": "pneumonia-cxr", "mode": "ensemble"}
    other = _headers(world["other"])
    assert _post(world, files=image, data=form, headers=other).status_code == 200
    removed = subprocess.run(
        [GSCO, "hub", "remove-client", "research-app", "--keys", str(world["keys"])],
        capture_output=True,
        text=True,
        check=False,
    )
    assert removed.returncode == 0, removed.stderr
    started = time.monotonic()
    while True:
        answer = _post(world, files=image, data=form, headers=other)
        if answer.status_code == 401:
            break
        assert time.monotonic() - started < 2.0, "the removed key still works after 2 s"
        time.sleep(0.1)
    assert _error_body(answer).error.type == "AuthenticationError"
    # Other clients are unaffected, and the refusal is in the access log and the metrics.
    assert _post(world, files=image, data=form).status_code == 200
    records = verify_access_log(world["hub"].state_dir / "access.jsonl")
    assert any(
        r.client_id == "unauthenticated" and r.outcome == "AuthenticationError" for r in records
    )
    metrics = httpx.get(world["hub"].url + "/metrics", timeout=10).text
    assert 'gsco_hub_auth_failures_total{endpoint="/v1/diagnose"}' in metrics
    # Removing a client that is not there says so.
    again = subprocess.run(
        [GSCO, "hub", "remove-client", "research-app", "--keys", str(world["keys"])],
        capture_output=True,
        text=True,
        check=False,
    )
    assert again.returncode != 0
    assert "has no key" in again.stderr


def test_sighup_reloads_the_key_file(tmp_path: Path) -> None:
    from hub.web import KeyFile

    keys = tmp_path / "clients.json"
    key = create_client_key(keys, "viewer")
    watched = KeyFile(keys, check_interval_s=3600.0)  # never checks by itself here
    assert watched.identify(key) == "viewer"
    copy = tmp_path / "copy.json"
    shutil.copy(keys, copy)
    from hub.web import remove_client_key

    remove_client_key(keys, "viewer")
    assert watched.identify(key) == "viewer"  # not reloaded yet
    previous = signal.signal(signal.SIGHUP, lambda *_: watched.reload())
    try:
        os.kill(os.getpid(), signal.SIGHUP)
        assert watched.identify(key) is None
    finally:
        signal.signal(signal.SIGHUP, previous)
    # A malformed file keeps the keys in service and says why.
    shutil.copy(copy, keys)
    assert watched.reload()
    assert watched.identify(key) == "viewer"
    keys.write_text("{not json")
    assert not watched.reload()
    assert watched.identify(key) == "viewer"


# -- the event loop stays free ---------------------------------------------------------------


def test_parsing_decoding_and_preprocessing_run_in_the_worker_pool(
    tmp_path: Path, site_a: SiteKeys, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The heavy steps of a request are called from the hub's pool, never the loop's thread."""
    import threading

    import hub._engine as engine_module
    from protocol import DiagnoseRequest

    threads: dict[str, set[str]] = {}

    def spy(name: str, function: Any) -> Any:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            threads.setdefault(name, set()).add(threading.current_thread().name)
            return function(*args, **kwargs)

        return wrapper

    monkeypatch.setattr(
        engine_module, "decode_image_bytes", spy("decode", engine_module.decode_image_bytes)
    )
    monkeypatch.setattr(engine_module, "preprocess", spy("preprocess", engine_module.preprocess))
    original_parse = DiagnoseRequest.parse.__func__  # type: ignore[attr-defined]
    monkeypatch.setattr(DiagnoseRequest, "parse", classmethod(spy("parse", original_parse)))
    answer = _in_process_post(tmp_path, site_a)
    assert answer.status_code == 200, answer.text
    loop_thread = threading.main_thread().name
    assert set(threads) == {"decode", "parse", "preprocess"}
    for name, seen in threads.items():
        assert loop_thread not in seen, f"{name} ran on the event loop's thread"
        assert all(t.startswith("gsco-hub") for t in seen), (name, seen)


def _in_process_post(
    tmp_path: Path, site: SiteKeys, prepare: Any = None, *, raise_app_exceptions: bool = True
) -> httpx.Response:
    """One JSON diagnosis through an in-process hub (its lifespan run) over a real registry.

    ``prepare(hub)`` runs once the hub has started, before the request.
    """
    import asyncio
    import base64

    from hub.web import Hub, create_app
    from tests.hub.conftest import hub_config

    registry = start_registry(tmp_path / "registry")
    try:
        with registry.client() as client:
            client.enroll("site-a", site.public.pem)
        publish(registry, site, tmp_path)
        hub = Hub(hub_config(registry, tmp_path / "hub"))

        async def run() -> httpx.Response:
            app = create_app(hub)
            lifespan = app.app.router.lifespan_context(app.app)
            transport = httpx.ASGITransport(app=app, raise_app_exceptions=raise_app_exceptions)
            client = httpx.AsyncClient(transport=transport, base_url="http://hub")
            async with lifespan, client as http:
                if prepare is not None:
                    prepare(hub)
                return await http.post(
                    "/v1/diagnose",
                    json={
                        "task_id": "pneumonia-cxr",
                        "mode": "ensemble",
                        "image": {
                            "media_type": "image/png",
                            "data_base64": base64.b64encode(png()).decode(),
                        },
                    },
                )

        return asyncio.run(run())
    finally:
        registry.stop()


# -- OpenAPI ------------------------------------------------------------------------------


def test_the_openapi_document_is_complete(world: dict[str, Any]) -> None:
    document = httpx.get(world["hub"].url + "/openapi.json", timeout=10).json()
    schemas = document["components"]["schemas"]

    def refs(node: Any) -> Iterator[str]:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "$ref":
                    yield value
                else:
                    yield from refs(value)
        elif isinstance(node, list):
            for item in node:
                yield from refs(item)

    for ref in refs(document):
        assert ref.startswith("#/components/schemas/"), ref
        assert ref.rsplit("/", 1)[1] in schemas, f"{ref} does not resolve"
    diagnose = document["paths"]["/v1/diagnose"]["post"]
    assert {"200", "400", "401", "404", "413", "415", "422", "503"} <= set(diagnose["responses"])
    for status, response in diagnose["responses"].items():
        if status != "200":
            schema = response["content"]["application/json"]["schema"]
            assert schema == {"$ref": "#/components/schemas/ErrorResponse"}
    assert diagnose["security"] == [{"bearerAuth": []}, {"apiKeyHeader": []}]
    assert set(document["components"]["securitySchemes"]) == {"bearerAuth", "apiKeyHeader"}
    metrics = document["paths"]["/metrics"]["get"]["responses"]["200"]["content"]
    assert list(metrics) == ["text/plain"]
    served = httpx.get(world["hub"].url + "/metrics", timeout=10)
    assert served.headers["content-type"].startswith("text/plain")


def test_a_bounded_schemathesis_run_finds_no_5xx_and_no_schema_violation(
    world: dict[str, Any], tmp_path: Path
) -> None:
    """schemathesis against the real hub: every documented operation, fuzzed and covered."""
    schemathesis = shutil.which("schemathesis") or str(Path(GSCO).with_name("schemathesis"))
    url = world["hub"].url
    result = subprocess.run(
        [
            schemathesis, "run", f"{url}/openapi.json",
            "--checks", "not_a_server_error,status_code_conformance,content_type_conformance,"
            "response_schema_conformance,response_headers_conformance",
            "--header", f"Authorization: Bearer {world['viewer']}",
            "--max-examples", "40",
            "--phases", "examples,coverage,fuzzing",
            "--seed", "20261201",
            "--workers", "1",
            "--request-timeout", "30",
            "--report", "json",
            "--report-json-path", str(tmp_path / "schemathesis.json"),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        cwd=tmp_path,
        env={**os.environ, "NO_COLOR": "1", "SCHEMATHESIS_TELEMETRY": "false"},
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-6000:]
    print(result.stdout[-3000:])
    report = json.loads((tmp_path / "schemathesis.json").read_text())
    assert report, "schemathesis wrote no report"


def test_a_bug_is_a_logged_500_in_the_error_shape_not_a_400(
    tmp_path: Path, site_a: SiteKeys, caplog: pytest.LogCaptureFixture
) -> None:
    """An internal ValueError used to be answered 400 by a blanket catch."""

    async def broken(**_: Any) -> Any:
        raise ValueError("an internal invariant broke")

    def break_engine(hub: Any) -> None:
        hub.engine.diagnose = broken

    with caplog.at_level("ERROR"):
        answer = _in_process_post(tmp_path, site_a, break_engine, raise_app_exceptions=False)
    assert answer.status_code == 500
    body = _error_body(answer)
    assert body.error.type == "InternalError"
    assert "invariant" not in body.error.message  # no internals to the client ...
    assert any(
        r.exc_info and "invariant" in str(r.exc_info[1]) for r in caplog.records
    )  # ... all of them, with the traceback, in the log
