"""The consortium registry: gRPC service, blob storage, TUF metadata (not built yet)."""

__all__: list[str] = []
