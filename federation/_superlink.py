"""The consortium's SuperLink: how it is started, and the ``flwr`` Control API calls made to it.

The SuperLink (flwr 1.41) serves the Fleet, Control and Runtime APIs on one
HTTPS port. It is always started with TLS, SuperNode authentication (only
registered node keys may connect), a persistent database (registered nodes
and runs survive a restart) and without runtime dependency installation (a
hospital's SuperNode never installs what a run asks for).

The Control API is called through Flower's own ``flwr`` CLI with
``FLWR_HOME`` set to the consortium's folder, as an operator would.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from federation._consortium import Consortium
from federation.errors import SuperLinkError
from protocol import flower_command, flower_environment

__all__ = [
    "NodeInfo",
    "list_nodes",
    "register_node",
    "superlink_command",
    "unregister_node",
]

#: How long one Control API call may take.
CONTROL_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class NodeInfo:
    """A SuperNode the SuperLink knows: its id and whether it is connected now."""

    node_id: int
    status: str  # registered | online | offline | unregistered (Flower's words)


def superlink_command(
    consortium: Consortium,
    *,
    bind: str = "0.0.0.0",  # noqa: S104
    health_address: str | None = None,
) -> list[str]:
    """The ``flower-superlink`` command for ``consortium``, listening on ``bind``.

    ``health_address`` (``host:port``, plain text: keep it on loopback or a private
    network) serves the standard gRPC health service: what container health checks ask.

    Raises:
        CertificateError: the SuperLink's certificate does not check.
        ToolNotFoundError: Flower is not installed.
    """
    consortium.check_certificates()
    return [
        flower_command("flower-superlink"),
        "--ssl-ca-certfile",
        str(consortium.ca_certificate),
        "--ssl-certfile",
        str(consortium.certificate),
        "--ssl-keyfile",
        str(consortium.key),
        "--enable-supernode-auth",
        "--disable-runtime-dependency-installation",
        "--database",
        str(consortium.database),
        "--host",
        bind,
        "--port",
        str(consortium.config.port),
        *(["--health-server-address", health_address] if health_address else []),
    ]


def _flwr(consortium: Consortium, *args: str) -> dict[str, Any]:
    """One ``flwr ... --format json`` call to this consortium's SuperLink."""
    command = [flower_command("flwr"), *args, consortium.config.name, "--format", "json"]
    try:
        done = subprocess.run(  # noqa: S603 - Flower's CLI, fixed arguments, no shell
            command,
            env=flower_environment(consortium.flwr_home),
            capture_output=True,
            text=True,
            timeout=CONTROL_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise SuperLinkError(
            f"the SuperLink did not answer 'flwr {args[0]} {args[1]}' in {CONTROL_TIMEOUT_S:g} s"
        ) from exc
    try:
        answer = json.loads(done.stdout)
    except json.JSONDecodeError:
        answer = None
    if not isinstance(answer, dict):
        detail = (done.stderr or done.stdout).strip()[-500:]
        raise SuperLinkError(f"flwr {' '.join(args[:2])} failed (exit {done.returncode}): {detail}")
    if not answer.get("success", False):
        message = str(answer.get("error-message", "no reason given"))
        raise SuperLinkError(" ".join(line.strip() for line in message.splitlines() if line))
    return answer


def register_node(consortium: Consortium, public_key: Path) -> int:
    """Registers a SuperNode's public key (OpenSSH, ECDSA on a NIST curve); returns its node id.

    Raises:
        SuperLinkError: the SuperLink refused the key or could not be reached.
    """
    answer = _flwr(consortium, "supernode", "register", str(public_key))
    return int(answer["node-id"])


def unregister_node(consortium: Consortium, node_id: int) -> None:
    """Unregisters a SuperNode: its key can no longer connect.

    Raises:
        SuperLinkError: the SuperLink refused or could not be reached.
    """
    _flwr(consortium, "supernode", "unregister", str(node_id))


def list_nodes(consortium: Consortium) -> list[NodeInfo]:
    """The SuperNodes the SuperLink knows, with their connection status.

    Raises:
        SuperLinkError: the SuperLink could not be reached.
    """
    answer = _flwr(consortium, "supernode", "list")
    return [
        NodeInfo(int(node["node-id"]), str(node.get("status", "unknown")))
        for node in answer.get("nodes", [])
    ]
