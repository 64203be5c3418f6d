"""Wire schemas, canonical encodings and the registry's protobuf conversions.

Everything that crosses a process or trust boundary is one of these models:
strict (unknown fields are errors), versioned (``schema_version``) and immutable.
"""

from protocol._adapter import AdapterCard, AdapterTraining, LoraSpec
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
from protocol._calibrated import calibrated_softmax
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
from protocol._chain import GENESIS, ChainedLog, ChainError, line_hash, walk_chain
from protocol._diagnosis import (
    ArbitrationPolicy,
    DiagnoseRequest,
    DiagnoseResponse,
    ErrorDetail,
    ErrorResponse,
    GeneralistUse,
    ImagePayload,
    MediaType,
    Mode,
    ModePolicy,
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
from protocol._net import free_loopback_port
from protocol._preprocess import preprocess
from protocol._registry import (
    ADAPTER_BACKBONE,
    BundleKind,
    BundleRef,
    SiteKey,
    UnreadableBundle,
)
from protocol._task import TaskSpec, TaskType
from protocol.errors import (
    EncodingError,
    GscoError,
    ImageDecodeError,
    ProtocolError,
    SchemaError,
)

__all__ = [
    "ADAPTER_BACKBONE",
    "DICOM_PIXEL_TAGS",
    "GENESIS",
    "INDEX_KEYS",
    "INT64_MAX",
    "MAX_IMAGE_PIXELS",
    "UINT32_MAX",
    "UINT64_MAX",
    "AdapterCard",
    "AdapterTraining",
    "ArbitrationPolicy",
    "ArtifactError",
    "BundleKind",
    "BundleRef",
    "ChainError",
    "ChainedLog",
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
    "LoraSpec",
    "MediaType",
    "Mode",
    "ModePolicy",
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
    "calibrated_softmax",
    "canonical_digest",
    "canonical_json",
    "check_index",
    "check_onnx",
    "decode_image_bytes",
    "encode_png",
    "free_loopback_port",
    "is_dicom_bytes",
    "line_hash",
    "load_index",
    "preprocess",
    "sniff_media_type",
    "walk_chain",
]
