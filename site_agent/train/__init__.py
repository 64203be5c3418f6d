"""Training specialists: the backbone zoo, the training loop, calibration and metrics."""

from site_agent.train._dp import (
    DPConfig,
    FrozenNorm,
    freeze_batchnorm,
    prepare_for_dp,
    replace_batchnorm,
)
from site_agent.train._loop import (
    EpochReport,
    TrainConfig,
    TrainedSpecialist,
    TrainingObserver,
    TrainingRun,
    train_specialist,
)
from site_agent.train._metrics import (
    Evaluation,
    evaluate,
    expected_calibration_error,
    fit_temperature,
)
from site_agent.train._recipe import (
    DEFAULT_MAX_MINUTES,
    RUNG_STEPS,
    SMALL_SET,
    Recipe,
    RecipeFlags,
    Trial,
    plan_recipe,
    train_with_recipe,
)
from site_agent.train._zoo import (
    BackboneSpec,
    BackboneZoo,
    CumulativeLinkHead,
    HeadKind,
    SpecialistNet,
    WeightsPolicy,
    build_specialist,
    default_zoo,
)

__all__ = [
    "DEFAULT_MAX_MINUTES",
    "RUNG_STEPS",
    "SMALL_SET",
    "BackboneSpec",
    "BackboneZoo",
    "CumulativeLinkHead",
    "DPConfig",
    "EpochReport",
    "Evaluation",
    "FrozenNorm",
    "HeadKind",
    "Recipe",
    "RecipeFlags",
    "SpecialistNet",
    "TrainConfig",
    "TrainedSpecialist",
    "TrainingObserver",
    "TrainingRun",
    "Trial",
    "WeightsPolicy",
    "build_specialist",
    "default_zoo",
    "evaluate",
    "expected_calibration_error",
    "fit_temperature",
    "freeze_batchnorm",
    "plan_recipe",
    "prepare_for_dp",
    "replace_batchnorm",
    "train_specialist",
    "train_with_recipe",
]
