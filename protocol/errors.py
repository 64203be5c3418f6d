"""Errors of the wire protocol, and the root of every GSCo error.

Every package's error tree hangs from :class:`GscoError`, so a command-line
front end can report any of them as one clear line::

    GscoError
    └── ProtocolError              (this package)
        ├── SchemaError            a document does not match its schema
        ├── EncodingError          bytes that are not the canonical encoding
        ├── ArtifactError          model.onnx or index.npz breaks its contract (protocol._artifacts)
        ├── ImageDecodeError       an image that is corrupt, too large or not what it claims
        └── HealthCheckError       a gRPC health check that got no answer
    └── ToolNotFoundError          a command GSCo starts (Flower's) is not installed

Other roots (``signing.SigningError``, ...) subclass :class:`GscoError` too.
"""

from __future__ import annotations

__all__ = [
    "EncodingError",
    "GscoError",
    "HealthCheckError",
    "ImageDecodeError",
    "ProtocolError",
    "SchemaError",
    "ToolNotFoundError",
]


class GscoError(Exception):
    """Root of every error that GSCo Network raises on purpose."""


class ProtocolError(GscoError):
    """A wire document or message is not acceptable."""


class SchemaError(ProtocolError):
    """A document does not validate against its schema.

    Attributes:
        schema: the name of the model the document was checked against.
        problems: one short line per validation problem, ``location: message``.
        wire_overflows: locations of integers larger than the wire protocol can
            carry (a ``uint32`` version of 2**40, say); empty for other problems.
    """

    def __init__(
        self, schema: str, problems: list[str], wire_overflows: tuple[str, ...] = ()
    ) -> None:
        self.schema = schema
        self.problems = problems
        self.wire_overflows = wire_overflows
        shown = "; ".join(problems[:5])
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        super().__init__(f"invalid {schema}: {shown}{more}")


class EncodingError(ProtocolError):
    """Bytes that should hold a document are not decodable (not UTF-8 JSON, say)."""


class ImageDecodeError(ProtocolError):
    """An image is corrupt, truncated, too large, unsupported or not its declared type."""


class HealthCheckError(ProtocolError):
    """A gRPC health check got no answer (refused, TLS failure, timeout, unknown service)."""


class ToolNotFoundError(GscoError):
    """A command that GSCo starts (``flower-superlink``, ``flwr``, ...) is not installed."""
