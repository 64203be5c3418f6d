"""The diagnosis API's request and response documents."""

from __future__ import annotations

import base64
import binascii
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import (
    Field,
    PositiveFloat,
    Strict,
    StrictBool,
    StringConstraints,
    field_validator,
    model_validator,
)

from protocol._base import (
    PRINTABLE,
    Count,
    Identifier,
    Label,
    PositiveCount,
    Sha256Hex,
    StrictModel,
    UnitFloat,
    Version,
)

__all__ = [
    "ArbitrationPolicy",
    "DiagnoseRequest",
    "DiagnoseResponse",
    "ErrorDetail",
    "ErrorResponse",
    "GeneralistUse",
    "ImagePayload",
    "MediaType",
    "Mode",
    "ModePolicy",
    "RetrievedCase",
    "SpecialistPrediction",
    "SpecialistProvenance",
    "StageTimings",
]

#: Upper bound on a base64 image inside a JSON request; the hub applies its own lower limit.
MAX_INLINE_IMAGE_CHARS = 64 * 1024 * 1024


class Mode(StrEnum):
    """How the hub arbitrates between specialists and the generalist."""

    GSCO = "gsco"  # MoED + RAD evidence, generalist decides (the default)
    MOED = "moed"  # specialists' labels as evidence, generalist decides
    RAD = "rad"  # retrieved similar cases as evidence, generalist decides
    GENERALIST = "generalist"  # generalist alone
    VOTING = "voting"  # majority over specialists' labels (the paper's baseline)
    ENSEMBLE = "ensemble"  # mean of calibrated probabilities; the fallback


class MediaType(StrEnum):
    """Image encodings the hub accepts."""

    PNG = "image/png"
    JPEG = "image/jpeg"
    DICOM = "application/dicom"
    NPY = "application/x-npy"


class ImagePayload(StrictModel):
    """An image inline in a JSON request, base64-encoded."""

    media_type: MediaType
    data_base64: Annotated[str, StringConstraints(min_length=4, max_length=MAX_INLINE_IMAGE_CHARS)]

    @field_validator("data_base64")
    @classmethod
    def _is_base64(cls, value: str) -> str:
        try:
            base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ValueError("data_base64 is not valid base64") from exc
        return value

    def decode(self) -> bytes:
        """The image bytes."""
        return base64.b64decode(self.data_base64, validate=True)


class DiagnoseRequest(StrictModel):
    """``POST /v1/diagnose`` as JSON."""

    schema_version: Literal[1] = 1
    task_id: Identifier
    image: ImagePayload
    mode: Mode = Mode.GSCO
    top_k: Annotated[int, Strict(), Field(ge=1, le=50)] = 5
    fhir: StrictBool = False


class SpecialistProvenance(StrictModel):
    """Which signed bundle a piece of evidence came from."""

    bundle_digest: Sha256Hex
    site_id: Identifier
    backbone: Identifier
    version: Version
    federated: bool = False  # the shared specialist the site co-trained with others
    dp_epsilon: PositiveFloat | None = None  # DP-SGD budget the weights were trained under
    dp_delta: Annotated[float, Field(gt=0.0, lt=1.0)] | None = None


class SpecialistPrediction(StrictModel):
    """MoED evidence: one specialist's calibrated answer."""

    specialist: SpecialistProvenance
    label: Label
    probability: UnitFloat
    probabilities: dict[Label, UnitFloat]


class RetrievedCase(StrictModel):
    """RAD evidence: one similar case from a specialist's published index."""

    label: Label
    similarity: Annotated[float, Field(ge=-1.0, le=1.0)]
    site_id: Identifier
    bundle_digest: Sha256Hex


class GeneralistUse(StrictModel):
    """What the generalist was asked and how, and how its label scores were calibrated.

    ``raw_scores`` are the label probabilities the model gave (under the
    label-set constraint); the response's ``scores`` are those after
    ``calibration`` (``none``, ``contextual`` or ``contextual+bias``; see
    :mod:`generalist._calibration`). The answer is the best calibrated label.
    """

    model: Annotated[str, StringConstraints(max_length=200)]
    saw_image: bool
    prompt: str
    raw_answer: str
    latency_ms: Annotated[float, Field(ge=0.0)]
    raw_scores: dict[Label, UnitFloat] | None = None
    calibration: Literal["none", "contextual", "contextual+bias"] = "none"
    calibrated_scores: dict[Label, UnitFloat] | None = None
    # The task's arbitration policy, when one weighed this answer against the ensemble:
    policy_weight: Annotated[float, Field(ge=0.0, le=100.0)] | None = None
    overturned_ensemble: bool = False  # the answer differs from the ensemble's
    # What the policy weighed the generalist against (its ``base``), when a policy did.
    policy_base: Literal["ensemble", "voting"] | None = None
    # The signed LoRA adapter that answered (its bundle digest); None: the base model.
    adapter_digest: Sha256Hex | None = None
    # Over how many orders of the options the scores are averaged (2: as given and reversed,
    # see generalist.ReversedOrderAveraging); ``prompt`` is the order as given.
    option_orders: Annotated[int, Field(strict=True, ge=1, le=64)] = 1


class StageTimings(StrictModel):
    """Milliseconds spent per stage of one request (absent stages did not run)."""

    decode_ms: Annotated[float, Field(ge=0.0)] | None = None
    specialists_ms: Annotated[float, Field(ge=0.0)] | None = None
    retrieval_ms: Annotated[float, Field(ge=0.0)] | None = None
    generalist_ms: Annotated[float, Field(ge=0.0)] | None = None
    total_ms: Annotated[float, Field(ge=0.0)]


