"""Running the registry's gRPC server."""

from __future__ import annotations

import secrets
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from protocol._pb import registry_pb2_grpc as pb_grpc
from registry._core import Registry
from registry._service import CHUNK_BYTES, RegistryServicer
from registry._uploads import UploadLimits
from registry._verify import Limits
from registry.errors import StoreError

__all__ = ["SERVICE_NAME", "ServerConfig", "admin_token_for", "start_server"]

#: The registry's gRPC service, as the standard health service (grpc.health.v1) names it.
SERVICE_NAME = "gsco.registry.v1.Registry"


@dataclass(frozen=True)
class ServerConfig:
    """How to serve. Plain text is only for loopback; give a certificate otherwise."""

    root: Path
    host: str = "127.0.0.1"
    port: int = 50051
    admin_token: str | None = None  # default: ROOT/admin.token, created on first start
    tls_cert: Path | None = None
    tls_key: Path | None = None
    max_bundle_bytes: int = 1024**3
    workers: int = 8  # gRPC threads; more than uploads.max_uploads_total, so reads always get one
    uploads: UploadLimits = field(default_factory=UploadLimits)
    # Training sites that must co-sign a consortium adapter (None: the stored setting).
    adapter_threshold: int | None = None


def admin_token_for(root: Path, given: str | None) -> str:
    """The admin token: ``given``, else ``ROOT/admin.token`` (created with mode 0600)."""
    if given:
        return given
    path = root / "admin.token"
    if not path.exists():
        root.mkdir(parents=True, exist_ok=True)
        path.touch(mode=0o600)
        path.write_text(secrets.token_urlsafe(32) + "\n")
    return path.read_text().strip()


def start_server(config: ServerConfig) -> tuple[grpc.Server, Registry, int]:
    """Opens the store (recovering it), binds and starts; returns the bound port."""
    if config.host not in ("127.0.0.1", "localhost", "::1") and config.tls_cert is None:
        raise StoreError("serving beyond loopback needs --tls-cert and --tls-key")
    if config.uploads.max_uploads_total >= config.workers:
        raise StoreError(
            f"max_uploads_total ({config.uploads.max_uploads_total}) must be below the "
            f"number of workers ({config.workers}), so that reads are always served"
        )
    registry = Registry(
        config.root,
        Limits(max_bundle_bytes=config.max_bundle_bytes),
        adapter_threshold=config.adapter_threshold,
    )
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=config.workers),
        options=[
            ("grpc.max_receive_message_length", CHUNK_BYTES * 2),
            ("grpc.max_send_message_length", CHUNK_BYTES * 2),
        ],
    )
    pb_grpc.add_RegistryServicer_to_server(  # type: ignore[no-untyped-call]
        RegistryServicer(
            registry, admin_token_for(config.root, config.admin_token), config.uploads
        ),
        server,
    )
    # The standard gRPC health service: what container health checks, load balancers
    # and ``gsco registry health`` ask ("" is the server as a whole).
    health_servicer = health.HealthServicer()
    for service in ("", SERVICE_NAME):
        health_servicer.set(service, health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    address = f"{config.host}:{config.port}"
    if config.tls_cert is not None and config.tls_key is not None:
        credentials = grpc.ssl_server_credentials(
            [(config.tls_key.read_bytes(), config.tls_cert.read_bytes())]
        )
        port = server.add_secure_port(address, credentials)
    else:
        port = server.add_insecure_port(address)
    if port == 0:
        raise StoreError(f"cannot bind {address}")
    server.start()
    return server, registry, port
