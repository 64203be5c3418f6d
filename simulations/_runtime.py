"""Flower's simulation runtime, started and stopped by us: a private SuperLink and ``flwr run``.

``flwr run`` would otherwise start a detached SuperLink that outlives the
command. Here the SuperLink is our child process (its own session, killed
with everything it started), with its own ``FLWR_HOME`` in the work folder,
a free loopback port, telemetry off and no runtime dependency installation
(the app's dependencies are the installed gsco package).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from types import TracebackType

import httpx

from protocol import free_loopback_port
from simulations._compat import FLOWER_QUIET_ENV
from simulations.errors import SimulationFailedError

__all__ = ["APP_DIR", "FlowerRuntime", "run_config_toml"]

#: The Flower app folder shipped with this package.
APP_DIR = Path(__file__).resolve().parent / "flower_app"
_CONNECTION = "gsco"


def _bin(name: str) -> str:
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else name


def _toml_value(value: object) -> str:
    """One TOML value; a string in any characters (apostrophes, quotes, newlines) round-trips."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    # A JSON string is a TOML basic string (same escapes); ensure_ascii=False keeps
    # characters outside the BMP whole (TOML has no surrogate-pair escapes).
    return json.dumps(str(value), ensure_ascii=False)


def run_config_toml(run_config: Mapping[str, object]) -> str:
    """A Flower run config as a TOML document (what ``flwr run --run-config FILE`` reads).

    Flower's inline ``k=v`` form cannot carry a value that holds both kinds of
    quotes (its parser splits on them), so the run config goes in a file.
    """
    return "".join(
        f"{json.dumps(key)} = {_toml_value(value)}\n" for key, value in run_config.items()
    )


class FlowerRuntime:
    """A private SuperLink in simulation mode; use as a context manager."""

    def __init__(self, work_dir: Path) -> None:
        self.home = work_dir / "flwr-home"
        self.log_path = work_dir / "superlink.log"
        self.port = 0
        self._process: subprocess.Popen[bytes] | None = None
        self.env = dict(
            os.environ,
            FLWR_HOME=str(self.home),
            FLWR_TELEMETRY_ENABLED="0",
            FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="1",
            FLWR_DISABLE_UPDATE_CHECK="1",
            **FLOWER_QUIET_ENV,
            # The SuperLink starts flower-superexec by name: find it beside this interpreter
            # even when the environment is not activated (a venv's bin/gsco run by path).
            PATH=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
        )

    def __enter__(self) -> FlowerRuntime:
        self.home.mkdir(parents=True, exist_ok=True)
        self.port = free_loopback_port()
        (self.home / "config.toml").write_text(
            f'[superlink]\ndefault = "{_CONNECTION}"\n\n'
            f'[superlink.{_CONNECTION}]\naddress = "127.0.0.1:{self.port}"\ninsecure = true\n'
        )
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(  # noqa: S603 - our own fixed argument list
                [
                    _bin("flower-superlink"),
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
                raise SimulationFailedError(
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
        raise SimulationFailedError(f"Flower's SuperLink did not start; see {self.log_path}")

    def run(
        self,
        num_supernodes: int,
        run_config: Mapping[str, object],
        on_line: Callable[[str], None],
        app_dir: Path = APP_DIR,
    ) -> None:
        """``flwr run`` of ``app_dir`` with ``num_supernodes`` simulated SuperNodes, streamed.

        Raises:
            SimulationFailedError: the run did not complete.
        """
        config_file = self.home / f"run-config-{time.time_ns()}.toml"
        config_file.write_text(run_config_toml(run_config), encoding="utf-8")
        command = [
            _bin("flwr"),
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
        for line in process.stdout:
            on_line(line.rstrip("\n"))
            tail = [*tail[-29:], line.rstrip("\n")]
        if process.wait() != 0:
            raise SimulationFailedError(
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
