"""The strict base model and the constrained scalar types shared by all schemas."""

from __future__ import annotations

import json
from typing import Annotated, Any, Self, TypeVar

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from protocol.errors import EncodingError, SchemaError

#: Lower-case identifiers for tasks and sites: ``pneumonia-cxr``, ``st-marys``.
Identifier = Annotated[str, StringConstraints(pattern=r"^[a-z0-9](?:[a-z0-9._-]{0,62}[a-z0-9])?$")]
#: A class label as shown to clinicians and the generalist (``normal``, ``pneumonia``).
Label = Annotated[str, StringConstraints(min_length=1, max_length=80, strip_whitespace=True)]
#: A lower-case hexadecimal sha256 digest.
Sha256Hex = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
#: A probability or a normalised score.
UnitFloat = Annotated[float, Field(ge=0.0, le=1.0)]

_M = TypeVar("_M", bound="StrictModel")


class StrictModel(BaseModel):
    """Base of every wire schema: unknown fields are errors, instances are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)

    @classmethod
    def parse(cls, data: bytes | str | dict[str, Any]) -> Self:
        """Validates JSON bytes, a JSON string or a decoded mapping.

        Raises:
            EncodingError: the bytes are not UTF-8 JSON.
            SchemaError: the document does not match this schema.
        """
        if isinstance(data, bytes | str):
            try:
                data = json.loads(data)
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise EncodingError(f"{cls.__name__}: not UTF-8 JSON ({exc})") from exc
        if not isinstance(data, dict):
            raise SchemaError(cls.__name__, [f"expected a JSON object, got {type(data).__name__}"])
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise SchemaError(cls.__name__, _problems(exc)) from exc


def _problems(exc: ValidationError) -> list[str]:
    lines = []
    for err in exc.errors(include_url=False):
        where = ".".join(str(part) for part in err["loc"]) or "(document)"
        lines.append(f"{where}: {err['msg']}")
    return lines
