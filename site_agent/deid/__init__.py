"""DICOM de-identification evidence: which attributes were dropped, and that none leaked.

Whenever DICOM files are ingested, :func:`site_agent.pipeline.write_bundle`
writes ``<bundle>.deidentification.json`` beside the bundle (never inside it:
the report stays at the site) and refuses to write a bundle in which a value of
a PS3.15 Annex E Basic Profile attribute was found.
"""

from site_agent.deid._profile import PROFILE_NAME, ProfileEntry, profile_entry
from site_agent.deid._report import (
    LIMITATIONS,
    MIN_VALUE_LENGTH,
    DeidentificationReport,
    DroppedAttribute,
    Leak,
    OutputScan,
    build_report,
)

__all__ = [
    "LIMITATIONS",
    "MIN_VALUE_LENGTH",
    "PROFILE_NAME",
    "DeidentificationReport",
    "DroppedAttribute",
    "Leak",
    "OutputScan",
    "ProfileEntry",
    "build_report",
    "profile_entry",
]
