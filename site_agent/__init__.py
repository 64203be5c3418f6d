"""The site agent: what a hospital runs next to its archive.

The light parts live here (identity, keys, the egress ledger); the heavy ones
are sub-packages imported on use: ``site_agent.data`` (ingestion),
``site_agent.train`` (zoo, training, calibration, metrics), ``site_agent.export``
(ONNX), ``site_agent.index`` (the privacy-filtered retrieval index) and
``site_agent.pipeline`` (all of them, into a bundle).
"""

from site_agent._home import SiteConfig, SiteHome, default_site_home, init_site, open_site
from site_agent._ledger import EgressLedger, EgressRecord
from site_agent.errors import SiteError, SiteHomeError

__all__ = [
    "EgressLedger",
    "EgressRecord",
    "SiteConfig",
    "SiteError",
    "SiteHome",
    "SiteHomeError",
    "default_site_home",
    "init_site",
    "open_site",
]
