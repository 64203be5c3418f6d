"""Sub-commands of the design whose implementation is still to come."""

from __future__ import annotations

import typer

from gsco.cli._common import not_built

registry = typer.Typer(help="The consortium registry of signed specialists.", no_args_is_help=True)
hub = typer.Typer(help="The hub's diagnosis API.", no_args_is_help=True)
generalist = typer.Typer(help="The generalist model server (vLLM).", no_args_is_help=True)


@registry.command("serve")
def registry_serve() -> None:
    """Run the registry's gRPC service."""
    not_built("registry serve", 4)


@registry.command("enroll")
def registry_enroll() -> None:
    """Enrol a site's public key (admin)."""
    not_built("registry enroll", 4)


@registry.command("revoke")
def registry_revoke() -> None:
    """Revoke a bundle or a site key (admin)."""
    not_built("registry revoke", 4)


@registry.command("ls")
def registry_ls() -> None:
    """List published bundles."""
    not_built("registry ls", 4)


@hub.command("serve")
def hub_serve() -> None:
    """Run the diagnosis API."""
    not_built("hub serve", 6)


@generalist.command("serve")
def generalist_serve() -> None:
    """Start the embedded CPU generalist (vLLM + SmolLM2) on loopback."""
    not_built("generalist serve", 5)


@generalist.command("stop")
def generalist_stop() -> None:
    """Stop the embedded generalist."""
    not_built("generalist stop", 5)


def simulate() -> None:
    """Simulate many hospital sites with Flower and write the evaluation report."""
    not_built("simulate", 7)
