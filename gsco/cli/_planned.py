"""Sub-commands of the design whose implementation is still to come."""

from __future__ import annotations

import typer

from gsco.cli._common import not_built

hub = typer.Typer(help="The hub's diagnosis API.", no_args_is_help=True)


@hub.command("serve")
def hub_serve() -> None:
    """Run the diagnosis API."""
    not_built("hub serve", 6)


def simulate() -> None:
    """Simulate many hospital sites with Flower and write the evaluation report."""
    not_built("simulate", 7)
