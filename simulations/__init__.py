"""Simulations of many hospital sites: Flower, a registry, a hub, the generalist, the report.

:func:`run_scenario` runs one :class:`Scenario` end to end (``gsco simulate``,
``gsco demo``); :func:`write_report` turns its result into ``results.json``,
``report.md`` and plots. The pieces (partitioning, bootstrap scores, the
Flower apps, the evaluation through the hub) are public for reuse in
benchmarks.
"""

from simulations._evaluate import HUB_MODES, Evaluation, evaluate_through_hub
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
from simulations._runtime import APP_DIR, FlowerRuntime
from simulations._site_job import (
    FAULTS,
    SiteDroppedOut,
    SiteJob,
    SiteOutcome,
    local_update,
    run_site_job,
    training_options,
    usable_state,
)
from simulations.errors import ScenarioError, SimulationError, SimulationFailedError

__all__ = [
    "APP_DIR",
    "FAULTS",
    "HUB_MODES",
    "AttackResult",
    "Evaluation",
    "FlowerRuntime",
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
    "SiteDroppedOut",
    "SiteJob",
    "SiteOutcome",
    "attack_auc",
    "build_report",
    "candidate_pool",
    "evaluate_through_hub",
    "local_update",
    "loss_attack_auc",
    "membership_table",
    "partition",
    "rad_accuracy",
    "run_scenario",
    "run_site_job",
    "scenario_dict",
    "score_method",
    "training_options",
    "usable_state",
    "write_report",
]
