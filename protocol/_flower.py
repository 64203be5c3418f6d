"""Flower's commands, their environment and the TOML they read: one way for every caller.

Three packages start Flower: the simulation runtime (``flower-superlink``,
``flwr run``), the consortium's SuperLink and runs (``federation``) and a
hospital's SuperNode (``site_agent``). They find the commands, set up the
environment of the processes and write Flower's TOML files (run and node
configuration, the ``flwr`` CLI's connection) here, so that a
fix (say, a virtual environment run by path and not activated) reaches all
three.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import Mapping
from pathlib import Path

from protocol.errors import ToolNotFoundError

__all__ = ["flat_toml", "flower_command", "flower_environment", "flwr_connection_toml"]


def flower_command(name: str) -> str:
    """The path of Flower's command ``name``: beside this Python, else on ``PATH``.

    Beside this interpreter first, so that a virtual environment run by path
    (``venv/bin/gsco``, not activated) starts its own Flower.

    Raises:
        ToolNotFoundError: Flower is not installed (``pip install 'gsco[site]'``).
    """
    beside = Path(sys.executable).parent / name
    if beside.is_file():
        return str(beside)
    found = shutil.which(name)
    if found is None:
        raise ToolNotFoundError(f"{name} not found: install Flower with pip install 'gsco[site]'")
    return found


def flower_environment(
    flwr_home: Path | None = None, extra: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The environment of Flower's processes: its commands first on ``PATH``, telemetry off.

    A SuperLink and a SuperNode start ``flower-superexec`` children by name,
    so the folder of Flower's commands leads ``PATH``. ``flwr_home`` is where
    the ``flwr`` CLI keeps its connections (``FLWR_HOME``); ``extra`` is set
    last.

    Raises:
        ToolNotFoundError: Flower is not installed.
    """
    env = dict(os.environ)
    folder = str(Path(flower_command("flower-superlink")).parent)
    env["PATH"] = os.pathsep.join([folder, env.get("PATH", "")])
    env.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    if flwr_home is not None:
        env["FLWR_HOME"] = str(flwr_home)
    env.update(extra or {})
    return env


def _toml_value(value: object) -> str:
    """One TOML value; a string in any characters (apostrophes, quotes, newlines) round-trips."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    # A JSON string is a TOML basic string (same escapes); ensure_ascii=False keeps
    # characters outside the BMP whole (TOML has no surrogate-pair escapes).
    return json.dumps(str(value), ensure_ascii=False)


def flat_toml(table: Mapping[str, object]) -> str:
    """A flat TOML document, one ``"key" = value`` line each (strings, numbers, booleans).

    What ``flwr run --run-config FILE`` and ``flower-supernode --node-config
    FILE`` read. Flower's inline ``k=v`` form cannot carry a value that holds
    both kinds of quotes (its parser splits on them), so values go in a file.
    """
    return "".join(f"{json.dumps(key)} = {_toml_value(value)}\n" for key, value in table.items())


def flwr_connection_toml(name: str, address: str, root_certificates: Path | None = None) -> str:
    """The ``flwr`` CLI's ``config.toml``: one SuperLink connection, ``name``, the default.

    Verified against ``root_certificates`` (a CA file), or plain text when it
    is ``None`` (a private simulation SuperLink on loopback). The keys are
    Flower's fixed names; the name and every value are quoted, so a name or a
    path in any characters stays one value.
    """
    table: dict[str, object] = {"address": address}
    if root_certificates is None:
        table["insecure"] = True
    else:
        table["root-certificates"] = str(root_certificates)
    lines = "".join(f"{key} = {_toml_value(value)}\n" for key, value in table.items())
    return (
        f"[superlink]\ndefault = {_toml_value(name)}\n\n"
        f"[superlink.{json.dumps(name, ensure_ascii=False)}]\n{lines}"
    )
