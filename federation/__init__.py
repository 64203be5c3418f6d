"""The consortium's side of federated training: its SuperLink, with TLS and node authentication.

``gsco federation`` drives it: :func:`init_consortium` makes the consortium's
folder (a CA and the SuperLink's certificate, or the operator's own),
:func:`superlink_command` is the SuperLink it serves, and membership
(:func:`add_site`, :func:`remove_site`, :func:`reconcile`) binds each
registry site to the one SuperNode key that may connect for it.
"""

from federation._consortium import (
    DEFAULT_PORT,
    Consortium,
    ConsortiumConfig,
    OwnCertificate,
    init_consortium,
    open_consortium,
)
from federation._members import (
    Member,
    add_site,
    members,
    node_key_digest,
    reconcile,
    remove_site,
)
from federation._superlink import (
    NodeInfo,
    list_nodes,
    register_node,
    superlink_command,
    unregister_node,
)
from federation.errors import (
    CertificateError,
    ConsortiumError,
    FederationError,
    MembershipError,
    SuperLinkError,
)

__all__ = [
    "DEFAULT_PORT",
    "CertificateError",
    "Consortium",
    "ConsortiumConfig",
    "ConsortiumError",
    "FederationError",
    "Member",
    "MembershipError",
    "NodeInfo",
    "OwnCertificate",
    "SuperLinkError",
    "add_site",
    "init_consortium",
    "list_nodes",
    "members",
    "node_key_digest",
    "open_consortium",
    "reconcile",
    "register_node",
    "remove_site",
    "superlink_command",
    "unregister_node",
]
