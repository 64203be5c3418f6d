"""Real servers for tests, started as their CLI commands on loopback: the registry and the hub."""

from __future__ import annotations

import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from registry import RegistryClient

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


@dataclass
class RunningHub:
    """A ``gsco hub serve`` process."""

    process: subprocess.Popen[str]
    url: str
    state_dir: Path

    def stop(self) -> str:
        """Stops the hub (SIGTERM) and returns what it wrote to stderr."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        assert self.process.stderr is not None
        return self.process.stderr.read()


def start_hub(registry: RunningRegistry, state_dir: Path, *extra: str) -> RunningHub:
    """``gsco hub serve`` on a free loopback port, trusting ``registry``'s root."""
    root = registry.root / "tuf" / "metadata" / "1.root.json"  # handed over out of band
    process = subprocess.Popen(
        [
            GSCO,
            "hub",
            "serve",
            "--registry",
            registry.address,
            "--trusted-root",
            str(root),
            "--state-dir",
            str(state_dir),
            "--port",
            "0",
            *extra,
        ],
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stderr is not None
    try:
        for line in process.stderr:
            found = re.search(r"serving on (http://127\.0\.0\.1:\d+)", line)
            if found:
                url = found.group(1)
                for _ in range(600):  # the first sync runs before the API answers
                    try:
                        httpx.get(url + "/healthz", timeout=1.0)
                        return RunningHub(process, url, state_dir)
                    except httpx.HTTPError:
                        if process.poll() is not None:
                            break
                        time.sleep(0.1)
                break
    except BaseException:
        process.kill()
        process.wait(timeout=10)
        raise
    process.kill()
    rest = process.stderr.read()
    raise RuntimeError(f"the hub did not start (exit {process.wait()}): {rest[-2000:]}")
