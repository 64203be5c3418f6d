"""The HTTP API of a real ``gsco hub serve`` process, over a real registry on loopback.

The generalist here is down on purpose (a closed port): these tests cover the
API, its errors and its fallback; the real vLLM generalist is exercised in
``test_end_to_end.py``.
"""

from __future__ import annotations

import base64
import io
import json
import socket
import subprocess
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image
from pydicom.data import get_testdata_file

from hub import verify_access_log
from hub.web import create_client_key
from protocol import DiagnoseResponse, free_loopback_port
from tests.conftest import SiteKeys
from tests.hub.conftest import png, post_image, publish
from tests.servers import GSCO, RunningHub, start_hub, start_registry

pytestmark = pytest.mark.slow
#: site-b's bundle was trained with DP-SGD; the hub must show the budget.
DP_BUDGET = {
    "epsilon": 7.98,
    "delta": 2e-5,
    "accountant": "opacus-rdp",
    "max_grad_norm": 1.0,
    "noise_multiplier": 0.81,
}


@pytest.fixture(scope="module")
def world(
    tmp_path_factory: pytest.TempPathFactory, site_a: SiteKeys, site_b: SiteKeys
) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("api")
    registry = start_registry(root / "registry")
    with registry.client() as client:
        client.enroll("site-a", site_a.public.pem)
        client.enroll("site-b", site_b.public.pem)
    digests = {
        publish(registry, site_a, root),
        publish(registry, site_b, root, training_privacy=DP_BUDGET),
    }
    keys = root / "clients.json"
    key = create_client_key(keys, "radiology-viewer")
    hub = start_hub(
        registry,
        root / "hub",
        "--api-keys",
        str(keys),
        "--generalist-url",
        f"http://127.0.0.1:{free_loopback_port()}/v1",
        "--max-body-mb",
        "0.25",
        "--max-image-megapixels",
        "1",
    )
    yield {"registry": registry, "hub": hub, "key": key, "digests": digests, "root": root}
    hub.stop()
    registry.stop()


def _http(world: dict[str, Any], key: str | None = "valid") -> httpx.Client:
    token = world["key"] if key == "valid" else key
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.Client(base_url=world["hub"].url, headers=headers, timeout=60)


def _post(world: dict[str, Any], image: bytes, content_type: str = "image/png", **fields: Any):
    data = {"task_id": "pneumonia-cxr", **{k: str(v) for k, v in fields.items()}}
    with _http(world) as http:
        return http.post("/v1/diagnose", data=data, files={"image": ("x", image, content_type)})


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def test_probes_and_docs(world: dict[str, Any]) -> None:
    with _http(world, key=None) as http:
        assert http.get("/healthz").json() == {"status": "ok"}
        ready = http.get("/readyz")
        assert ready.status_code == 200
        assert ready.json()["tasks"] == {"pneumonia-cxr": 2}
        assert http.get("/docs").status_code == 200
        schema = http.get("/openapi.json").json()
        body = schema["paths"]["/v1/diagnose"]["post"]["requestBody"]["content"]
        assert {"multipart/form-data", "application/json"} <= set(body)


def test_the_health_command_the_hub_image_runs(world: dict[str, Any]) -> None:
    url = world["hub"].url
    for probe in ([], ["--ready"]):
        asked = subprocess.run(
            [GSCO, "hub", "health", "--hub", url, *probe], capture_output=True, text=True
        )
        assert asked.returncode == 0, asked.stderr
        assert " 200" in asked.stdout
    closed = f"http://127.0.0.1:{free_loopback_port()}"
    down = subprocess.run(
        [GSCO, "hub", "health", "--hub", closed, "--timeout", "2"], capture_output=True, text=True
    )
    assert down.returncode == 1
    assert down.stderr.startswith(f"error: hub {closed}/healthz: ConnectError")


def test_tasks_lists_specialists_and_sites(world: dict[str, Any]) -> None:
    with _http(world) as http:
        tasks = http.get("/v1/tasks").json()["tasks"]
    (task,) = tasks
    assert task["task"]["labels"] == ["normal", "pneumonia"]
    assert task["sites"] == ["site-a", "site-b"]
    assert {s["bundle_digest"] for s in task["specialists"]} == world["digests"]
    privacy = {s["site_id"]: s["training_privacy"] for s in task["specialists"]}
    assert privacy == {"site-a": None, "site-b": DP_BUDGET}


