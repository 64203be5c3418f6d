"""A real registry server on loopback, started as ``gsco registry serve``."""

from __future__ import annotations

import os
import re
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from registry import RegistryClient
from tests.conftest import SiteKeys

ADMIN_TOKEN = "test-admin-token"
GSCO = str(Path(sys.executable).parent / "gsco")


@dataclass
class RunningRegistry:
    """A ``gsco registry serve`` process and its storage folder."""

    root: Path
    process: subprocess.Popen[str]
    address: str
    ca: bytes | None = None  # the CA certificate when serving TLS

    def client(self, admin: bool = True) -> RegistryClient:
        token = ADMIN_TOKEN if admin else None
        return RegistryClient(
            self.address, admin_token=token, root_certificates=self.ca, timeout_s=30
        )

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()

    def blob_count(self) -> int:
        return len(list((self.root / "blobs").glob("??/*")))

    def row_count(self) -> int:
        uri = f"file:{self.root / 'registry.sqlite3'}?mode=ro"
        with sqlite3.connect(uri, uri=True) as db:
            return int(db.execute("SELECT COUNT(*) FROM bundles").fetchone()[0])


def start_registry(root: Path, *extra: str, ca: bytes | None = None) -> RunningRegistry:
    env = dict(os.environ, GSCO_REGISTRY_ADMIN_TOKEN=ADMIN_TOKEN)
    process = subprocess.Popen(
        [GSCO, "registry", "serve", "--root", str(root), "--port", "0", *extra],
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert process.stderr is not None
    try:
        for line in process.stderr:
            found = re.search(r"on (127\.0\.0\.1:\d+)", line)
            if found:
                running = RunningRegistry(root, process, found.group(1), ca)
                with running.client() as client:
                    client.wait_ready()
                return running
    except BaseException:
        process.kill()  # never leave a server behind a failed start
        process.wait(timeout=10)
        raise
    raise RuntimeError(f"the registry did not start (exit {process.wait()})")


@pytest.fixture
def running(tmp_path: Path, site_a: SiteKeys) -> Iterator[RunningRegistry]:
    server = start_registry(tmp_path / "registry", "--max-bundle-mb", "1")
    with server.client() as client:
        client.enroll("site-a", site_a.public.pem)
    yield server
    server.stop()
