"""``gsco generalist``: the embedded CPU generalist (vLLM + SmolLM2)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(help="The generalist model server (vLLM).", no_args_is_help=True)


@app.command()
def prepare() -> None:
    """Create the vLLM CPU environment and convert SmolLM2 (once; cached)."""
    from generalist import EmbeddedServer

    server = EmbeddedServer()
    server.prepare()
    typer.echo(f"ready: environment {server.venv}, model {server.model_dir}")


@app.command()
def serve(
    port: Annotated[int, typer.Option(help="Port on 127.0.0.1 (0: a free one).")] = 0,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for it to answer.")] = 900.0,
) -> None:
    """Start vLLM's OpenAI server with SmolLM2-135M-Instruct on loopback; print its URL."""
    from generalist import EmbeddedServer

    state = EmbeddedServer().start(port=port, timeout_s=timeout)
    typer.echo(state.url)


@app.command()
def stop() -> None:
    """Stop the embedded generalist."""
    from generalist import EmbeddedServer

    typer.echo("stopped" if EmbeddedServer().stop() else "not running")


@app.command()
def status() -> None:
    """Print the running generalist's URL (exit 1 when none runs)."""
    from generalist import EmbeddedServer

    state = EmbeddedServer().state()
    if state is None:
        typer.echo("not running", err=True)
        raise typer.Exit(1)
    typer.echo(state.url)


@app.command("meddr-recipe")
def meddr_recipe(
    model: Annotated[str, typer.Option(help="MedDr's weights on the GPU machine (a path).")],
    out: Annotated[Path, typer.Option(help="Folder to write the recipe into.")],
    gpus: Annotated[int, typer.Option(min=1, help="GPUs for tensor parallelism.")] = 2,
    port: Annotated[int, typer.Option(min=1, max=65535, help="The server's port.")] = 8000,
) -> None:
    """Write what a GPU machine needs to serve MedDr for the hub (template, command, settings)."""
    from generalist import write_meddr_recipe

    for path in write_meddr_recipe(out, model, gpus, port):
        typer.echo(path)
