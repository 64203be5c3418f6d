"""Helpers shared by the sub-commands: the one place errors become exit codes."""

from __future__ import annotations

from typing import NoReturn

import typer

#: Exit status for a command that exists in the design but is not built yet.
EXIT_NOT_BUILT = 3


def fail(message: str, code: int = 1) -> NoReturn:
    """Prints ``error: message`` on stderr and exits with ``code``."""
    typer.secho(f"error: {message}", err=True, fg=typer.colors.RED)
    raise typer.Exit(code)


def not_built(command: str, issue: int) -> NoReturn:
    """Reports that ``command`` is designed but not built yet, and exits."""
    typer.secho(
        f"'gsco {command}' is not built yet (tracked in issue #{issue}).",
        err=True,
        fg=typer.colors.YELLOW,
    )
    raise typer.Exit(EXIT_NOT_BUILT)
