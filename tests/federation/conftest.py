"""Real Flower processes for the federation tests, each in its own session, all stopped."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from federation import list_nodes, open_consortium

GSCO = str(Path(sys.executable).parent / "gsco")


def gsco_run(*args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    """``gsco ARGS`` to completion, its output captured."""
    return subprocess.run(
        [GSCO, *args], capture_output=True, text=True, timeout=timeout, check=False
    )


def _group_alive(pgid: int) -> list[int]:
    """Pids still in process group ``pgid``."""
    alive = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            alive.append(int(stat.parent.name))
    return alive


class Processes:
    """Processes started in their own sessions; every group is killed at the end."""

    def __init__(self) -> None:
        self.groups: list[int] = []

    def start(self, command: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen[str]:
        process = subprocess.Popen(
            command,
            stdout=log.open("w"),
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
            start_new_session=True,
        )
        self.groups.append(process.pid)
        return process

    def stop(self, process: subprocess.Popen[str]) -> None:
        """SIGTERM to the process's group (as a service manager would), then SIGKILL."""
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(process.pid, sig)
            except ProcessLookupError:
                return
            deadline = time.monotonic() + 20
            while _group_alive(process.pid) and time.monotonic() < deadline:
                time.sleep(0.2)
            if not _group_alive(process.pid):
                break
        process.wait(timeout=10)

    def leftovers(self) -> dict[int, list[int]]:
        return {g: alive for g in self.groups if (alive := _group_alive(g))}


@pytest.fixture
def processes() -> Iterator[Processes]:
    started = Processes()
    yield started
    for group in started.groups:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(group, signal.SIGKILL)


def wait_for_port(port: int, process: subprocess.Popen[str], log: Path) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert process.poll() is None, log.read_text()[-2000:]
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.3)
    raise AssertionError(f"the SuperLink did not listen: {log.read_text()[-2000:]}")


def node_statuses(root: Path) -> dict[int, str]:
    return {node.node_id: node.status for node in list_nodes(open_consortium(root))}


def wait_for_status(root: Path, node_id: int, wanted: str) -> None:
    deadline = time.monotonic() + 120
    while (seen := node_statuses(root).get(node_id)) != wanted:
        assert time.monotonic() < deadline, f"node {node_id} is {seen}, not {wanted}"
        time.sleep(1)
