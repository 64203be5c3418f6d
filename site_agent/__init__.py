"""The site agent: what a hospital runs next to its archive.

Built so far: the site's identity and signing key (``gsco site init``) and
signing of bundles (``gsco site sign``). Ingestion, training, export, the
privacy-filtered index and publishing follow (see the project's issues).
"""

from site_agent._home import SiteConfig, SiteHome, default_site_home, init_site, open_site
from site_agent.errors import SiteError, SiteHomeError

__all__ = [
    "SiteConfig",
    "SiteError",
    "SiteHome",
    "SiteHomeError",
    "default_site_home",
    "init_site",
    "open_site",
]
