"""Sub-commands of the design whose implementation is still to come."""

from __future__ import annotations

from gsco.cli._common import not_built


def simulate() -> None:
    """Simulate many hospital sites with Flower and write the evaluation report."""
    not_built("simulate", 7)
