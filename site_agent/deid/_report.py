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
   search is on the bytes, case-insensitive; a value made only of digits and
   dots (dates, times, UIDs, numbers) must stand alone, not inside a longer
   number. Values shorter than :data:`MIN_VALUE_LENGTH` characters are counted
   but not searched (they would match by chance).

The report holds tags, names and counts, never a value.
"""

from __future__ import annotations

import io
import re
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from protocol import DICOM_PIXEL_TAGS
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
_TEXT_VRS = frozenset(
    {"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST", "TM", "UC", "UI"}
    | {"UR", "UT"}
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


def _identifying_values(data: bytes) -> dict[str, set[str]]:
    """Attribute label -> the string values of profile and private attributes in one file."""
    import pydicom

    dataset = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
    found: dict[str, set[str]] = {}
    top: list[Any] = [
        *(dataset.file_meta[t] for t in dataset.file_meta.keys()),  # noqa: SIM118
        *(dataset[t] for t in dataset.keys()),  # noqa: SIM118
    ]
    for element in top:
        if profile_entry(int(element.tag)) is None:
            continue
        label = _label(int(element.tag))
        values = found.setdefault(label, set())
        nested = element.value if element.VR == "SQ" else None
        if nested is None:
            values.update(_strings(element.value, element.VR))
            continue
        for item in nested:
            inner: Any
            for inner in item.iterall():
                if inner.VR != "SQ":
                    values.update(_strings(inner.value, inner.VR))
    return found


def _label(tag: int) -> str:
    keyword, name = describe_tag(tag)
    return f"{format_tag(tag)} {keyword or name}"


def _haystack(path: Path) -> bytes:
    """The file's printable runs, lower-cased, one per line (binary noise between them goes)."""
    return b"\n".join(_PRINTABLE_RUN.findall(path.read_bytes())).lower()


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


def _scan(values: dict[str, set[str]], outputs: Mapping[str, Path]) -> OutputScan:
    """``values``: attribute label -> its distinct values in the sources."""
    searched = short = 0
    needles: dict[bytes, set[str]] = {}
    for label, distinct in values.items():
        for value in distinct:
            if len(value) < MIN_VALUE_LENGTH:
                short += 1
                continue
            searched += 1
            needles.setdefault(value.lower().encode("utf-8", "replace"), set()).add(label)
    leaks: dict[tuple[str, str], int] = {}
    for name, path in outputs.items():
        haystack = _haystack(path)
        for needle, labels in needles.items():
            if _occurs(needle, haystack):
                for label in labels:
                    leaks[label, name] = leaks.get((label, name), 0) + 1
    return OutputScan(
        outputs=sorted(outputs),
        values_searched=searched,
        values_too_short=short,
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
    for path in dicom_files:
        data = path.read_bytes()
        present.update(set(_tags_present(data)))
        for label, strings in _identifying_values(data).items():
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
    scan = _scan(values, outputs)
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
