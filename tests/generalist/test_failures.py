"""What the backend does when the generalist is down, stalls, fails or misbehaves."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import httpx
import pytest

from generalist import (
    ArbitrationRequest,
    GeneralistResponseError,
    GeneralistUnavailableError,
    OpenAICompatibleBackend,
    OpenAIConfig,
)
from protocol import free_loopback_port
from site_agent.data import default_catalog

REQUEST = ArbitrationRequest(default_catalog().get("pneumonia-cxr").task)


def _arbitrate(config: OpenAIConfig, transport: httpx.AsyncBaseTransport | None = None) -> object:
    async def run() -> object:
        backend = OpenAICompatibleBackend(config, transport)
        try:
            return await backend.arbitrate(REQUEST)
        finally:
            await backend.aclose()

    return asyncio.run(run())


def test_server_down_is_unavailable() -> None:
    config = OpenAIConfig(
        f"http://127.0.0.1:{free_loopback_port()}/v1", "m", timeout_s=5, retries=2
    )
    started = time.monotonic()
    with pytest.raises(GeneralistUnavailableError, match="unreachable"):
        _arbitrate(config)
    assert time.monotonic() - started < 5


def test_stalled_server_is_unavailable_within_the_timeout() -> None:
    async def run() -> float:
        async def accept_and_wait(
            reader: asyncio.StreamReader, writer: asyncio.StreamWriter
        ) -> None:
            await asyncio.sleep(30)  # never answers

        server = await asyncio.start_server(accept_and_wait, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        backend = OpenAICompatibleBackend(
            OpenAIConfig(f"http://127.0.0.1:{port}/v1", "m", timeout_s=2)
        )
        started = time.monotonic()
        try:
            with pytest.raises(GeneralistUnavailableError, match="within 2 s"):
                await backend.arbitrate(REQUEST)
        finally:
            await backend.aclose()
            server.close()
        return time.monotonic() - started

    assert asyncio.run(run()) < 3.0


def _reply(content: str) -> httpx.Response:
    body = {"model": "m", "choices": [{"message": {"content": content}}], "usage": {}}
    return httpx.Response(200, json=body)


# httpx.MockTransport stands in for a misbehaving server here: the real vLLM
# server is exercised in test_vllm_server.py, but it cannot be made to fail on cue.
def test_5xx_is_retried_then_answered() -> None:
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(json.loads(request.content))
        return httpx.Response(503, text="overloaded") if len(calls) < 3 else _reply("pneumonia")

    config = OpenAIConfig("http://gen/v1", "m", retries=2, backoff_s=0.01)
    result = _arbitrate(config, httpx.MockTransport(handler))
    assert result.label == "pneumonia"  # type: ignore[attr-defined]
    assert len(calls) == 3
    assert calls[0]["structured_outputs"] == {"choice": ["normal", "pneumonia"]}


def test_persistent_5xx_is_unavailable() -> None:
    config = OpenAIConfig("http://gen/v1", "m", retries=1, backoff_s=0.01)
    with pytest.raises(GeneralistUnavailableError, match="503"):
        _arbitrate(config, httpx.MockTransport(lambda r: httpx.Response(503, text="down")))


def test_4xx_is_a_response_error() -> None:
    config = OpenAIConfig("http://gen/v1", "m")
    with pytest.raises(GeneralistResponseError, match="400"):
        _arbitrate(config, httpx.MockTransport(lambda r: httpx.Response(400, text="bad")))


def test_answer_outside_the_label_set() -> None:
    config = OpenAIConfig("http://gen/v1", "m", constrain=False)
    with pytest.raises(GeneralistResponseError, match="outside the label set"):
        _arbitrate(config, httpx.MockTransport(lambda r: _reply("I think it is tuberculosis")))


def test_unconstrained_free_text_is_parsed() -> None:
    config = OpenAIConfig("http://gen/v1", "m", constrain=False)
    result = _arbitrate(config, httpx.MockTransport(lambda r: _reply("Answer: Pneumonia.")))
    assert result.label == "pneumonia"  # type: ignore[attr-defined]
    assert result.scores is None  # type: ignore[attr-defined]


def test_stop_never_kills_a_process_that_reused_the_servers_pid(tmp_path: Path) -> None:
    """The state file names a PID; a PID that now belongs to someone else is left alone."""
    import json
    import subprocess
    import sys

    from generalist import EmbeddedServer, ServerState

    bystander = subprocess.Popen(  # another user's process, in a process group of its own
        [sys.executable, "-c", "import time; time.sleep(120)"], start_new_session=True
    )
    try:
        server = EmbeddedServer(cache_dir=tmp_path)
        server.state_dir.mkdir(parents=True)
        for state in (
            ServerState(bystander.pid, 1, "x.log"),  # an old state file: no start time
            ServerState(bystander.pid, 1, "x.log", started=1),  # a start time that differs
        ):
            (server.state_dir / "state.json").write_text(json.dumps(vars(state)))
            assert server.state() is None  # not our server: a stale file, removed
            assert not (server.state_dir / "state.json").exists()
            (server.state_dir / "state.json").write_text(json.dumps(vars(state)))
            assert server.stop() is False
            assert bystander.poll() is None, "stop() killed a process that was not the server"
    finally:
        bystander.kill()
        bystander.wait()
