"""The Flower app of a simulation: fedapp's apps, wired with the scenario's jobs and attackers.

The simulated sites read their jobs from the jobs files the run names (by
partition) and act out the faults their jobs name
(:class:`simulations._faults.ScenarioBehaviour`). The consortium's deployed app
(:mod:`fedapp.deployed`) wires neither.
"""

from pathlib import Path

from fedapp import ScenarioJobs, make_client_app, make_server_app
from simulations._faults import ScenarioBehaviour

__all__ = ["APP_DIR", "client_app", "server_app"]

#: The simulation's Flower app folder (what Flower's simulation runtime runs).
APP_DIR = Path(__file__).resolve().parent / "flower_app"

client_app = make_client_app(ScenarioJobs(), ScenarioBehaviour())
server_app = make_server_app(simulated=True)
