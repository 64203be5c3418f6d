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
    train_specialist,
)
from site_agent.train._metrics import (
    Evaluation,
    evaluate,
    expected_calibration_error,
    fit_temperature,
)
from site_agent.train._zoo import (
    BackboneSpec,
    BackboneZoo,
    SpecialistNet,
    WeightsPolicy,
    build_specialist,
    default_zoo,
)

__all__ = [
    "BackboneSpec",
    "BackboneZoo",
    "DPConfig",
    "EpochReport",
    "Evaluation",
    "FrozenNorm",
    "SpecialistNet",
    "TrainConfig",
    "TrainedSpecialist",
    "TrainingObserver",
    "WeightsPolicy",
    "build_specialist",
    "default_zoo",
    "evaluate",
    "expected_calibration_error",
    "fit_temperature",
    "freeze_batchnorm",
    "prepare_for_dp",
    "replace_batchnorm",
    "train_specialist",
]
