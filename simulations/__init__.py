"""Simulations of many hospital sites: Flower, a registry, a hub, the generalist, the report.

:func:`run_scenario` runs one :class:`Scenario` end to end (``gsco simulate``,
``gsco demo``); :func:`write_report` turns its result into ``results.json``,
``report.md`` and plots. The pieces (partitioning, bootstrap scores, membership
inference) are public for reuse in benchmarks. The Flower app itself is
:mod:`fedapp`; a simulation wires it with its jobs files and its attackers
(:mod:`simulations._apps`, :mod:`simulations._faults`).
"""

from simulations._apps import APP_DIR
from simulations._faults import ADAPTER_FAULTS, FAULTS
from simulations._membership import (
    AttackResult,
    attack_auc,
    candidate_pool,
    loss_attack_auc,
    membership_table,
    rad_accuracy,
)
from simulations._metrics import Interval, MethodScore, score_method
from simulations._partition import Partition, PartitionSpec, partition
from simulations._report import build_report, write_report
from simulations._run import Progress, Scenario, SimulationResult, run_scenario, scenario_dict
from simulations.errors import ScenarioError, SimulationError, SimulationFailedError

__all__ = [
    "ADAPTER_FAULTS",
    "APP_DIR",
    "FAULTS",
    "AttackResult",
    "Interval",
    "MethodScore",
    "Partition",
    "PartitionSpec",
    "Progress",
    "Scenario",
    "ScenarioError",
    "SimulationError",
    "SimulationFailedError",
    "SimulationResult",
    "attack_auc",
    "build_report",
    "candidate_pool",
    "loss_attack_auc",
    "membership_table",
    "partition",
    "rad_accuracy",
    "run_scenario",
    "scenario_dict",
    "score_method",
    "write_report",
]