@pytest.mark.parametrize("mode", ["ensemble", "voting"])
def test_specialist_only_modes(world: dict[str, Any], mode: str) -> None:
    answer = _post(world, png(1), mode=mode)
    assert answer.status_code == 200, answer.text
    response = DiagnoseResponse.parse(answer.content)
    assert response.mode_used.value == mode
    assert not response.degraded
    assert response.label in ("normal", "pneumonia")
    assert response.scores is not None
    assert sum(response.scores.values()) == pytest.approx(1.0)
    assert {s.bundle_digest for s in response.specialists} == world["digests"]
    budgets = {s.site_id: (s.dp_epsilon, s.dp_delta) for s in response.specialists}
    assert budgets == {"site-a": (None, None), "site-b": (7.98, 2e-5)}
    assert len(response.moed) == 2
    assert response.timings.specialists_ms is not None
    assert answer.headers["x-request-id"] == response.request_id


@pytest.mark.parametrize("mode", ["gsco", "moed", "rad", "generalist"])
def test_a_down_generalist_degrades_to_ensemble(world: dict[str, Any], mode: str) -> None:
    answer = _post(world, png(2), mode=mode)
    assert answer.status_code == 200, answer.text
    response = DiagnoseResponse.parse(answer.content)
    assert response.mode_requested.value == mode
    assert response.mode_used.value == "ensemble"
    assert response.degraded
    assert any("generalist" in w for w in response.warnings)
    if mode in ("gsco", "rad"):
        assert response.rad  # retrieval still ran and is reported
        assert {c.site_id for c in response.rad} <= {"site-a", "site-b"}


def test_json_with_base64_and_other_encodings(world: dict[str, Any]) -> None:
    dicom = Path(get_testdata_file("CT_small.dcm")).read_bytes()
    grey = np.random.default_rng(0).integers(0, 256, (40, 30), dtype=np.uint8)
    jpeg = io.BytesIO()
    Image.fromarray(grey).save(jpeg, "JPEG")
    for media_type, data in [
        ("image/png", png(3, channels=3)),
        ("image/jpeg", jpeg.getvalue()),
        ("application/dicom", dicom),
        ("application/x-npy", _npy(grey)),
        ("application/x-npy", _npy(grey.astype(np.float32) / 255.0)),
    ]:
        body = {
            "task_id": "pneumonia-cxr",
            "mode": "ensemble",
            "image": {"media_type": media_type, "data_base64": base64.b64encode(data).decode()},
        }
        with _http(world) as http:
            answer = http.post("/v1/diagnose", json=body)
        assert answer.status_code == 200, (media_type, answer.text)
    dicom_answer = _post(world, dicom, "application/dicom", mode="voting")
    assert dicom_answer.status_code == 200, dicom_answer.text


def test_fhir_diagnostic_report(world: dict[str, Any]) -> None:
    answer = _post(world, png(4), mode="ensemble", fhir="true")
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("application/fhir+json")
    report = answer.json()
    assert report["resourceType"] == "DiagnosticReport"
    assert report["status"] == "preliminary"
    assert report["conclusion"] in ("normal", "pneumonia")
    urls = {e["url"] for e in report["extension"]}
    assert {"urn:gsco:mode-used", "urn:gsco:specialist", "urn:gsco:image-sha256"} <= urls
    from fhir.resources.R4B.diagnosticreport import DiagnosticReport

    DiagnosticReport.model_validate(report)  # a valid R4B resource


