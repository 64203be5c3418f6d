"""Flower's simulation runtime, started and stopped by us: a private SuperLink and ``flwr run``.

``flwr run`` would otherwise start a detached SuperLink that outlives the
command. Here the SuperLink is our child process (its own session, killed
with everything it started), with its own ``FLWR_HOME`` in the work folder,
a free loopback port, telemetry off and no runtime dependency installation
(the app's dependencies are the installed gsco package).
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from types import TracebackType

import httpx

from fedapp._compat import FLOWER_QUIET_ENV
from fedapp.errors import FlowerRuntimeError
from protocol import (
    flat_toml,
    flower_command,
    flower_environment,
    flwr_connection_toml,
    free_loopback_port,
)

__all__ = ["APP_DIR", "HEARTBEAT_S", "FlowerRuntime"]

#: The longest the caller goes without a ``gsco:`` line while a run is under way (s).
HEARTBEAT_S = 30.0

#: The consortium's Flower app folder (what ``gsco federation run`` submits).
APP_DIR = Path(__file__).resolve().parent / "flower_app"
_CONNECTION = "gsco"


class FlowerRuntime:
    """A private SuperLink in simulation mode; use as a context manager."""

    def __init__(self, work_dir: Path) -> None:
        self.home = work_dir / "flwr-home"
        self.log_path = work_dir / "superlink.log"
        self.port = 0
        self._process: subprocess.Popen[bytes] | None = None
        self.env = flower_environment(
            self.home,
            {
                "FLWR_TELEMETRY_ENABLED": "0",
                "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
                "FLWR_DISABLE_UPDATE_CHECK": "1",
                **FLOWER_QUIET_ENV,
            },
        )

    def __enter__(self) -> FlowerRuntime:
        self.home.mkdir(parents=True, exist_ok=True)
        self.port = free_loopback_port()
        (self.home / "config.toml").write_text(
            flwr_connection_toml(_CONNECTION, f"127.0.0.1:{self.port}")
        )
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(  # noqa: S603 - our own fixed argument list
                [
                    flower_command("flower-superlink"),
                    "--insecure",
                    "--simulation",
                    "--isolation",
                    "subprocess",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(self.port),
                    "--disable-runtime-dependency-installation",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
                start_new_session=True,
            )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise FlowerRuntimeError(
                    f"Flower's SuperLink exited with {self._process.returncode}; "
                    f"see {self.log_path}"
                )
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}/health", timeout=0.5).is_success:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.close()
        raise FlowerRuntimeError(f"Flower's SuperLink did not start; see {self.log_path}")

    def run(
        self,
        num_supernodes: int,
        run_config: Mapping[str, object],
        on_line: Callable[[str], None],
        app_dir: Path,
    ) -> None:
        """``flwr run`` of ``app_dir`` with ``num_supernodes`` simulated SuperNodes, streamed.

        Raises:
            FlowerRuntimeError: the run did not complete.
        """
        config_file = self.home / f"run-config-{time.time_ns()}.toml"
        config_file.write_text(flat_toml(run_config), encoding="utf-8")
        command = [
            flower_command("flwr"),
            "run",
            str(app_dir),
            _CONNECTION,
            "--federation-config",
            f"num-supernodes={num_supernodes}",
            "--run-config",
            str(config_file),
            "--stream",
        ]
        process = subprocess.Popen(  # noqa: S603 - our own fixed argument list
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=self.env,
        )
        assert process.stdout is not None
        tail: list[str] = []
        with _Heartbeat(on_line) as heartbeat:
            for line in process.stdout:
                heartbeat.forward(line.rstrip("\n"))
                tail = [*tail[-29:], line.rstrip("\n")]
        if process.wait() != 0:
            raise FlowerRuntimeError(
                f"flwr run exited with {process.returncode}:\n" + "\n".join(tail)
            )

    def close(self) -> None:
        """Stops the SuperLink and everything it started."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        try:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
        except ProcessLookupError:
            pass

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


class _Heartbeat:
    """Forwards the run's lines; says the run is alive when no ``gsco:`` line came for a while.

    A FedAvg round or a policy fit can take minutes without a line of the app's own: the
    caller, which shows ``gsco:`` lines, gets one every :data:`HEARTBEAT_S` seconds meanwhile.
    """

    def __init__(self, on_line: Callable[[str], None]) -> None:
        self._on_line = on_line
        self._lock = threading.Lock()
        self._started = self._heard = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="gsco-heartbeat", daemon=True)

    def __enter__(self) -> _Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    def forward(self, line: str) -> None:
        with self._lock:
            if "gsco:" in line:
                self._heard = time.monotonic()
            self._on_line(line)

    def _beat(self) -> None:
        while not self._stop.wait(min(1.0, HEARTBEAT_S / 4)):
            with self._lock:
                now = time.monotonic()
                if now - self._heard >= HEARTBEAT_S:
                    self._heard = now
                    self._on_line(f"gsco: the run is still going ({now - self._started:.0f} s)")
