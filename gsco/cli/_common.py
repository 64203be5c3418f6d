"""Helpers shared by the sub-commands: the one place errors become exit codes."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, NoReturn

import typer
from rich.console import Console

# FedAvg options shared by 'gsco simulate' and 'gsco federation run'.
FedAvgLocalEpochsOption = Annotated[int, typer.Option(min=1, help="Local epochs per FedAvg round.")]
DpNoiseOption = Annotated[
    float, typer.Option(min=0.0, help="DP-FedAvg noise multiplier (0: no DP).")
]
DpClipOption = Annotated[float, typer.Option(min=0.0, help="DP-FedAvg clipping norm.")]
AggregationOption = Annotated[
    str | None,
    typer.Option(
        help="How FedAvg combines the sites' updates: fedavg, trimmed-mean, median, krum "
        "(Flower's strategies; default: trimmed-mean from 3 sites up, else fedavg). "
        "Updates are screened and clipped first, whatever the choice."
    ),
]
HealthAddressOption = Annotated[
    str | None,
    typer.Option(
        help="host:port where Flower serves the standard gRPC health service, without TLS "
        "(keep it on loopback; 'gsco federation health' asks it)."
    ),
]


#: The width of output that is not a terminal's: lines are never wrapped for a file or a pipe.
UNWRAPPED_WIDTH = 100_000


def console(*, stderr: bool = False) -> Console:
    """A rich console that never breaks a line mid-value.

    At a terminal, rich's width (the terminal's) and long text folded softly by
    the terminal itself; piped or redirected, no width limit at all (rich would
    assume 80 columns and break ``AUC 0.985`` across lines).
    """
    found = Console(stderr=stderr, soft_wrap=True)
    if not found.is_terminal:
        found = Console(stderr=stderr, soft_wrap=True, width=UNWRAPPED_WIDTH)
    return found


def fail(message: str, code: int = 1) -> NoReturn:
    """Prints ``error: message`` on stderr and exits with ``code``."""
    typer.secho(f"error: {message}", err=True, fg=typer.colors.RED)
    raise typer.Exit(code)


def check_grpc_health(
    what: str,
    target: str,
    *,
    service: str = "",
    ca: Path | None = None,
    timeout_s: float = 5.0,
) -> None:
    """Asks ``target``'s standard gRPC health service: prints ``WHAT TARGET: SERVING``.

    Fails (exit 1) with what was wrong otherwise. The health commands images run.
    """
    from protocol import grpc_health
    from protocol.errors import HealthCheckError

    try:
        status = grpc_health(
            target,
            service=service,
            root_certificates=ca.read_bytes() if ca is not None else None,
            timeout_s=timeout_s,
        )
    except HealthCheckError as exc:
        fail(f"{what} {exc}")
    if status != "SERVING":
        fail(f"{what} {target}: {status}")
    typer.echo(f"{what} {target}: {status}")
