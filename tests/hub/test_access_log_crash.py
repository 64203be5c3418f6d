"""The access log's promise under a crash: a real hub killed (SIGKILL) in the middle of
a burst of concurrent requests. Every request it answered is in the log, and the chain
verifies once the log is reopened as a restarted hub reopens it.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from hub import AccessLog, verify_access_log
from tests.conftest import SiteKeys
from tests.hub.conftest import png, publish
from tests.servers import start_hub, start_registry

pytestmark = pytest.mark.slow


def test_every_answered_request_is_logged_when_the_hub_is_killed_mid_burst(
    tmp_path: Path, site_a: SiteKeys, site_b: SiteKeys
) -> None:
    registry = start_registry(tmp_path / "registry")
    try:
        with registry.client() as client:
            client.enroll("site-a", site_a.public.pem)
            client.enroll("site-b", site_b.public.pem)
        publish(registry, site_a, tmp_path)
        publish(registry, site_b, tmp_path)
        hub = start_hub(
            registry, tmp_path / "hub", "--allow-anonymous", "--no-generalist",
            "--max-queue", "64",
        )  # fmt: skip
        answered: list[str] = []
        lock = threading.Lock()
        enough = threading.Event()
        images = [png(seed) for seed in range(8)]

        def client(worker: int) -> None:
            with httpx.Client(base_url=hub.url, timeout=30) as http:
                for number in range(10_000):
                    try:
                        answer = http.post(
                            "/v1/diagnose",
                            data={"task_id": "pneumonia-cxr", "mode": "ensemble"},
                            files={"image": ("x.png", images[(worker + number) % 8], "image/png")},
                        )
                    except httpx.HTTPError:
                        return  # the hub is gone
                    if answer.status_code == 200:
                        with lock:
                            answered.append(answer.headers["X-Request-Id"])
                            if len(answered) >= 150:
                                enough.set()

        with ThreadPoolExecutor(16) as pool:
            clients = [pool.submit(client, worker) for worker in range(16)]
            assert enough.wait(timeout=300), "the hub answered too few requests"
            hub.process.kill()  # SIGKILL: no shutdown, no flush, mid-burst
            hub.process.wait(timeout=30)
            for done in clients:
                done.result(timeout=60)
        with lock:
            acknowledged = set(answered)
    finally:
        registry.stop()

    path = tmp_path / "hub" / "access.jsonl"
    AccessLog(path).close()  # what a restarted hub does first
    records = verify_access_log(path)
    logged = {r.request_id for r in records if r.outcome == "ok"}
    assert acknowledged <= logged, f"{len(acknowledged - logged)} answered but not logged"
    assert len(acknowledged) >= 150
    assert [r.seq for r in records] == list(range(len(records)))