class DiagnoseResponse(StrictModel):
    """The hub's answer, with every piece of evidence and its provenance."""

    schema_version: Literal[1] = 1
    request_id: Annotated[str, StringConstraints(min_length=1, max_length=64)]
    task_id: Identifier
    label: Label
    scores: dict[Label, UnitFloat] | None = None
    mode_requested: Mode
    mode_used: Mode
    degraded: bool = False
    generalist_saw_image: bool = False
    moed: tuple[SpecialistPrediction, ...] = ()
    rad: tuple[RetrievedCase, ...] = ()
    specialists: tuple[SpecialistProvenance, ...] = ()
    registry_snapshot_version: Count | None = None
    generalist: GeneralistUse | None = None
    timings: StageTimings
    warnings: tuple[str, ...] = ()


class ErrorDetail(StrictModel):
    """What went wrong: the error's type name and a message for people."""

    type: Annotated[str, StringConstraints(min_length=1, max_length=100)]
    message: Annotated[str, StringConstraints(max_length=4000)]


class ErrorResponse(StrictModel):
    """The body of every error the diagnosis API answers with, 4xx and 5xx alike."""

    error: ErrorDetail
    request_id: Annotated[str, StringConstraints(min_length=1, max_length=64)]


_Key40 = Annotated[str, StringConstraints(max_length=40), PRINTABLE]
_ModelText = Annotated[str, StringConstraints(min_length=1, max_length=200), PRINTABLE]


class ModePolicy(StrictModel):
    """How far one mode's generalist answer is trusted against the specialists' answer.

    The answer is ``argmax log p_base + generalist_weight * log q_generalist``
    (``q`` calibrated); a weight of 0 is the specialists' answer itself.
    ``base`` says which: ``ensemble``, their mean calibrated probabilities, or
    ``voting``, their plurality vote with ties broken by the mean, scored
    ``(votes + mean) / (n + 1)`` (see ``hub.vote_scores``). ``q`` is the
    generalist's contextually calibrated scores, and where ``label_bias`` is
    given, those times ``exp(label_bias)`` (renormalised): a per-label
    correction fitted on the same validation evidence (calibration
    ``contextual+bias``).
    """

    generalist_weight: Annotated[float, Field(ge=0.0, le=100.0)]
    base: Literal["ensemble", "voting"] = "ensemble"
    validation_accuracy: dict[
        Annotated[str, StringConstraints(max_length=40), PRINTABLE], UnitFloat
    ]
    weights_tried: dict[Annotated[str, StringConstraints(max_length=20), PRINTABLE], UnitFloat]
    # The gate's one-sided McNemar p-value against the base on validation: of the weight
    # trusted, or (weight 0) of the most accurate weight, which did not pass hub.SIGNIFICANCE.
    # None in policies fitted before it was recorded.
    gate_p_value: UnitFloat | None = None
    # The generalist this mode was fitted on, when not the policy's ``model`` (an adapter
    # that learnt only this mode's prompts).
    model: _ModelText | None = None
    # Log bias per label (the policy's label order), added to the calibrated log scores.
    label_bias: (
        Annotated[
            tuple[Annotated[float, Field(ge=-20.0, le=20.0, allow_inf_nan=False)], ...],
            Field(min_length=2, max_length=256),
        ]
        | None
    ) = None
    # A federated fit: of the sites whose answers it counted (ArbitrationPolicy.sites), how
    # many saw the trusted weight fix more of their own cases than it broke (None: fitted in
    # one place, or before it was recorded).
    sites_agreeing: Count | None = None


class ArbitrationPolicy(StrictModel):
    """A task's arbitration policy, fitted on validation evidence, never on test."""

    schema_version: Literal[1] = 1
    task_id: Identifier
    labels: Annotated[tuple[Label, ...], Field(min_length=2, max_length=256)]
    model: Annotated[
        str, StringConstraints(min_length=1, max_length=200), PRINTABLE
    ]  # the generalist
    fitted_on: Literal["validation"] = "validation"
    n_examples: PositiveCount
    modes: dict[Mode, ModePolicy]
    recommended_mode: Mode = Mode.GSCO  # the best on validation (ensemble if none beat it)
    # A federated fit (hub.fit_policy_from_answers): the sites whose answers it counted,
    # and those it left out with why (inconsistent or out-of-bound answers, no answer).
    sites: Annotated[tuple[Identifier, ...], Field(max_length=1000)] = ()
    sites_excluded: Annotated[
        dict[Identifier, Annotated[str, StringConstraints(max_length=300), PRINTABLE]],
        Field(max_length=1000),
    ] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _bias_per_label(self) -> ArbitrationPolicy:
        if set(self.sites) & set(self.sites_excluded):
            raise ValueError("a site is both counted and excluded")
        for mode, fitted in self.modes.items():
            if fitted.sites_agreeing is not None and fitted.sites_agreeing > len(self.sites):
                raise ValueError(
                    f"mode {mode.value}: {fitted.sites_agreeing} sites agreeing, "
                    f"{len(self.sites)} counted"
                )
            if fitted.label_bias is not None and len(fitted.label_bias) != len(self.labels):
                raise ValueError(
                    f"mode {mode.value}: {len(fitted.label_bias)} label biases for "
                    f"{len(self.labels)} labels"
                )
        return self
