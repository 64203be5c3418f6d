"""Errors of the simulations.

::

    SimulationError
    ├── ScenarioError      a scenario that cannot run (bad partition, too few images, bad options)
    └── SimulationFailedError   the simulation ran but could not produce its report
"""

from __future__ import annotations

from protocol.errors import GscoError

__all__ = ["ScenarioError", "SimulationError", "SimulationFailedError"]


class SimulationError(GscoError):
    """Root of the simulations' errors."""


class ScenarioError(SimulationError):
    """A scenario that cannot run as asked."""


class SimulationFailedError(SimulationError):
    """The simulation ran but could not produce its report."""
