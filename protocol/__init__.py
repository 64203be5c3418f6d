"""Wire schemas, canonical encodings and the registry's protobuf conversions.

Everything that crosses a process or trust boundary is one of these models:
strict (unknown fields are errors), versioned (``schema_version``) and immutable.
"""

from protocol._artifacts import (
    INDEX_KEYS,
    ArtifactError,
    OnnxSummary,
    check_index,
    check_onnx,
    load_index,
)
from protocol._base import Identifier, Label, Sha256Hex, StrictModel
from protocol._canonical import canonical_digest, canonical_json
from protocol._card import (
    DataSummary,
    DifferentialPrivacy,
    HeldOutMetrics,
    IndexMode,
    IndexPrivacy,
    Preprocessing,
    ResizePolicy,
    SpecialistCard,
)
from protocol._diagnosis import (
    DiagnoseRequest,
    DiagnoseResponse,
    GeneralistUse,
    ImagePayload,
    MediaType,
    Mode,
    RetrievedCase,
    SpecialistPrediction,
    SpecialistProvenance,
    StageTimings,
)
from protocol._preprocess import preprocess
from protocol._registry import BundleRef, SiteKey
from protocol._task import TaskSpec, TaskType
from protocol.errors import EncodingError, GscoError, ProtocolError, SchemaError

__all__ = [
    "INDEX_KEYS",
    "ArtifactError",
    "BundleRef",
    "DataSummary",
    "DiagnoseRequest",
    "DiagnoseResponse",
    "DifferentialPrivacy",
    "EncodingError",
    "GeneralistUse",
    "GscoError",
    "HeldOutMetrics",
    "Identifier",
    "ImagePayload",
    "IndexMode",
    "IndexPrivacy",
    "Label",
    "MediaType",
    "Mode",
    "OnnxSummary",
    "Preprocessing",
    "ProtocolError",
    "ResizePolicy",
    "RetrievedCase",
    "SchemaError",
    "Sha256Hex",
    "SiteKey",
    "SpecialistCard",
    "SpecialistPrediction",
    "SpecialistProvenance",
    "StageTimings",
    "StrictModel",
    "TaskSpec",
    "TaskType",
    "canonical_digest",
    "canonical_json",
    "check_index",
    "check_onnx",
    "load_index",
    "preprocess",
]
