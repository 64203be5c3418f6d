"""Errors of the simulations.

::

    SimulationError
    ├── ScenarioError      a scenario that cannot run (bad partition, too few images, bad options)
    └── SimulationFailed   the simulation ran but could not produce its report
"""

from __future__ import annotations

from protocol.errors import GscoError

__all__ = ["ScenarioError", "SimulationError", "SimulationFailed"]


class SimulationError(GscoError):
    """Root of the simulations' errors."""


class ScenarioError(SimulationError):
    """A scenario that cannot run as asked."""


class SimulationFailed(SimulationError):  # noqa: N818 - reads as a state, like TimeoutExpired
    """The simulation ran but could not produce its report."""
