"""``gsco generalist``: the embedded CPU generalists (vLLM + SmolLM2, or the tiny MedDr)."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from generalist import EmbeddedServer

app = typer.Typer(help="The generalist model server (vLLM).", no_args_is_help=True)


class Served(StrEnum):
    """Which model the embedded server runs."""

    SMOLLM2 = "smollm2"  # SmolLM2-135M-Instruct: text only
    TINY_MEDDR = "tiny-meddr"  # MedDr's architecture, random weights, the MedDr recipe


_MODEL = Annotated[
    Served,
    typer.Option(
        "--model",
        help="smollm2 (text only) or tiny-meddr (MedDr's architecture at tiny scale, random "
        "weights: it sees the image; its answers are noise).",
    ),
]


def _server(model: Served) -> EmbeddedServer:
    from generalist import EmbeddedServer, TinyMeddrServer

    return TinyMeddrServer() if model is Served.TINY_MEDDR else EmbeddedServer()


@app.command()
def prepare(model: _MODEL = Served.SMOLLM2) -> None:
    """Create the vLLM CPU environment and the model's folder (once; cached)."""
    from generalist import TinyMeddrServer

    server = _server(model)
    server.prepare()
    folder = server.checkpoint if isinstance(server, TinyMeddrServer) else server.model_dir
    typer.echo(f"ready: environment {server.venv}, model {folder}")


@app.command()
def serve(
    port: Annotated[int, typer.Option(help="Port on 127.0.0.1 (0: a free one).")] = 0,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for it to answer.")] = 900.0,
    model: _MODEL = Served.SMOLLM2,
    tensor_parallel: Annotated[
        int, typer.Option(min=1, help="Split the model over this many ranks (one core each).")
    ] = 1,
) -> None:
    """Start vLLM's OpenAI server on loopback with the chosen model; print its URL.

    tiny-meddr is served with MedDr's own recipe (gsco generalist meddr-recipe):
    point a hub at it with --generalist-settings SETTINGS, the file this prints
    after the URL.
    """
    from generalist import TinyMeddrServer

    server = _server(model)
    state = server.start(port=port, timeout_s=timeout, tensor_parallel=tensor_parallel)
    typer.echo(state.url)
    if isinstance(server, TinyMeddrServer):
        typer.echo(server.write_settings(state))


@app.command()
def stop(model: _MODEL = Served.SMOLLM2) -> None:
    """Stop the embedded generalist."""
    typer.echo("stopped" if _server(model).stop() else "not running")


@app.command()
def status(model: _MODEL = Served.SMOLLM2) -> None:
    """Print the running generalist's URL (exit 1 when none runs)."""
    state = _server(model).state()
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


@app.command("make-tiny-meddr")
def make_tiny_meddr(
    out: Annotated[Path, typer.Option(help="A new folder for the checkpoint.")],
    tokenizer_from: Annotated[
        Path | None,
        typer.Option(help="A folder with SmolLM2's tokenizer.json (default: the embedded one)."),
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the random weights.")] = 0,
) -> None:
    """Write a tiny random-weight InternVL-Chat-V1-2 (MedDr's architecture, a few MB).

    For testing the MedDr path without MedDr's weights: vLLM serves it with the
    MedDr recipe; it sees images; its answers are noise.
    """
    from generalist import EmbeddedServer
    from generalist import make_tiny_meddr as make

    if tokenizer_from is None:
        server = EmbeddedServer()
        server.prepare()
        tokenizer_from = server.model_dir
    made = make(out, tokenizer_from, seed)
    typer.echo(
        f"{made.path}: {made.parameters:,} parameters, {made.size_bytes / 1e6:.1f} MB "
        f"(seed {made.seed}; random weights, not a medical model)"
    )