def _big_png() -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (2000, 1000)).save(buffer, "PNG")  # 2 megapixels, compresses to a few KB
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("request_kwargs", "status", "error_type"),
    [
        ({"task_id": "brain-mri"}, 404, "UnknownTaskError"),
        ({"image": b"\x89PNG\r\n\x1a\n not really a png"}, 422, "ImageDecodeError"),
        ({"image": b"GIF89a"}, 422, "ImageDecodeError"),
        ({"image": b"hello", "content_type": "text/plain"}, 415, "BadRequestError"),
        ({"content_type": "application/dicom"}, 422, "ImageDecodeError"),  # a PNG declared DICOM
        ({"image": b"x" * 300_000}, 413, "PayloadTooLargeError"),
        ({"image": "big"}, 422, "ImageDecodeError"),
        ({"mode": "telepathy"}, 400, "BadRequestError"),
        ({"top_k": "0"}, 400, "BadRequestError"),
        ({"key": "gsco_wrong"}, 401, "AuthenticationError"),
        ({"key": None}, 401, "AuthenticationError"),
    ],
)
def test_bad_requests_get_clear_4xx(
    world: dict[str, Any], request_kwargs: dict[str, Any], status: int, error_type: str
) -> None:
    image = request_kwargs.get("image", png(5))
    if image == "big":
        image = _big_png()
    fields = {
        "task_id": request_kwargs.get("task_id", "pneumonia-cxr"),
        "mode": request_kwargs.get("mode", "ensemble"),
    }
    if "top_k" in request_kwargs:
        fields["top_k"] = request_kwargs["top_k"]
    with _http(world, key=request_kwargs.get("key", "valid")) as http:
        answer = http.post(
            "/v1/diagnose",
            data=fields,
            files={"image": ("x", image, request_kwargs.get("content_type", "image/png"))},
        )
    assert answer.status_code == status, answer.text
    error = answer.json()["error"]
    assert error["type"] == error_type
    assert error["message"]
    assert "Traceback" not in answer.text


@pytest.mark.parametrize(
    ("body", "headers", "status"),
    [
        (b"{not json", {"content-type": "application/json"}, 400),
        (b'{"task_id": "pneumonia-cxr"}', {"content-type": "application/json"}, 400),
        (b"raw bytes", {"content-type": "application/octet-stream"}, 415),
        (b"", {}, 415),
    ],
)
def test_malformed_bodies(
    world: dict[str, Any], body: bytes, headers: dict[str, str], status: int
) -> None:
    with _http(world) as http:
        answer = http.post("/v1/diagnose", content=body, headers=headers)
    assert answer.status_code == status, answer.text
    assert answer.json()["error"]["message"]


def test_the_server_survives_and_logs_every_request(world: dict[str, Any]) -> None:
    assert _post(world, png(6), mode="ensemble").status_code == 200
    log = world["hub"].state_dir / "access.jsonl"
    records = verify_access_log(log)
    assert len(records) >= 10
    ok = [r for r in records if r.outcome == "ok"]
    refused = {r.outcome for r in records if r.outcome != "ok"}
    assert {"UnknownTaskError", "ImageDecodeError"} <= refused
    assert {r.client_id for r in records} <= {"radiology-viewer", "unauthenticated"}
    # Failed authentications are logged too, under no client's name.
    failed_auth = [r for r in records if r.client_id == "unauthenticated"]
    assert failed_auth
    assert all(r.outcome == "AuthenticationError" for r in failed_auth)
    assert all(len(r.specialist_digests) == 2 for r in ok)
    assert all(r.image_sha256 for r in ok)
    text = log.read_text()
    assert base64.b64encode(png(6)).decode()[:40] not in text  # never the image itself
    with _http(world, key=None) as http:
        assert http.get("/healthz").status_code == 200
        metrics = http.get("/metrics").text
    assert (
        'gsco_hub_requests_total{mode_requested="ensemble",mode_used="ensemble",outcome="ok"}'
        in (metrics)
    )
    assert 'gsco_hub_errors_total{type="UnknownTaskError"}' in metrics
    assert 'gsco_hub_auth_failures_total{endpoint="/v1/diagnose"}' in metrics
    assert 'gsco_hub_specialists_loaded{task="pneumonia-cxr"} 2.0' in metrics
    assert 'gsco_hub_stage_seconds_count{stage="specialists"}' in metrics


