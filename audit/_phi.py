"""Looking for personal data where none may be: cards, metrics and ONNX metadata.

A bundle's card has a strict schema (pydantic, ``extra="forbid"``), so a field
outside it is itself a finding. Every string in a card, in ``metrics.json`` and
in the ONNX model's free-text places (doc strings, metadata properties, node
and graph names) is also matched against patterns of personal data: DICOM
person names (``Family^Given``), titles before a name, dates, record numbers
(six or more digits in a string), e-mail addresses, telephone and social
security numbers, and keys that name patient attributes. The patterns are
deliberately broad: a false alarm costs an auditor a look, a miss costs a
patient's privacy.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from protocol import SpecialistCard

__all__ = ["PhiHit", "scan_card", "scan_json_strings", "scan_onnx_metadata"]

_PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("a DICOM person name", re.compile(r"[A-Za-z][A-Za-z'-]*\^[A-Za-z]")),
    ("a title before a name", re.compile(r"\b(?:Mr|Mrs|Ms|Miss|Dr|Prof)\.?\s+[A-Z][a-z]+")),
    ("a date", re.compile(r"\b(?:19|20)\d\d[-/.](?:0[1-9]|1[0-2])[-/.](?:0[1-9]|[12]\d|3[01])\b")),
    ("a DICOM date", re.compile(r"\b(?:19|20)\d\d(?:0[1-9]|1[0-2])(?:0[1-9]|[12]\d|3[01])\b")),
    (
        "a day-first date",
        re.compile(r"\b(?:0?[1-9]|[12]\d|3[01])[/.](?:0?[1-9]|1[0-2])[/.](?:19|20)\d\d\b"),
    ),
    ("an e-mail address", re.compile(r"[\w.+-]+@[\w-]+\.[\w.-]+")),
    ("a social security number", re.compile(r"\b\d{3}-\d{2}-\d{4}\b")),
    ("a telephone number", re.compile(r"(?:\+\d{1,3}[\s-]?)?\(?\d{3}\)?[\s-]\d{3}[\s-]\d{4}\b")),
    ("a record number", re.compile(r"(?<![\w.])\d{6,}(?![\w.])")),
)
_PERSONAL_KEY = re.compile(
    r"patient|person|(?:^|_)name$|birth|dob|mrn|medical.?record|accession|address|phone|"
    r"email|ssn|social.?security|physician|referring|operator|institution|study.?date|"
    r"series.?date|acquisition.?date",
    re.IGNORECASE,
)
#: JSON paths whose values are timestamps by the schema, not personal dates.
_TIMESTAMP_PATHS = frozenset({"created_at"})
#: JSON paths whose values are sha256 hex digests by the schema (an adapter's base model).
_DIGEST_PATHS = frozenset({"base_model_sha256"})


@dataclass(frozen=True)
class PhiHit:
    """Something that looks like personal data, and where."""

    where: str  # e.g. "card.json: data_summary.source"
    what: str  # e.g. "a DICOM person name"


def _strings(value: Any, path: str = "") -> Iterator[tuple[str, str, bool]]:
    """``(path, text, is_key)`` for every key and string value in a JSON document."""
    if isinstance(value, dict):
        for key, item in value.items():
            child = f"{path}.{key}" if path else str(key)
            yield child, str(key), True
            yield from _strings(item, child)
    elif isinstance(value, list):
        for number, item in enumerate(value):
            yield from _strings(item, f"{path}[{number}]")
    elif isinstance(value, str):
        yield path, value, False


def _matches(text: str) -> list[str]:
    return [what for what, pattern in _PATTERNS if pattern.search(text)]


def scan_json_strings(document: Any, file_name: str) -> list[PhiHit]:
    """Every key or string value of ``document`` that looks like personal data."""
    hits = []
    for path, text, is_key in _strings(document):
        where = f"{file_name}: {path}"
        if is_key and _PERSONAL_KEY.search(text):
            hits.append(PhiHit(where, f"a key naming a personal attribute ({text!r})"))
            continue
        if path in _TIMESTAMP_PATHS or (
            path in _DIGEST_PATHS and re.fullmatch(r"[0-9a-f]{64}", text)
        ):
            continue
        hits += [PhiHit(where, f"{what} ({_redact(text)})") for what in _matches(text)]
    return hits


def _redact(text: str) -> str:
    """Enough of the text to find it, not enough to repeat the data in the report."""
    text = text.strip()
    return f"{text[:2]}…{len(text)} chars" if len(text) > 4 else "…"


def scan_card(data: bytes) -> tuple[list[str], list[PhiHit]]:
    """``(schema problems, personal-data hits)`` of a raw ``card.json``.

    Schema problems name every field outside the schema by its path.
    """
    try:
        document = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        return [f"card.json is not JSON: {exc}"], []
    problems = []
    try:
        SpecialistCard.model_validate(document)
    except ValidationError as exc:
        for error in exc.errors():
            where = ".".join(str(p) for p in error["loc"]) or "(root)"
            if error["type"] == "extra_forbidden":
                problems.append(f"field {where!r} is outside the card schema (free text)")
            else:
                problems.append(f"{where}: {error['msg']}")
    return problems, scan_json_strings(document, "card.json")


def scan_onnx_metadata(data: bytes) -> tuple[list[str], list[PhiHit]]:
    """``(free-text problems, personal-data hits)`` of a model's metadata.

    Free text: doc strings and metadata properties, which gsco's exporter
    never writes. Names of the graph, nodes, inputs, outputs and initialisers
    are matched against the patterns.
    """
    import onnx
    from google.protobuf.message import DecodeError

    try:
        model = onnx.load_model_from_string(data)
    except (DecodeError, ValueError, RuntimeError) as exc:
        return [f"model.onnx does not parse: {exc}"], []
    free: list[str] = []
    texts: list[tuple[str, str]] = []
    if model.doc_string:
        free.append("the model has a doc_string")
        texts.append(("model.doc_string", model.doc_string))
    if model.graph.doc_string:
        free.append("the graph has a doc_string")
        texts.append(("graph.doc_string", model.graph.doc_string))
    for prop in model.metadata_props:
        free.append(f"metadata property {prop.key!r}")
        texts.append((f"metadata_props[{prop.key}]", f"{prop.key} {prop.value}"))
    documented = sum(1 for node in model.graph.node if node.doc_string)
    if documented:
        free.append(f"{documented} node(s) carry doc strings")
    texts += [(f"node {n.name}.doc_string", n.doc_string) for n in model.graph.node if n.doc_string]
    texts.append(("graph.name", model.graph.name))
    texts += [("node name", n.name) for n in model.graph.node]
    texts += [("value name", v.name) for v in (*model.graph.input, *model.graph.output)]
    texts += [("initializer name", t.name) for t in model.graph.initializer]
    texts += [("producer", f"{model.producer_name} {model.domain}")]
    hits = []
    for where, text in texts:
        hits += [
            PhiHit(f"model.onnx: {where}", f"{what} ({_redact(text)})") for what in _matches(text)
        ]
    return free, hits
