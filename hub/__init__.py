"""The hub: the diagnosis API that runs GSCo on verified specialists (not built yet)."""

__all__: list[str] = []
