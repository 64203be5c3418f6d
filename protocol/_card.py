"""The specialist card: the frozen description that travels inside every signed bundle."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Literal

from pydantic import (
    AwareDatetime,
    Field,
    PositiveFloat,
    Strict,
    StringConstraints,
    model_validator,
)

from protocol._base import (
    PRINTABLE,
    Count,
    Identifier,
    Label,
    PositiveCount,
    StrictModel,
    UnitFloat,
    Version,
)
from protocol._task import Modality, TaskSpec, TaskType, check_label_set

__all__ = [
    "DataSummary",
    "DifferentialPrivacy",
    "FederatedTraining",
    "HeldOutMetrics",
    "IndexMode",
    "IndexPrivacy",
    "Preprocessing",
    "RecipeTrial",
    "ResizePolicy",
    "SpecialistCard",
    "TrainingRecipe",
]


class ResizePolicy(StrEnum):
    """How an image of another size is brought to the model's input size."""

    RESIZE = "resize"  # stretch to (height, width)
    LETTERBOX = "letterbox"  # keep aspect ratio, pad with zeros
    CENTER_CROP = "center_crop"  # resize the short side, crop the centre


class Preprocessing(StrictModel):
    """What the hub does to an image before ``model.onnx`` sees it.

    Pixels are scaled to [0, 1], resized by ``resize``, then normalised per
    channel: ``(x - mean) / std``. ``channels`` is 1 (grey) or 3 (RGB).
    """

    input_size: tuple[
        Annotated[int, Strict(), Field(ge=8, le=2048)],
        Annotated[int, Strict(), Field(ge=8, le=2048)],
    ]
    channels: Literal[1, 3]
    mean: tuple[float, ...]
    std: tuple[PositiveFloat, ...]
    resize: ResizePolicy = ResizePolicy.RESIZE

    @model_validator(mode="after")
    def _per_channel(self) -> Preprocessing:
        if len(self.mean) != self.channels or len(self.std) != self.channels:
            raise ValueError(
                f"mean and std need one value per channel ({self.channels}), "
                f"got {len(self.mean)} and {len(self.std)}"
            )
        return self


class HeldOutMetrics(StrictModel):
    """Metrics on a split the model never trained or calibrated on."""

    split: Literal["test", "val"] = "test"
    n: PositiveCount
    accuracy: UnitFloat
    macro_auc: UnitFloat | None = None
    macro_f1: UnitFloat
    ece: UnitFloat | None = None
    per_class_recall: dict[Label, UnitFloat]
    #: Ordinal tasks only: quadratic weighted kappa and mean absolute error in grades.
    quadratic_weighted_kappa: Annotated[float, Field(ge=-1.0, le=1.0)] | None = None
    mean_absolute_error: Annotated[float, Field(ge=0.0, le=255.0)] | None = None


class DataSummary(StrictModel):
    """Coarse counts only: nothing here may identify a patient or an image."""

    source: Annotated[str, StringConstraints(max_length=100), PRINTABLE]
    n_train: Count
    n_val: Count
    n_test: Count
    train_class_counts: dict[Label, Count]


class IndexMode(StrEnum):
    """What ``index.npz`` holds."""

    PROTOTYPE = "prototype"  # class-conditional cluster means of >= k images (default)
    RAW = "raw"  # one row per training image: an explicit opt-in
    NONE = "none"  # no retrieval index published


class IndexPrivacy(StrictModel):
    """The privacy settings of the published retrieval index."""

    mode: IndexMode
    min_group_size: PositiveCount | None = None  # k, for prototypes
    noise_std: Annotated[float, Field(ge=0.0)] = 0.0  # Gaussian noise added to each row
    embedding_dim: Annotated[int, Strict(), Field(ge=1, le=65536)]
    entries_per_class: dict[Label, Count]
    metric: Literal["cosine"] = "cosine"

    @model_validator(mode="after")
    def _k_for_prototypes(self) -> IndexPrivacy:
        if self.mode is IndexMode.PROTOTYPE and self.min_group_size is None:
            raise ValueError("a prototype index must record its minimum group size k")
        return self


