"""The DICOM de-identification report: what was dropped, and proof that nothing leaked.

Two pieces of evidence, both about attributes of DICOM PS3.15 Annex E's Basic
Profile (Table E.1-1, plus every private attribute):

1. **By construction.** The decoder reads only the allow-list
   :data:`protocol.DICOM_PIXEL_TAGS` (with the character set and the file meta
   header that pydicom needs to parse the file). The report lists every other
   attribute found in the files as *dropped*, with the number of files that
   held it, and checks that the allow-list shares no attribute with the
   profile.
2. **By inspection of the outputs.** The identifying values (of profile and
   private attributes, sequences included) are read once more, held in memory
   only while every output file is searched for them, and never written. The
   search is on the bytes, case-insensitive, for each value as it is and as
   JSON escapes it (non-ASCII names); a value made only of digits and dots
   (dates, times, UIDs, numbers) must stand alone, not inside a longer number.
   Values shorter than :data:`MIN_VALUE_LENGTH` characters are counted but not
   searched (they would match by chance); attributes pydicom cannot parse are
   counted too.

The report holds tags, names and counts, never a value.
"""

from __future__ import annotations

import io
import json
import re
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from protocol import DICOM_PIXEL_TAGS, GscoError
from site_agent.deid._profile import PROFILE_NAME, describe_tag, format_tag, profile_entry

__all__ = [
    "LIMITATIONS",
    "MIN_VALUE_LENGTH",
    "DeidentificationReport",
    "DroppedAttribute",
    "Leak",
    "OutputScan",
    "build_report",
]

#: Identifying values shorter than this are not searched for in the outputs.
MIN_VALUE_LENGTH = 5
#: What the report cannot show; repeated in every report.
LIMITATIONS = (
    "Text burned into the pixels (annotations, names on screen captures) is not detected; "
    "pixel data is used as it is.",
    "Identifying values shorter than 5 characters (sex, age, short codes) are not searched "
    "for in the outputs; they are dropped all the same.",
    "Attributes inside sequences are dropped with their sequence and not listed one by one.",
)
_NUMERIC = re.compile(rb"[0-9.]+")
_PRINTABLE_RUN = re.compile(rb"[\x20-\x7e]{%d,}" % MIN_VALUE_LENGTH)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DroppedAttribute(_Strict):
    """An attribute found in the source files and never read."""

    tag: str
    keyword: str | None
    name: str
    files: int
    #: Its action in Table E.1-1 ("X" for private attributes), or None when not listed.
    basic_profile_action: str | None


class Leak(_Strict):
    """An identifying attribute whose value was found in an output file."""

    attribute: str
    output: str
    #: How many distinct values of the attribute were found in the output.
    values: int


class OutputScan(_Strict):
    """The search of every output file for the sources' identifying values."""

    outputs: list[str]
    values_searched: int
    values_too_short: int
    #: Identifying attributes whose value pydicom could not parse (not searched; the
    #: decoder never parsed them either).
    attributes_unreadable: int
    leaks: list[Leak]


class DeidentificationReport(_Strict):
    """Written next to the bundle by the site agent whenever DICOM files were ingested."""

    schema_version: Literal["gsco.deidentification/1"] = "gsco.deidentification/1"
    created_at: datetime
    profile: str
    dicom_files: int
    attributes_read: list[str]
    allow_list_in_profile: list[str]
    dropped: list[DroppedAttribute]
    profile_attributes_dropped: int
    private_elements_dropped: int
    output_scan: OutputScan
    limitations: list[str]
    passed: bool


def _read_tags() -> dict[int, str]:
    from pydicom.datadict import tag_for_keyword

    tags = {}
    for keyword in (*DICOM_PIXEL_TAGS, "SpecificCharacterSet"):
        tag = tag_for_keyword(keyword)
        assert tag is not None, keyword
        tags[int(tag)] = keyword
    return tags


def _bounded(data: bytes) -> bytes | None:
    """The file as pydicom may read it, or ``None`` when its header breaks the bounds."""
    from protocol import DecodeLimits, bounded_dicom

    try:
        return bounded_dicom(data, DecodeLimits())[0]
    except GscoError:
        return None


def _tags_present(data: bytes) -> list[int]:
    """Every top-level tag of one file, file meta included, without reading values."""
    import pydicom

    dataset = pydicom.dcmread(io.BytesIO(data), defer_size=0)
    # keys(), not iteration: iterating a Dataset converts (reads) every value.
    return [int(t) for t in dataset.file_meta.keys()] + [int(t) for t in dataset.keys()]  # noqa: SIM118


def _strings(value: Any, vr: str | None) -> Iterator[str]:
    if value is None:
        return
    if isinstance(value, bytes):
        if vr in ("UN", "OB") and len(value) <= 1024:
            yield from (m.decode() for m in _PRINTABLE_RUN.findall(value))
        return
    if vr == "PN" or isinstance(value, str) or not isinstance(value, Iterable):
        text = str(value).strip(" \x00")
        if text:
            yield text
            if vr == "PN":
                yield from (p.strip() for p in re.split(r"[\^=]", text) if p.strip())
        return
    for item in value:
        yield from _strings(item, vr)


