"""The schemas are the single source of every integer bound, and they match the ``.proto``.

A value the registry can store but its messages cannot carry (a card version
of 2**40 against a ``uint32``) once broke listing and every hub's sync. These
tests walk the pydantic schemas and the protobuf descriptors and fail when a
new field is added without a bound the wire can hold.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal, get_args, get_origin

import annotated_types
import pytest
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from pydantic import BaseModel, Strict
from pydantic.fields import FieldInfo

import protocol
from protocol import INT64_MAX, UINT32_MAX, BundleRef, SiteKey, SpecialistCard, StrictModel
from protocol._pb import registry_pb2 as pb

RANGES = {
    FieldDescriptor.TYPE_UINT32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_INT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_UINT64: (0, 2**64 - 1),
    FieldDescriptor.TYPE_INT64: (-(2**63), 2**63 - 1),
}
#: Message <-> domain model pairs that protocol.serde converts.
PAIRS: list[tuple[Any, type[BaseModel]]] = [
    (pb.BundleRefMessage, BundleRef),
    (pb.SiteKeyMessage, SiteKey),
]
#: Proto fields that carry a datetime as milliseconds since the epoch.
TIME_FIELDS = {"published_at_unix_ms": "published_at", "enrolled_at_unix_ms": "enrolled_at"}


def _bounds(metadata: list[Any]) -> tuple[int | None, int | None, bool]:
    low = high = None
    strict = False
    flat: list[Any] = []
    for item in metadata:  # a nested Field(...) carries its own constraints
        flat += list(item.metadata) if isinstance(item, FieldInfo) else [item]
    for item in flat:
        if isinstance(item, annotated_types.Ge):
            low = int(item.ge)  # type: ignore[call-overload]
        elif isinstance(item, annotated_types.Gt):
            low = int(item.gt) + 1  # type: ignore[call-overload]
        elif isinstance(item, annotated_types.Le):
            high = int(item.le)  # type: ignore[call-overload]
        elif isinstance(item, annotated_types.Lt):
            high = int(item.lt) - 1  # type: ignore[call-overload]
        elif isinstance(item, Strict):
            strict = item.strict
    return low, high, strict


def _field_bounds(model: type[BaseModel], name: str) -> tuple[int | None, int | None, bool]:
    info = model.model_fields[name]
    annotation = info.annotation
    metadata = list(info.metadata)
    if get_origin(annotation) is Annotated:
        args = get_args(annotation)
        metadata += list(args[1:])
    return _bounds(metadata)


@pytest.mark.parametrize(("message", "model"), PAIRS, ids=[m.__name__ for _, m in PAIRS])
def test_every_integer_the_model_allows_fits_its_message(message: Any, model: type) -> None:
    descriptor: Descriptor = message.DESCRIPTOR
    for field in descriptor.fields:
        if field.type not in RANGES:
            continue
        wire_low, wire_high = RANGES[field.type]
        if field.name in TIME_FIELDS:
            # A datetime of any representable year, in milliseconds, fits an int64.
            for moment in (datetime.min.replace(tzinfo=UTC), datetime.max.replace(tzinfo=UTC)):
                assert wire_low <= round(moment.timestamp() * 1000) <= wire_high
            assert TIME_FIELDS[field.name] in model.model_fields
            continue
        low, high, strict = _field_bounds(model, field.name)
        assert low is not None, f"{model.__name__}.{field.name} has no lower bound"
        assert high is not None, f"{model.__name__}.{field.name} has no upper bound"
        assert wire_low <= low <= high <= wire_high, (
            f"{model.__name__}.{field.name} allows [{low}, {high}], "
            f"but {descriptor.name}.{field.name} carries [{wire_low}, {wire_high}]"
        )
        assert strict, f"{model.__name__}.{field.name} must refuse booleans and strings"


def test_values_copied_into_messages_are_bounded_alike() -> None:
    """The card's version becomes the listing's version: the card may not allow more."""
    card = _field_bounds(SpecialistCard, "version")
    ref = _field_bounds(BundleRef, "version")
    assert card[0] is not None
    assert ref[0] is not None
    assert card[0] >= ref[0]
    assert card[1] is not None
    assert ref[1] is not None
    assert card[1] <= ref[1] == UINT32_MAX


def _integer_leaves(
    annotation: Any, metadata: list[Any], where: str
) -> list[tuple[str, list[Any]]]:
    """Every ``int`` reachable in a type (inside Annotated, unions, tuples, dicts)."""
    if get_origin(annotation) is Annotated:
        base, *extra = get_args(annotation)
        return _integer_leaves(base, metadata + list(extra), where)
    if annotation is int:
        return [(where, metadata)]
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return []  # walked as a model of its own
    origin = get_origin(annotation)
    if origin is Literal or annotation in (bool, str, float) or origin is None:
        return []
    found = []
    for arg in get_args(annotation):
        if arg is Ellipsis or arg is type(None):
            continue
        found += _integer_leaves(arg, [], where)
    return found


def _models() -> list[type[StrictModel]]:
    seen: list[type[StrictModel]] = []
    for name in protocol.__all__:
        value = getattr(protocol, name)
        if isinstance(value, type) and issubclass(value, StrictModel) and value is not StrictModel:
            seen.append(value)
    return seen


@pytest.mark.parametrize("model", _models(), ids=lambda m: m.__name__)
def test_no_unbounded_or_lax_integer_in_any_wire_schema(model: type[StrictModel]) -> None:
    for name, info in model.model_fields.items():
        annotation = info.annotation
        for where, metadata in _integer_leaves(annotation, list(info.metadata), name):
            low, high, strict = _bounds(metadata)
            assert high is not None, f"{model.__name__}.{where} has no upper bound"
            assert high <= INT64_MAX, f"{model.__name__}.{where} exceeds a signed 64-bit integer"
            assert low is not None, f"{model.__name__}.{where} has no lower bound"
            assert strict, f"{model.__name__}.{where} accepts true or '5' as an integer"


@pytest.mark.parametrize("bad", [2**40, 2**32, True, "5", 0, -1])
def test_a_card_version_out_of_range_or_not_an_integer_is_refused(bad: Any) -> None:
    from protocol import SchemaError
    from tests.conftest import card_dict

    document = card_dict()
    document["version"] = bad
    with pytest.raises(SchemaError) as caught:
        SpecialistCard.parse(document)
    assert bool(caught.value.wire_overflows) == (isinstance(bad, int) and bad > UINT32_MAX)
