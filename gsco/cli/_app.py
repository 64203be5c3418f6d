"""The root ``gsco`` command and the error seam."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from gsco import __version__
from gsco.cli import _audit, _federation, _generalist, _hub, _registry, _simulate, _site
from protocol.errors import GscoError

app = typer.Typer(
    name="gsco",
    help="GSCo Network: hospitals' specialist models plus a medical generalist, "
    "combined to diagnose images.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(_site.app, name="site")
app.add_typer(_registry.app, name="registry")
app.add_typer(_hub.app, name="hub")
app.command("diagnose")(_hub.diagnose)
app.add_typer(_generalist.app, name="generalist")
app.command("simulate")(_simulate.simulate)
app.add_typer(_audit.app, name="audit")
app.add_typer(_federation.app, name="federation")


app.command("demo")(_simulate.demo)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"gsco {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")
    ] = False,
) -> None:
    """GSCo Network command line."""


def main() -> None:
    """Entry point of the ``gsco`` console script: any GSCo error is one line and exit 1."""
    try:
        app()
    except GscoError as exc:
        typer.secho(f"error: {exc}", err=True, fg=typer.colors.RED)
        sys.exit(1)