def _identifying_values(data: bytes) -> tuple[dict[str, set[str]], int]:
    """Attribute label -> the string values of profile and private attributes in one file.

    Also returns how many such attributes could not be parsed (their values
    cannot be searched for; the decoder never parsed them either).
    """
    import pydicom

    try:
        dataset = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
    except Exception:  # noqa: BLE001 - any parse failure: nothing of this file can be searched
        return {}, 1
    found: dict[str, set[str]] = {}
    unreadable = 0
    for source in (dataset.file_meta, dataset):
        for tag in list(source.keys()):  # keys(): iterating converts values
            if profile_entry(int(tag)) is None:
                continue
            values = found.setdefault(_label(int(tag)), set())
            try:
                element = source[tag]
                if element.VR != "SQ":
                    values.update(_strings(element.value, element.VR))
                    continue
                for item in element.value:
                    inner: Any
                    for inner in item.iterall():
                        if inner.VR != "SQ":
                            values.update(_strings(inner.value, inner.VR))
            except Exception:  # noqa: BLE001 - a malformed value: count it, go on
                unreadable += 1
    return found, unreadable


def _label(tag: int) -> str:
    keyword, name = describe_tag(tag)
    return f"{format_tag(tag)} {keyword or name}"


def _ascii_runs(data: bytes) -> bytes:
    """The printable ASCII runs of ``data``, lower-cased, one per line."""
    return b"\n".join(_PRINTABLE_RUN.findall(data)).lower()


def _occurs(needle: bytes, haystack: bytes) -> bool:
    if not _NUMERIC.fullmatch(needle):
        return needle in haystack
    start = haystack.find(needle)
    while start >= 0:
        before = haystack[start - 1 : start]
        after = haystack[start + len(needle) : start + len(needle) + 1]
        if not (before.isdigit() or before == b".") and not after.isdigit():
            return True
        start = haystack.find(needle, start + 1)
    return False


def _scan(values: dict[str, set[str]], outputs: Mapping[str, Path], unreadable: int) -> OutputScan:
    """``values``: attribute label -> its distinct values in the sources."""
    searched = short = 0
    needles: dict[bytes, set[str]] = {}
    for label, distinct in values.items():
        for value in distinct:
            if len(value) < MIN_VALUE_LENGTH:
                short += 1
                continue
            searched += 1
            forms = {value, value.lower(), json.dumps(value.lower())[1:-1]}
            for form in forms:  # JSON-escaped too: json.dumps writes \u00fc for ü
                needle = form.encode("utf-8", "replace")
                # ASCII needles are searched lower-cased in lower-cased runs: one form is enough.
                key = needle.lower() if needle.isascii() else needle
                needles.setdefault(key, set()).add(label)
    leaks: dict[tuple[str, str], int] = {}
    for name, path in outputs.items():
        raw = path.read_bytes()
        runs = _ascii_runs(raw)
        lowered: bytes | None = None
        for needle, labels in needles.items():
            if needle.isascii():
                hit = _occurs(needle, runs)
            else:  # rare: search the whole file, as written and lower-cased
                lowered = raw.lower() if lowered is None else lowered
                hit = needle in raw or needle in lowered
            if hit:
                for label in labels:
                    leaks[label, name] = leaks.get((label, name), 0) + 1
    return OutputScan(
        outputs=sorted(outputs),
        values_searched=searched,
        values_too_short=short,
        attributes_unreadable=unreadable,
        leaks=[Leak(attribute=a, output=o, values=n) for (a, o), n in sorted(leaks.items())],
    )


def build_report(
    dicom_files: Sequence[Path], outputs: Mapping[str, Path]
) -> DeidentificationReport:
    """Audits the ingestion of ``dicom_files`` against the written ``outputs``.

    ``outputs`` maps the name the report gives each file the site agent wrote
    to its path. A source file that is gone or unreadable raises ``OSError``.
    """
    read = _read_tags()
    present: Counter[int] = Counter()
    values: dict[str, set[str]] = {}
    unreadable = 0
    for path in dicom_files:
        # The same header-checked, bounded inflation as the decoder: a file the
        # decoder refused never reaches here (ingestion stopped), and a deflated
        # one is read inflated once, never past its header's size.
        data = _bounded(path.read_bytes())
        if data is None:
            unreadable += 1
            continue
        present.update(set(_tags_present(data)))
        found, failed = _identifying_values(data)
        unreadable += failed
        for label, strings in found.items():
            values.setdefault(label, set()).update(strings)
    dropped = []
    for tag in sorted(present):
        if tag in read or tag >> 16 == 0x0002:
            continue  # the allow-list and the file meta header that pydicom parses
        keyword, name = describe_tag(tag)
        entry = profile_entry(tag)
        dropped.append(
            DroppedAttribute(
                tag=format_tag(tag),
                keyword=keyword,
                name=name,
                files=present[tag],
                basic_profile_action=entry.action if entry else None,
            )
        )
    scan = _scan(values, outputs, unreadable)
    overlap = sorted(f"{format_tag(t)} {k}" for t, k in read.items() if profile_entry(t))
    return DeidentificationReport(
        created_at=datetime.now(UTC),
        profile=PROFILE_NAME,
        dicom_files=len(dicom_files),
        attributes_read=[
            *sorted(f"{format_tag(t)} {k}" for t, k in read.items()),
            "(0002,xxxx) file meta information (parsed by pydicom to find the transfer syntax)",
        ],
        allow_list_in_profile=overlap,
        dropped=dropped,
        profile_attributes_dropped=sum(
            1 for d in dropped if d.basic_profile_action and d.name != "private attribute"
        ),
        private_elements_dropped=sum(d.files for d in dropped if d.name == "private attribute"),
        output_scan=scan,
        limitations=list(LIMITATIONS),
        passed=not overlap and not scan.leaks,
    )
