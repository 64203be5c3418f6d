"""Looking tags up in the Basic Profile (PS3.15 Annex E, Table E.1-1)."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

from site_agent.deid._annex_e import EDITION, ROWS

__all__ = ["PROFILE_NAME", "ProfileEntry", "describe_tag", "format_tag", "profile_entry"]

PROFILE_NAME = (
    "DICOM PS3.15 Annex E, Basic Application Level Confidentiality Profile "
    f"(Table E.1-1, edition {EDITION})"
)


@dataclass(frozen=True)
class ProfileEntry:
    """One row of Table E.1-1: its action (D, Z, X, U, ...) and attribute name."""

    action: str
    name: str


@cache
def _exact() -> dict[int, ProfileEntry]:
    return {
        (group << 16) | element: ProfileEntry(action, name)
        for group, element, group_mask, element_mask, action, name in ROWS
        if group_mask == 0xFFFF and element_mask == 0xFFFF
    }


@cache
def _masked() -> tuple[tuple[int, int, int, int, ProfileEntry], ...]:
    """The few rows of repeating groups (50xx, 60xx), matched by mask."""
    return tuple(
        (group, element, group_mask, element_mask, ProfileEntry(action, name))
        for group, element, group_mask, element_mask, action, name in ROWS
        if (group_mask, element_mask) != (0xFFFF, 0xFFFF)
    )


def profile_entry(tag: int) -> ProfileEntry | None:
    """The Basic Profile's row for ``tag``; private attributes get the profile's X."""
    group, element = tag >> 16, tag & 0xFFFF
    if group % 2 == 1 and group > 0x0008:
        return ProfileEntry("X", "private attribute")
    found = _exact().get(tag)
    if found is not None:
        return found
    for row_group, row_element, group_mask, element_mask, entry in _masked():
        if group & group_mask == row_group and element & element_mask == row_element:
            return entry
    return None


def format_tag(tag: int) -> str:
    """``(gggg,eeee)``."""
    return f"({tag >> 16:04X},{tag & 0xFFFF:04X})"


def describe_tag(tag: int) -> tuple[str | None, str]:
    """The tag's DICOM keyword (``None`` for private or unknown tags) and name."""
    from pydicom.datadict import dictionary_description, keyword_for_tag

    if (tag >> 16) % 2 == 1:
        return None, "private attribute"
    try:
        return keyword_for_tag(tag) or None, str(dictionary_description(tag))
    except KeyError:
        return None, "unknown attribute"