class DifferentialPrivacy(StrictModel):
    """The privacy budget spent by DP-SGD training."""

    epsilon: PositiveFloat
    delta: Annotated[float, Field(gt=0.0, lt=1.0)]
    accountant: Annotated[str, StringConstraints(max_length=40), PRINTABLE]
    max_grad_norm: PositiveFloat
    noise_multiplier: Annotated[float, Field(ge=0.0)]


ShortText = Annotated[str, StringConstraints(max_length=300), PRINTABLE]


class RecipeTrial(StrictModel):
    """One candidate of the recipe search, scored on the validation split."""

    name: ShortText
    epochs: Count
    val_loss: Annotated[float, Field(ge=0.0, allow_inf_nan=False)]
    val_auc: UnitFloat | None = None
    kept: bool


class TrainingRecipe(StrictModel):
    """How the specialist was trained: the recipe chosen and the trials it was chosen from."""

    input_size: Annotated[int, Strict(), Field(ge=8, le=2048)]
    batch_size: PositiveCount
    learning_rate: Annotated[float, Field(gt=0.0, le=10.0, allow_inf_nan=False)]
    epochs: Count
    patience: PositiveCount
    flip: bool
    #: softmax, or cumulative-link (ordinal: its logits are log-probabilities).
    head: Literal["softmax", "cumulative-link"] = "softmax"
    search: ShortText
    trials: Annotated[tuple[RecipeTrial, ...], Field(max_length=16)] = ()


class FederatedTraining(StrictModel):
    """How a shared specialist was co-trained by several sites (Flower), if it was.

    Every participating site publishes the same shared weights under its own
    signature, calibrated on and indexing only its own data.
    """

    framework: Literal["flower"] = "flower"
    # How the sites' updates were combined (FedAvg, or one of Flower's robust strategies).
    strategy: Literal["fedavg", "trimmed-mean", "median", "krum"] = "fedavg"
    rounds: PositiveCount
    sites: PositiveCount  # sites that took part
    local_epochs: PositiveCount
    differential_privacy: DifferentialPrivacy | None = None  # server-side clipping and noise


class SpecialistCard(StrictModel):
    """Everything a hub, a registry and an auditor need to know about one specialist."""

    schema_version: Literal[1] = 1
    task_id: Identifier
    modality: Modality
    labels: Annotated[tuple[Label, ...], Field(min_length=2, max_length=256)]
    task_type: TaskType
    backbone: Identifier
    preprocessing: Preprocessing
    calibration_temperature: PositiveFloat = 1.0
    metrics: HeldOutMetrics
    data_summary: DataSummary
    index: IndexPrivacy
    training_privacy: DifferentialPrivacy | None = None
    federation: FederatedTraining | None = None
    training_recipe: TrainingRecipe | None = None
    site_id: Identifier
    version: Version
    license: Annotated[str, StringConstraints(min_length=1, max_length=64), PRINTABLE]
    created_at: AwareDatetime

    @model_validator(mode="after")
    def _labels_consistent(self) -> SpecialistCard:
        check_label_set(self.labels, self.task_type)
        labels = set(self.labels)
        for name, keys in (
            ("metrics.per_class_recall", self.metrics.per_class_recall),
            ("data_summary.train_class_counts", self.data_summary.train_class_counts),
            ("index.entries_per_class", self.index.entries_per_class),
        ):
            unknown = set(keys) - labels
            if unknown:
                raise ValueError(f"{name} names labels not in the label set: {sorted(unknown)}")
        return self

    def task_spec(self) -> TaskSpec:
        """The task this specialist answers, as a :class:`TaskSpec`."""
        return TaskSpec(
            task_id=self.task_id,
            modality=self.modality,
            labels=self.labels,
            task_type=self.task_type,
        )
