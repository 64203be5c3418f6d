"""Long steps that print nothing of their own still say, every so often, that they are alive."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest


def test_a_flower_run_without_app_lines_gets_a_line_while_it_lasts(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import fedapp._runtime as runtime

    monkeypatch.setattr(runtime, "HEARTBEAT_S", 0.3)
    seen: list[str] = []
    with runtime._Heartbeat(seen.append) as heartbeat:
        heartbeat.forward("INFO : a line of Flower's own")
        time.sleep(1.6)
        heartbeat.forward("gsco: a line of the app")
        time.sleep(0.1)
    beats = [line for line in seen if "still going" in line]
    assert len(beats) >= 2
    assert all(line.startswith("gsco: ") for line in beats)  # shown as the app's lines are
    assert seen.index("gsco: a line of the app") > seen.index(beats[0])


def test_the_generalists_set_up_steps_say_they_are_still_running(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import generalist._serve as serve

    monkeypatch.setattr(serve, "HEARTBEAT_S", 0.2)
    said: list[str] = []
    server = serve.EmbeddedServer(tmp_path, log=said.append)
    server._run(
        "installing", [sys.executable, "-c", "import time; time.sleep(1)"], tmp_path / "log"
    )
    assert any(line.startswith("  still installing (") for line in said)
    with pytest.raises(serve.ServeError, match="exit 3"):
        server._run("failing", [sys.executable, "-c", "raise SystemExit(3)"], tmp_path / "log")