def test_diagnose_command(world: dict[str, Any], tmp_path: Path) -> None:
    image = tmp_path / "chest.png"
    image.write_bytes(png(7))
    env_key = {"GSCO_API_KEY": world["key"]}
    import os

    base = [GSCO, "diagnose", "--hub", world["hub"].url, "--task", "pneumonia-cxr"]
    table = subprocess.run(
        [*base, "--mode", "voting", str(image)],
        capture_output=True,
        text=True,
        env={**os.environ, **env_key},
        check=False,
    )
    assert table.returncode == 0, table.stderr
    assert "chest.png" in table.stdout
    assert "voting" in table.stdout
    as_json = subprocess.run(
        [*base, "--json", "--mode", "ensemble", str(image), str(image)],
        capture_output=True,
        text=True,
        env={**os.environ, **env_key},
        check=False,
    )
    assert as_json.returncode == 0, as_json.stderr
    lines = as_json.stdout.strip().splitlines()
    assert len(lines) == 2
    assert all(DiagnoseResponse.parse(line.encode()).label for line in lines)
    wrong = subprocess.run(
        [*base, "--api-key", "gsco_wrong", str(image)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert wrong.returncode == 1
    assert wrong.stderr.startswith("error: the hub answered 401 AuthenticationError")
    assert "Traceback" not in wrong.stderr


def test_a_full_queue_answers_503_with_retry_after(tmp_path: Path, site_a: SiteKeys) -> None:
    """One slot, no queue, and a generalist that accepts connections and never answers."""
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        silent.settimeout(0.2)
        while not stop.is_set():
            try:
                accepted.append(silent.accept()[0])
            except TimeoutError:
                continue

    acceptor = threading.Thread(target=accept)
    acceptor.start()
    registry = start_registry(tmp_path / "registry")
    hub: RunningHub | None = None
    try:
        with registry.client() as client:
            client.enroll("site-a", site_a.public.pem)
        publish(registry, site_a, tmp_path)
        hub = start_hub(
            registry,
            tmp_path / "hub",
            "--allow-anonymous",
            "--generalist-url",
            f"http://127.0.0.1:{silent.getsockname()[1]}/v1",
            "--generalist-timeout",
            "3",
            "--max-in-flight",
            "1",
            "--max-queue",
            "0",
        )

        def ask(_: int) -> httpx.Response:
            with httpx.Client(base_url=hub.url, timeout=60) as http:  # type: ignore[union-attr]
                return http.post(
                    "/v1/diagnose",
                    data={"task_id": "pneumonia-cxr", "mode": "gsco"},
                    files={"image": ("x", png(8), "image/png")},
                )

        with ThreadPoolExecutor(3) as pool:
            answers = list(pool.map(ask, range(3)))
        statuses = sorted(a.status_code for a in answers)
        assert statuses[0] == 200
        assert 503 in statuses
        full = next(a for a in answers if a.status_code == 503)
        assert full.headers["retry-after"] == "2"
        assert full.json()["error"]["type"] == "OverloadedError"
        slow = DiagnoseResponse.parse(next(a for a in answers if a.status_code == 200).content)
        assert slow.degraded
        assert "did not answer within 3 s" in slow.warnings[0]
    finally:
        stop.set()
        acceptor.join()
        for connection in accepted:
            connection.close()
        silent.close()
        if hub is not None:
            hub.stop()
        registry.stop()


def test_serve_refuses_unsafe_configurations(tmp_path: Path) -> None:
    root = tmp_path / "root.json"
    root.write_text(json.dumps({}))
    base = [GSCO, "hub", "serve", "--registry", "127.0.0.1:1", "--trusted-root", str(root)]
    for extra, message in [
        ([], "no API key file"),
        (["--allow-anonymous", "--host", "0.0.0.0"], "refusing to serve API keys over plain HTTP"),
        (["--allow-anonymous", "--tls-cert", str(root)], "both --tls-cert and --tls-key"),
        (["--api-keys", str(tmp_path / "missing.json")], "not found"),
    ]:
        result = subprocess.run(
            [*base, "--no-generalist", *extra], capture_output=True, text=True, check=False
        )
        assert result.returncode == 1, (extra, result.stderr)
        assert message in result.stderr
        assert "Traceback" not in result.stderr


def test_decompression_and_frame_bombs_are_refused_from_the_header(
    tmp_path: Path, site_a: SiteKeys
) -> None:
    """1 MB that inflates to 1 GB, and 100 RLE frames of 512x512: 422, the hub's RSS flat."""
    from tests.dicom_bombs import deflate_bomb, multiframe_rle
    from tests.servers import peak_rss_bytes

    bombs = {
        "deflate": deflate_bomb(rows=512, columns=512, inflated_bytes=1024**3),
        "deflate-huge-header": deflate_bomb(rows=60000, columns=60000, inflated_bytes=64 << 20),
        "rle-100-frames": multiframe_rle(frames=100, rows=512, columns=512),
    }
    assert len(bombs["deflate"]) < 1_100_000
    registry = start_registry(tmp_path / "registry")
    hub: RunningHub | None = None
    try:
        with registry.client() as client:
            client.enroll("site-a", site_a.public.pem)
        publish(registry, site_a, tmp_path)
        hub = start_hub(registry, tmp_path / "hub", "--allow-anonymous", "--no-generalist")
        # One ordinary request first, so that the baseline includes a real diagnosis.
        ok = post_image(hub.url, png())
        assert ok.status_code == 200, ok.text
        before = peak_rss_bytes(hub.process.pid)
        for name, data in bombs.items():
            answer = post_image(
                hub.url, data, filename=f"{name}.dcm", media_type="application/dicom", timeout_s=60
            )
            assert answer.status_code == 422, (name, answer.text)
            assert answer.json()["error"]["type"] == "ImageDecodeError"
        grown = peak_rss_bytes(hub.process.pid) - before
        assert grown < 64 * 1024 * 1024, f"the hub's peak RSS grew by {grown >> 20} MB"
    finally:
        if hub is not None:
            hub.stop()
        registry.stop()


def test_a_model_that_allocates_gigabytes_per_run_is_left_out_and_the_hub_stays_small(
    tmp_path: Path, site_a: SiteKeys, site_b: SiteKeys
) -> None:
    """One site's 900-byte model asks for 4 GB on every run; another's is ordinary.

    With ``--max-run-memory-mb 256`` every run of the first fails alone: the answers
    come from the other site's specialist, marked degraded and naming the one left
    out, and the hub's peak RSS hardly moves. A 200-byte ``.npy`` whose header
    declares 37 GiB is a 422 like any undecodable image.
    """
    from tests.bundles import memory_bomb_onnx, read_files, write_bundle_files
    from tests.servers import peak_rss_bytes

    registry = start_registry(tmp_path / "registry")
    hub: RunningHub | None = None
    try:
        with registry.client() as client:
            client.enroll("site-a", site_a.public.pem)
            client.enroll("site-b", site_b.public.pem)
            publish(registry, site_a, tmp_path)
            bomb = write_bundle_files(
                tmp_path / "bomb", site_b, model=memory_bomb_onnx(1_000_000_000)
            )
            digest = client.publish_files(read_files(bomb), site_b.private).bundle_digest
        hub = start_hub(
            registry,
            tmp_path / "hub",
            "--allow-anonymous",
            "--no-generalist",
            "--max-run-memory-mb",
            "256",
        )
        before = peak_rss_bytes(hub.process.pid)
        for seed in range(3):
            answer = post_image(hub.url, png(seed), mode="ensemble")
            assert answer.status_code == 200, answer.text
            response = DiagnoseResponse.parse(answer.content)
            assert response.degraded
            assert [s.site_id for s in response.specialists] == ["site-a"]
            assert [p.specialist.site_id for p in response.moed] == ["site-a"]
            assert response.warnings == (
                f"specialist {digest[:12]} (site-b) failed on this image and was left out",
            )
        header = "{'descr': '<f4', 'fortran_order': False, 'shape': (10000000000,), }"
        header += " " * (63 - (10 + len(header)) % 64) + "\n"
        npy = b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header.encode()
        refused = post_image(
            hub.url, npy + b"\0" * 64, filename="x.npy", media_type="application/octet-stream"
        )
        assert refused.status_code == 422, refused.text
        assert refused.json()["error"]["type"] == "ImageDecodeError"
        grown = peak_rss_bytes(hub.process.pid) - before
        assert grown < 128 * 1024 * 1024, f"the hub's peak RSS grew by {grown >> 20} MB"
        assert httpx.get(hub.url + "/healthz").status_code == 200
    finally:
        if hub is not None:
            hub.stop()
        registry.stop()
