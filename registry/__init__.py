"""The consortium registry: verification on publish, blob storage, event log.

Built: :func:`verify_publication` (the one pure check shared with the hub and
the auditor), content-addressed storage with crash recovery, the hash-chained
event log, the gRPC service and its client, TUF metadata (registry side) and
:class:`TrustedRegistry` (client side, through ``tuf.ngclient``).
"""

from registry._adapter import (
    ADAPTER_BUNDLE_FILES,
    AcceptedAdapter,
    AdapterLimits,
    WeightsChecked,
    check_adapter_config,
    check_adapter_policy,
    check_adapter_weights,
    verify_adapter,
)
from registry._client import BundleListing, RegistryClient
from registry._consortium import (
    MIN_SIGNERS,
    Endorsement,
    assemble_adapter_role,
    check_adapter_role,
    check_backing,
    endorse,
    parse_adapter_path,
    propose_adapter_role,
    required_signers,
    role_signers,
)
from registry._core import Registry
from registry._events import Event, verify_event_log
from registry._inprocess import InProcessRegistry, RegistryReadAPI
from registry._reader import RegistryReader, keyring_of
from registry._server import SERVICE_NAME, ServerConfig, admin_token_for, start_server
from registry._tuf import (
    adapter_role,
    adapter_target_path,
    build_site_targets,
    target_path,
)
from registry._tuf_client import TrustedRegistry, TufSource
from registry._uploads import UploadLimits
from registry._verify import (
    BUNDLE_FILES,
    REQUIRED_FILES,
    AcceptedBundle,
    Limits,
    check_names_and_sizes,
    verify_publication,
    verify_signed_digests,
)
from registry.errors import (
    ConflictError,
    EventLogError,
    NotFoundError,
    PermissionDeniedError,
    RegistryError,
    RegistryUnavailableError,
    RejectCode,
    RejectedError,
    StoreError,
    UntrustedMetadataError,
)

__all__ = [
    "ADAPTER_BUNDLE_FILES",
    "BUNDLE_FILES",
    "MIN_SIGNERS",
    "REQUIRED_FILES",
    "SERVICE_NAME",
    "AcceptedAdapter",
    "AcceptedBundle",
    "AdapterLimits",
    "BundleListing",
    "ConflictError",
    "Endorsement",
    "Event",
    "EventLogError",
    "InProcessRegistry",
    "Limits",
    "NotFoundError",
    "PermissionDeniedError",
    "Registry",
    "RegistryClient",
    "RegistryError",
    "RegistryReadAPI",
    "RegistryReader",
    "RegistryUnavailableError",
    "RejectCode",
    "RejectedError",
    "ServerConfig",
    "StoreError",
    "TrustedRegistry",
    "TufSource",
    "UntrustedMetadataError",
    "UploadLimits",
    "WeightsChecked",
    "adapter_role",
    "adapter_target_path",
    "admin_token_for",
    "assemble_adapter_role",
    "build_site_targets",
    "check_adapter_config",
    "check_adapter_policy",
    "check_adapter_role",
    "check_adapter_weights",
    "check_backing",
    "check_names_and_sizes",
    "endorse",
    "keyring_of",
    "parse_adapter_path",
    "propose_adapter_role",
    "required_signers",
    "role_signers",
    "start_server",
    "target_path",
    "verify_adapter",
    "verify_event_log",
    "verify_publication",
    "verify_signed_digests",
]
