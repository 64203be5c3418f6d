"""The privacy-filtered retrieval index a site publishes."""

from site_agent.index._build import BuiltIndex, IndexSettings, build_index

__all__ = ["BuiltIndex", "IndexSettings", "build_index"]
