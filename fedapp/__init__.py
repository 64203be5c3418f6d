"""The GSCo Flower app: what a hospital's SuperNode and the consortium's SuperLink run.

Flower separates apps from runtimes, and so does this package: the same
ClientApp (:func:`make_client_app`) and ServerApp (:func:`make_server_app`)
run in Flower's simulation runtime (``gsco simulate``, :class:`FlowerRuntime`)
and on the consortium's deployed SuperLink and the hospitals' SuperNodes
(``gsco federation run``, ``gsco site join``; :mod:`fedapp.deployed`, the FAB
in ``fedapp/flower_app``). Where a site's job comes from and how it behaves are
fixed when the app is made: a deployed site reads its own node config and is
honest (:class:`SiteBehaviour`); only a simulation wires in its jobs files and
its attackers.

A site's work is the site agent's own use cases (:func:`run_site_job`, and
:mod:`fedapp._tune_job` for the generalist's adapter: evidence examples, local
rounds, policy scoring, co-signing); every FedAvg is screened and robust
(:func:`robust_strategy`).
"""

from fedapp._aggregation import AGGREGATIONS, Screening, default_aggregation, robust_strategy
from fedapp._behaviour import SiteBehaviour
from fedapp._client import (
    JobSource,
    NodeJobs,
    ScenarioJobs,
    deployed_job,
    make_client_app,
    without_paths,
)
from fedapp._compat import FLOWER_QUIET_ENV
from fedapp._evaluate import HUB_MODES, Evaluation, evaluate_through_hub
from fedapp._runtime import APP_DIR, FlowerRuntime
from fedapp._server import make_server_app
from fedapp._site_job import (
    SiteJob,
    SiteOutcome,
    local_update,
    run_site_job,
    training_options,
    usable_state,
)
from fedapp._tune import deployed_tune_job
from fedapp._tune_job import TuneJob
from fedapp.errors import AppError, FlowerRuntimeError, JobError, SiteDroppedOutError, SiteStepError

__all__ = [
    "AGGREGATIONS",
    "APP_DIR",
    "FLOWER_QUIET_ENV",
    "HUB_MODES",
    "AppError",
    "Evaluation",
    "FlowerRuntime",
    "FlowerRuntimeError",
    "JobError",
    "JobSource",
    "NodeJobs",
    "ScenarioJobs",
    "Screening",
    "SiteBehaviour",
    "SiteDroppedOutError",
    "SiteJob",
    "SiteOutcome",
    "SiteStepError",
    "TuneJob",
    "default_aggregation",
    "deployed_job",
    "deployed_tune_job",
    "evaluate_through_hub",
    "local_update",
    "make_client_app",
    "make_server_app",
    "robust_strategy",
    "run_site_job",
    "training_options",
    "usable_state",
    "without_paths",
]
