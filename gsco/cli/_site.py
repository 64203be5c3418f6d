"""``gsco site``: what hospital IT runs next to its archive."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from gsco.cli._common import not_built
from signing import sign_bundle
from site_agent import default_site_home, init_site, open_site

app = typer.Typer(
    help="Site agent: train, export, sign and publish specialists.", no_args_is_help=True
)

HomeOption = Annotated[
    Path | None,
    typer.Option("--home", help="Site home folder [default: $GSCO_SITE_HOME or ~/.gsco/site]."),
]


@app.command()
def init(
    site_id: Annotated[str, typer.Option("--site-id", help="This site's id, e.g. st-marys.")],
    home: HomeOption = None,
) -> None:
    """Create the site's identity and its ECDSA P-256 signing key (once)."""
    site = init_site(home or default_site_home(), site_id)
    typer.echo(f"site {site.config.site_id} initialised in {site.root}")
    typer.echo(f"public key (give it to the registry admin): {site.public_key_path}")
    typer.echo(f"key id: {site.config.key_id}")


@app.command()
def sign(
    bundle: Annotated[Path, typer.Argument(help="Bundle directory to sign.")],
    home: HomeOption = None,
) -> None:
    """Sign every file of a bundle directory into BUNDLE/model.sig with the site key."""
    site = open_site(home or default_site_home())
    manifest = sign_bundle(bundle, site.private_key)
    typer.echo(f"signed {len(manifest.files)} files of {bundle} as site {site.config.site_id}")
    typer.echo(f"bundle digest: {manifest.digest}")


@app.command()
def train() -> None:
    """Train a specialist on local data and write a bundle."""
    not_built("site train", 3)


@app.command()
def publish() -> None:
    """Publish a signed bundle to the registry."""
    not_built("site publish", 4)
