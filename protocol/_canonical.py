"""The canonical JSON encoding: what is hashed, signed and chained.

Canonical means: UTF-8, keys sorted, no insignificant whitespace, no NaN or
infinity. Two equal documents always encode to the same bytes, so a digest of
the encoding identifies the document.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from pydantic import BaseModel

from protocol.errors import EncodingError


def canonical_json(document: BaseModel | dict[str, Any] | list[Any]) -> bytes:
    """Encodes a model or a JSON-compatible value canonically.

    Raises:
        EncodingError: the value holds NaN, infinity or a non-JSON type.
    """
    value = document.model_dump(mode="json") if isinstance(document, BaseModel) else document
    try:
        text = json.dumps(
            value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
        )
    except (TypeError, ValueError) as exc:
        raise EncodingError(f"not canonically encodable: {exc}") from exc
    return text.encode("utf-8")


def canonical_digest(document: BaseModel | dict[str, Any] | list[Any]) -> str:
    """Returns the sha256 (hex) of :func:`canonical_json` of ``document``."""
    return hashlib.sha256(canonical_json(document)).hexdigest()
