"""Flower's commands are found one way for the simulation, the SuperLink and a SuperNode."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from protocol import ToolNotFoundError, flower_command, flower_environment, flwr_connection_toml


def test_commands_are_found_beside_this_interpreter_first(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PATH", "/usr/bin:/bin")  # a venv run by path, not activated
    found = Path(flower_command("flwr"))
    assert found.parent == Path(sys.executable).parent
    env = flower_environment(Path("/tmp/flwr-home"), {"EXTRA": "1"})
    assert env["PATH"].split(os.pathsep)[0] == str(found.parent)  # superexec children by name
    assert env["FLWR_HOME"] == "/tmp/flwr-home"
    assert env["EXTRA"] == "1"
    assert env.get("FLWR_TELEMETRY_ENABLED") in ("0", os.environ.get("FLWR_TELEMETRY_ENABLED"))


def test_a_missing_command_is_a_typed_error_that_says_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "executable", str(tmp_path / "python"))
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ToolNotFoundError, match=r"gsco\[site\]"):
        flower_command("flower-supernode")
    with pytest.raises(ToolNotFoundError):
        flower_environment()


def test_the_flwr_connection_file_keeps_any_name_and_path_whole(tmp_path: Path) -> None:
    import tomllib

    ca = tmp_path / 'St Mary\'s "TLS"' / "ca.pem"
    verified = tomllib.loads(flwr_connection_toml("lung", "127.0.0.1:9093", ca))
    assert verified["superlink"]["default"] == "lung"
    assert verified["superlink"]["lung"] == {
        "address": "127.0.0.1:9093",
        "root-certificates": str(ca),
    }
    plain = tomllib.loads(flwr_connection_toml("gsco", "127.0.0.1:1"))
    assert plain["superlink"]["gsco"] == {"address": "127.0.0.1:1", "insecure": True}
