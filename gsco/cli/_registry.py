"""``gsco registry``: run the consortium registry and administer it."""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from registry import RegistryClient

app = typer.Typer(help="The consortium registry of signed specialists.", no_args_is_help=True)

RegistryOption = Annotated[
    str, typer.Option("--registry", help="Registry address host:port.", envvar="GSCO_REGISTRY")
]
TokenFileOption = Annotated[
    Path | None,
    typer.Option(help="File with the admin token (default: $GSCO_REGISTRY_ADMIN_TOKEN)."),
]
CaOption = Annotated[Path | None, typer.Option(help="CA certificate to verify the registry's TLS.")]


def _token(token_file: Path | None) -> str | None:
    if token_file is not None:
        return token_file.read_text().strip()
    return os.environ.get("GSCO_REGISTRY_ADMIN_TOKEN")


def _client(address: str, token_file: Path | None, ca: Path | None) -> RegistryClient:
    from registry import RegistryClient

    return RegistryClient(
        address, admin_token=_token(token_file), root_certificates=ca.read_bytes() if ca else None
    )


@app.command()
def serve(
    root: Annotated[Path, typer.Option(help="Storage folder (blobs, SQLite, event log).")],
    port: Annotated[int, typer.Option(help="Port (0: any free port).")] = 50051,
    host: Annotated[str, typer.Option(help="Address to bind; beyond loopback needs TLS.")] = (
        "127.0.0.1"
    ),
    tls_cert: Annotated[Path | None, typer.Option(help="PEM certificate.")] = None,
    tls_key: Annotated[Path | None, typer.Option(help="PEM private key.")] = None,
    admin_token_file: TokenFileOption = None,
    max_bundle_mb: Annotated[int, typer.Option(min=1, help="Largest bundle accepted.")] = 1024,
    max_uploads: Annotated[
        int, typer.Option(min=1, help="Uploads received at once, all sites together.")
    ] = 4,
    max_uploads_per_site: Annotated[
        int, typer.Option(min=1, help="Uploads received at once from one site.")
    ] = 1,
    adapter_threshold: Annotated[
        int | None,
        typer.Option(
            min=2,
            help="Training sites that must co-sign a task's consortium adapter (also at least "
            "a majority of its trainers). Kept in the registry; default: the stored value, 2 "
            "in a new registry.",
        ),
    ] = None,
) -> None:
    """Run the registry's gRPC service until interrupted.

    An upload is authenticated from its header (the site's signed TUF metadata)
    before a byte of its body is accepted, then streamed to ROOT/tmp.
    """
    from registry import ServerConfig, UploadLimits, start_server

    config = ServerConfig(
        root=root,
        host=host,
        port=port,
        admin_token=_token(admin_token_file),
        tls_cert=tls_cert,
        tls_key=tls_key,
        max_bundle_bytes=max_bundle_mb * 1024 * 1024,
        uploads=UploadLimits(
            max_uploads_total=max_uploads, max_uploads_per_site=max_uploads_per_site
        ),
        adapter_threshold=adapter_threshold,
    )
    server, registry, bound = start_server(config)
    recovered = {k: v for k, v in registry.recovered.items() if v}
    if recovered:
        typer.echo(f"recovered from an interrupted write: {recovered}", err=True)
    token_note = "" if config.admin_token else f" (admin token in {root / 'admin.token'})"
    typer.echo(f"registry serving {root} on {host}:{bound}{token_note}", err=True)
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    stop.wait()
    server.stop(grace=5).wait()
    registry.close()
    typer.echo("registry stopped", err=True)


@app.command()
def enroll(
    site_id: Annotated[str, typer.Option(help="The site's id.")],
    key: Annotated[Path, typer.Option(help="The site's PEM public key (site.pub).")],
    registry: RegistryOption = "127.0.0.1:50051",
    admin_token_file: TokenFileOption = None,
    tls_ca: CaOption = None,
) -> None:
    """Enrol a site's public key (admin)."""
    with _client(registry, admin_token_file, tls_ca) as client:
        site = client.enroll(site_id, key.read_bytes())
    typer.echo(f"enrolled site {site.site_id}, key {site.key_id}")


@app.command()
def revoke(
    reason: Annotated[str, typer.Option(help="Why (recorded in the event log).")],
    bundle: Annotated[str | None, typer.Option(help="Bundle digest to revoke.")] = None,
    key_id: Annotated[str | None, typer.Option(help="Site key id to revoke (and its bundles).")] = (
        None
    ),
    registry: RegistryOption = "127.0.0.1:50051",
    admin_token_file: TokenFileOption = None,
    tls_ca: CaOption = None,
) -> None:
    """Revoke a bundle or a site key (admin)."""
    from gsco.cli._common import fail

    if (bundle is None) == (key_id is None):
        fail("name exactly one of --bundle and --key-id", code=2)
    with _client(registry, admin_token_file, tls_ca) as client:
        count = (
            client.revoke_bundle(bundle, reason)
            if bundle
            else client.revoke_key(str(key_id), reason)
        )
    typer.echo(f"revoked {count} item(s)")


@app.command("ls")
def list_bundles(
    registry: RegistryOption = "127.0.0.1:50051",
    task: Annotated[str, typer.Option(help="Only this task.")] = "",
    site: Annotated[str, typer.Option(help="Only this site.")] = "",
    include_revoked: Annotated[
        bool, typer.Option("--all", help="Include revoked bundles.")
    ] = False,
    tls_ca: CaOption = None,
) -> None:
    """List published bundles."""
    with _client(registry, None, tls_ca) as client:
        refs = client.bundles(task_id=task, site_id=site, include_revoked=include_revoked)
    typer.echo(f"{'task':<16} {'site':<14} {'backbone':<22} {'ver':>3}  {'digest':<16}  status")
    for ref in refs:
        status = "revoked" if ref.revoked else "active"
        typer.echo(
            f"{ref.task_id:<16} {ref.site_id:<14} {ref.backbone:<22} {ref.version:>3}  "
            f"{ref.bundle_digest[:16]}  {status}"
        )


@app.command()
def health(
    registry: RegistryOption = "127.0.0.1:50051",
    tls_ca: CaOption = None,
    timeout: Annotated[float, typer.Option(min=0.1, help="Seconds to wait.")] = 5.0,
) -> None:
    """Ask the registry's standard gRPC health service; exit 0 only when it is SERVING.

    What the registry image's health check runs.
    """
    from gsco.cli._common import check_grpc_health
    from registry import SERVICE_NAME

    check_grpc_health("registry", registry, service=SERVICE_NAME, ca=tls_ca, timeout_s=timeout)


@app.command("trust-root")
def trust_root(
    root: Annotated[Path, typer.Option(help="The registry's storage folder.")],
) -> None:
    """Print the TUF root metadata (1.root.json) that hubs must be given out of band."""
    from registry import Registry

    store = Registry(root)
    typer.echo(store.tuf.trusted_root().decode(), nl=False)
    store.close()
