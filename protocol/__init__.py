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
from protocol._base import (
    INT64_MAX,
    UINT32_MAX,
    UINT64_MAX,
    Count,
    Identifier,
    Label,
    PositiveCount,
    Sha256Hex,
    StrictModel,
    Version,
)
from protocol._canonical import canonical_digest, canonical_json
from protocol._card import (
    DataSummary,
    DifferentialPrivacy,
    FederatedTraining,
    HeldOutMetrics,
    IndexMode,
    IndexPrivacy,
    Preprocessing,
    ResizePolicy,
    SpecialistCard,
)
from protocol._chain import GENESIS, ChainError, line_hash, walk_chain
from protocol._diagnosis import (
    DiagnoseRequest,
    DiagnoseResponse,
    ErrorDetail,
    ErrorResponse,
    GeneralistUse,
    ImagePayload,
    MediaType,
    Mode,
    RetrievedCase,
    SpecialistPrediction,
    SpecialistProvenance,
    StageTimings,
)
from protocol._dicom import DecodeLimits, DicomSize, bounded_dicom
from protocol._images import (
    DICOM_PIXEL_TAGS,
    MAX_IMAGE_PIXELS,
    decode_image_bytes,
    encode_png,
    is_dicom_bytes,
    sniff_media_type,
)
from protocol._preprocess import preprocess
from protocol._registry import BundleRef, SiteKey, UnreadableBundle
from protocol._task import TaskSpec, TaskType
from protocol.errors import (
    EncodingError,
    GscoError,
    ImageDecodeError,
    ProtocolError,
    SchemaError,
)

__all__ = [
    "DICOM_PIXEL_TAGS",
    "GENESIS",
    "INDEX_KEYS",
    "INT64_MAX",
    "MAX_IMAGE_PIXELS",
    "UINT32_MAX",
    "UINT64_MAX",
    "ArtifactError",
    "BundleRef",
    "ChainError",
    "Count",
    "DataSummary",
    "DecodeLimits",
    "DiagnoseRequest",
    "DiagnoseResponse",
    "DicomSize",
    "DifferentialPrivacy",
    "EncodingError",
    "ErrorDetail",
    "ErrorResponse",
    "FederatedTraining",
    "GeneralistUse",
    "GscoError",
    "HeldOutMetrics",
    "Identifier",
    "ImageDecodeError",
    "ImagePayload",
    "IndexMode",
    "IndexPrivacy",
    "Label",
    "MediaType",
    "Mode",
    "OnnxSummary",
    "PositiveCount",
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
    "UnreadableBundle",
    "Version",
    "bounded_dicom",
    "canonical_digest",
    "canonical_json",
    "check_index",
    "check_onnx",
    "decode_image_bytes",
    "encode_png",
    "is_dicom_bytes",
    "line_hash",
    "load_index",
    "preprocess",
    "sniff_media_type",
    "walk_chain",
]
