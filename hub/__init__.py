"""The hub: the diagnosis API that runs GSCo on verified specialists.

It syncs signed specialist bundles from the registry through TUF, verifies
each with the shared :func:`registry.verify_publication`, runs them with
onnxruntime (CUDA when really present), retrieves similar cases with faiss,
and lets the generalist arbitrate (``gsco`` mode), falling back to a
``degraded`` ensemble when the generalist is down. Every answer names its
evidence and provenance; every request is in a hash-chained access log.
"""

from hub._access_log import AccessLog, AccessRecord, verify_access_log
from hub._adapters import ServedAdapter
from hub._app import create_app
from hub._auth import ApiKeys, ClientKey, KeyFile, create_client_key, remove_client_key
from hub._catalog import Catalog
from hub._client import HubClient
from hub._engine import (
    GENERALIST_MODES,
    Diagnosis,
    DiagnosisEngine,
    EngineOptions,
    arbitration_request,
)
from hub._fhir import FHIR_MEDIA_TYPE, diagnostic_report
from hub._metrics import HubMetrics
from hub._policy import fuse, load_policies, vote_scores, with_bias, with_modes_of
from hub._policy_fit import (
    POLICY_WEIGHTS,
    SIGNIFICANCE,
    PolicyEvidence,
    fit_label_bias,
    fit_mode,
    fit_policy,
    fit_policy_from_answers,
)
from hub._runtime import (
    LoadedSpecialist,
    Neighbour,
    RuntimeOptions,
    faiss_uses_gpu,
    load_specialist,
    onnx_providers,
)
from hub._service import Admission, Hub, HubConfig
from hub._sync import RegistrySync, SyncReport
from hub.errors import (
    AccessLogError,
    AdapterRefusedError,
    AuthenticationError,
    BadRequestError,
    HubConfigError,
    HubError,
    HubRequestError,
    HubUnavailableError,
    OverloadedError,
    PayloadTooLargeError,
    PolicyFitError,
    RequestTimeoutError,
    SpecialistLoadError,
    SpecialistRuntimeError,
    UnknownTaskError,
)

__all__ = [
    "FHIR_MEDIA_TYPE",
    "GENERALIST_MODES",
    "POLICY_WEIGHTS",
    "SIGNIFICANCE",
    "AccessLog",
    "AccessLogError",
    "AccessRecord",
    "AdapterRefusedError",
    "Admission",
    "ApiKeys",
    "AuthenticationError",
    "BadRequestError",
    "Catalog",
    "ClientKey",
    "Diagnosis",
    "DiagnosisEngine",
    "EngineOptions",
    "Hub",
    "HubClient",
    "HubConfig",
    "HubConfigError",
    "HubError",
    "HubMetrics",
    "HubRequestError",
    "HubUnavailableError",
    "KeyFile",
    "LoadedSpecialist",
    "Neighbour",
    "OverloadedError",
    "PayloadTooLargeError",
    "PolicyEvidence",
    "PolicyFitError",
    "RegistrySync",
    "RequestTimeoutError",
    "RuntimeOptions",
    "ServedAdapter",
    "SpecialistLoadError",
    "SpecialistRuntimeError",
    "SyncReport",
    "UnknownTaskError",
    "arbitration_request",
    "create_app",
    "create_client_key",
    "diagnostic_report",
    "faiss_uses_gpu",
    "fit_label_bias",
    "fit_mode",
    "fit_policy",
    "fit_policy_from_answers",
    "fuse",
    "load_policies",
    "load_specialist",
    "onnx_providers",
    "remove_client_key",
    "verify_access_log",
    "vote_scores",
    "with_bias",
    "with_modes_of",
]
