"""The standard gRPC health check (``grpc.health.v1``), as container health checks ask it.

The registry serves it on its own port (TLS when the registry has TLS); Flower's
SuperLink and SuperNode serve it, without TLS, on a separate loopback address
(``--health-server-address``).
"""

from __future__ import annotations

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from protocol.errors import HealthCheckError

__all__ = ["grpc_health"]


def grpc_health(
    target: str,
    *,
    service: str = "",
    root_certificates: bytes | None = None,
    timeout_s: float = 5.0,
) -> str:
    """The serving status of ``service`` at ``target`` (``host:port``): ``SERVING``, ...

    ``service=""`` asks about the server as a whole.

    Raises:
        HealthCheckError: nothing answered within ``timeout_s``, TLS failed, or the
            server does not know ``service``.
    """
    channel = (
        grpc.secure_channel(target, grpc.ssl_channel_credentials(root_certificates))
        if root_certificates is not None
        else grpc.insecure_channel(target)
    )
    with channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout_s)
        except grpc.RpcError as exc:
            detail = exc.details() or exc.code().name
            raise HealthCheckError(f"{target}: {detail}") from exc
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))
