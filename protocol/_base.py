"""The strict base model and the constrained scalar types shared by all schemas."""

from __future__ import annotations

import json
import unicodedata
from typing import Annotated, Any, Self, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    Strict,
    StringConstraints,
    ValidationError,
)

from protocol.errors import EncodingError, SchemaError

#: Lower-case identifiers for tasks and sites: ``pneumonia-cxr``, ``st-marys``.
Identifier = Annotated[str, StringConstraints(pattern=r"^[a-z0-9](?:[a-z0-9._-]{0,62}[a-z0-9])?$")]
#: Punctuation a label or a modality may hold besides letters, digits, marks and single spaces.
LABEL_PUNCTUATION = "-_.,:()[]/'+%"


def _check_label(value: str) -> str:
    """A label is data shown on clinicians' screens and in prompts: a strict character class.

    Letters, digits and combining marks of any script, single inner spaces and
    :data:`LABEL_PUNCTUATION`, starting with a letter or digit, in Unicode NFC:
    no control, format (bidirectional overrides, zero-width) or separator
    characters, no markup, nothing a terminal or a browser would interpret.
    """
    if unicodedata.normalize("NFC", value) != value:
        raise ValueError("must be in Unicode normal form C")
    if value[:1].isspace() or value[-1:].isspace() or "  " in value:
        raise ValueError("no leading, trailing or repeated spaces")
    if unicodedata.category(value[:1])[0] not in "LN":
        raise ValueError("must start with a letter or a digit")
    for char in value:
        kind = unicodedata.category(char)
        if char == " " or kind[0] in "LN" or kind in ("Mn", "Mc") or char in LABEL_PUNCTUATION:
            continue
        raise ValueError(
            f"holds {char!a} (U+{ord(char):04X}, {kind}): only letters, digits, single "
            f"spaces and {LABEL_PUNCTUATION!r} are allowed"
        )
    return value


def _no_dot_dot(value: str) -> str:
    if ".." in value:
        raise ValueError("a model name may not hold '..'")
    return value


def _check_text(value: str) -> str:
    """Free text (notes, licenses): printable, one line, no control or format characters."""
    for char in value:
        kind = unicodedata.category(char)
        if kind[0] == "C" or kind in ("Zl", "Zp"):
            raise ValueError(f"holds {char!a} (U+{ord(char):04X}, {kind}): not printable")
    return value


#: Add to a free-text field's ``Annotated`` metadata: printable, one line (see _check_text).
PRINTABLE = AfterValidator(_check_text)


#: Add to a label-like field's ``Annotated`` metadata (labels, modalities; see _check_label).
LABEL_CHARACTERS = AfterValidator(_check_label)
#: A class label as shown to clinicians and the generalist (``normal``, ``pneumonia``).
Label = Annotated[str, StringConstraints(min_length=1, max_length=80), LABEL_CHARACTERS]
#: A served model's name (``smollm2-135m-instruct``, ``org/model-7b``): no path, no URL.
ModelName = Annotated[
    str,
    StringConstraints(
        min_length=1,
        max_length=200,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*(/[A-Za-z0-9][A-Za-z0-9_.-]*)?$",
    ),
    AfterValidator(_no_dot_dot),
]
#: A lower-case hexadecimal sha256 digest.
Sha256Hex = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
#: A probability or a normalised score.
UnitFloat = Annotated[float, Field(ge=0.0, le=1.0)]

# Integers on the wire. Every integer field of a schema is bounded by the
# protobuf type it travels in (``proto/registry.proto``) or, where it never
# travels in protobuf, by SQLite's and JSON readers' signed 64-bit integers, so a
# value that one side can store is a value every other side can carry. A test
# walks the schemas and the ``.proto`` descriptors and checks that they agree.
# Strict: ``true`` or ``"5"`` is not an integer.
#: The largest value of protobuf's ``uint32``.
UINT32_MAX = 2**32 - 1
#: The largest value of protobuf's ``int64`` (and of SQLite's INTEGER).
INT64_MAX = 2**63 - 1
#: The largest value of protobuf's ``uint64``.
UINT64_MAX = 2**64 - 1
#: Upper bounds that only the wire imposes: a value over one of them is out of range.
WIRE_INT_LIMITS = frozenset({UINT32_MAX, INT64_MAX, UINT64_MAX})
#: A count or a size: 0 or more, within a signed 64-bit integer.
Count = Annotated[int, Strict(), Field(ge=0, le=INT64_MAX)]
#: A count of at least one.
PositiveCount = Annotated[int, Strict(), Field(ge=1, le=INT64_MAX)]
#: A version number, carried as ``uint32`` by the registry's messages.
Version = Annotated[int, Strict(), Field(ge=1, le=UINT32_MAX)]

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
            except RecursionError as exc:  # nesting deeper than the interpreter's stack
                raise EncodingError(f"{cls.__name__}: JSON nested too deeply") from exc
        if not isinstance(data, dict):
            raise SchemaError(cls.__name__, [f"expected a JSON object, got {type(data).__name__}"])
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise SchemaError(cls.__name__, _problems(exc), _overflows(exc)) from exc
        except RecursionError as exc:  # a decoded mapping nested too deeply
            raise SchemaError(cls.__name__, ["(document): nested too deeply"]) from exc


def _overflows(exc: ValidationError) -> tuple[str, ...]:
    """Locations whose integer exceeds what the wire can carry (see ``WIRE_INT_LIMITS``)."""
    found = []
    for err in exc.errors(include_url=False):
        if err["type"] == "less_than_equal" and (err.get("ctx") or {}).get("le") in WIRE_INT_LIMITS:
            found.append(".".join(str(part) for part in err["loc"]))
    return tuple(found)


def _problems(exc: ValidationError) -> list[str]:
    lines = []
    for err in exc.errors(include_url=False):
        where = ".".join(str(part) for part in err["loc"]) or "(document)"
        lines.append(f"{where}: {err['msg']}")
    return lines
