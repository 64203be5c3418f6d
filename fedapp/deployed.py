"""The consortium's apps, as a hospital's SuperNode and the consortium's SuperLink run them.

Each site takes its places (home, data, registry, work folder) from its own
node config (``gsco site join``) and its work from the run config, and acts
honestly: this module wires no attacker and reads no jobs file.
"""

from fedapp._client import NodeJobs, make_client_app
from fedapp._server import make_server_app

__all__ = ["client_app", "server_app"]

client_app = make_client_app(NodeJobs())
server_app = make_server_app()
