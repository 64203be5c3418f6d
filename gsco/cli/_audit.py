"""``gsco audit``: what compliance auditors run."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from gsco.cli._common import fail, not_built
from signing import KeyRing, TrustedKey, load_public_key, verify_bundle_dir

app = typer.Typer(
    help="Audit bundles, the registry and the hub's access log.", no_args_is_help=True
)


@app.command()
def bundle(
    directory: Annotated[Path, typer.Argument(help="Bundle directory to verify.")],
    keys: Annotated[
        list[str],
        typer.Option("--key", help="SITE=PATH of a trusted public key; repeatable."),
    ],
    site: Annotated[str | None, typer.Option(help="The site the bundle must come from.")] = None,
) -> None:
    """Verify a bundle's signature and every file hash against trusted site keys."""
    trusted = []
    for entry in keys:
        site_id, sep, path = entry.partition("=")
        if not sep or not site_id or not path:
            fail(f"--key takes SITE=PATH, got {entry!r}", code=2)
        trusted.append(TrustedKey(site_id, load_public_key(Path(path))))
    manifest = verify_bundle_dir(directory, KeyRing(trusted), expected_site_id=site)
    typer.echo(f"OK: signed by site {manifest.site_id} (key {manifest.key_id[:16]}…)")
    typer.echo(f"bundle digest: {manifest.digest}")
    for name, digest in sorted(manifest.files.items()):
        typer.echo(f"  {digest}  {name}")


@app.command()
def registry() -> None:
    """Audit a whole registry: event log, TUF metadata, every bundle, privacy settings."""
    not_built("audit registry", 8)
