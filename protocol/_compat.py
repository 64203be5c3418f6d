"""Workarounds for the protocol's dependencies, each naming the version it was written for.

``tests/test_compat.py`` fails when one stops working or stops being needed.
"""

from __future__ import annotations

from typing import Any, BinaryIO

__all__ = ["PYDICOM_CHECKED", "read_file_meta"]

#: The pydicom release whose private file-meta reader :func:`read_file_meta` calls.
PYDICOM_CHECKED = "3.0.2"


def read_file_meta(stream: BinaryIO) -> Any:
    """The file meta group of a DICOM stream positioned after its preamble.

    pydicom reads the meta group only inside ``dcmread`` (which goes on to the
    data set) or with its private ``_read_file_meta_info``; the bounded DICOM
    rewrite needs the meta alone and the offset where the body starts.
    """
    from pydicom.filereader import _read_file_meta_info

    return _read_file_meta_info(stream)
