"""The hub's engine: GSCo diagnosis over verified specialists, as a library.

It syncs signed specialist bundles from the registry through TUF, verifies
each with the shared :func:`registry.verify_publication`, runs them with
onnxruntime (CUDA when really present), retrieves similar cases with faiss,
and lets the generalist arbitrate (``gsco`` mode), falling back to a
``degraded`` ensemble when the generalist is down. Every answer names its
evidence and provenance.

This package needs no web stack: sites (adapter tuning and policy scoring), the
ServerApp (the federated policy fit) and the audit (access-log verification)
import it with their own extras. The diagnosis API (FastAPI, metrics, the HTTP
server) is :mod:`hub.web`, a layer above.
"""

from hub._access_log import AccessLog, AccessRecord, verify_access_log
from hub._adapters import ServedAdapter
from hub._engine import Diagnosis, DiagnosisEngine, EngineOptions
from hub._policy import fuse, load_policies, vote_scores, with_bias, with_modes_of
from hub._policy_fit import (
    PolicyEvidence,
    fit_label_bias,
    fit_mode,
    fit_policy,
    fit_policy_from_answers,
)
from hub._runtime import LoadedSpecialist, RuntimeOptions, load_specialist
from hub._sync import RegistrySync, SyncReport
from hub.errors import (
    AccessLogError,
    AdapterRefusedError,
    HubConfigError,
    HubError,
    PolicyFitError,
    SpecialistLoadError,
    SpecialistRuntimeError,
    UnknownTaskError,
)

__all__ = [
    "AccessLog",
    "AccessLogError",
    "AccessRecord",
    "AdapterRefusedError",
    "Diagnosis",
    "DiagnosisEngine",
    "EngineOptions",
    "HubConfigError",
    "HubError",
    "LoadedSpecialist",
    "PolicyEvidence",
    "PolicyFitError",
    "RegistrySync",
    "RuntimeOptions",
    "ServedAdapter",
    "SpecialistLoadError",
    "SpecialistRuntimeError",
    "SyncReport",
    "UnknownTaskError",
    "fit_label_bias",
    "fit_mode",
    "fit_policy",
    "fit_policy_from_answers",
    "fuse",
    "load_policies",
    "load_specialist",
    "verify_access_log",
    "vote_scores",
    "with_bias",
    "with_modes_of",
]
