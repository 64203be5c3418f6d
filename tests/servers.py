"""Real servers for tests, started as their CLI commands on loopback: the registry and the hub."""

from __future__ import annotations

import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
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


def _spawn(
    command: list[str],
    pattern: str,
    ready: Callable[[subprocess.Popen[str], str], None],
    env: dict[str, str] | None = None,
) -> tuple[subprocess.Popen[str], str]:
    """Starts ``command``, waits for ``pattern`` on its stderr, then for ``ready``.

    A server that fails to start is killed, never left running.
    """
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, env=env)
    assert process.stderr is not None
    try:
        for line in process.stderr:
            found = re.search(pattern, line)
            if found:
                ready(process, found.group(1))
                return process, found.group(1)
    except BaseException:
        process.kill()
        process.wait(timeout=10)
        raise
    process.kill()
    rest = process.stderr.read()
    raise RuntimeError(f"{command[1:3]} did not start (exit {process.wait()}): {rest[-2000:]}")


def start_registry(root: Path, *extra: str, ca: bytes | None = None) -> RunningRegistry:
    def ready(_: subprocess.Popen[str], address: str) -> None:
        with RegistryClient(address, admin_token=ADMIN_TOKEN, root_certificates=ca) as client:
            client.wait_ready()

    process, address = _spawn(
        [GSCO, "registry", "serve", "--root", str(root), "--port", "0", *extra],
        r"on (127\.0\.0\.1:\d+)",
        ready,
        env=dict(os.environ, GSCO_REGISTRY_ADMIN_TOKEN=ADMIN_TOKEN),
    )
    return RunningRegistry(root, process, address, ca)


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

    def ready(process: subprocess.Popen[str], url: str) -> None:
        for _ in range(600):  # the first sync runs before the API answers
            try:
                httpx.get(url + "/healthz", timeout=1.0)
                return
            except httpx.HTTPError:
                if process.poll() is not None:
                    raise RuntimeError(f"the hub exited with {process.returncode}") from None
                time.sleep(0.1)
        raise RuntimeError("the hub did not answer /healthz")

    process, url = _spawn(
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
        r"serving on (http://127\.0\.0\.1:\d+)",
        ready,
    )
    return RunningHub(process, url, state_dir)


def peak_rss_bytes(pid: int) -> int:
    """A process's peak resident set size (VmHWM in /proc/PID/status), in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmHWM for process {pid}")
