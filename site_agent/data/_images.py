"""Decoding single local image files (PNG, JPEG, other Pillow formats, DICOM, ``.npy``).

The decoding itself is :func:`protocol.decode_image_bytes`, shared with the
hub so training and serving see the same pixels. DICOM is read with an
allow-list of tags: patient-identifying attributes are never parsed (see
:mod:`site_agent.deid` for the report that shows it).
Burned-in text in the pixels is not detected: see the limitations in docs/how-to/hospital.md.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from protocol import DICOM_PIXEL_TAGS, ImageDecodeError, decode_image_bytes, is_dicom_bytes

__all__ = ["DICOM_PIXEL_TAGS", "decode_image", "is_dicom"]

#: Image files larger than this are refused (bytes).
MAX_IMAGE_BYTES = 256 * 1024 * 1024


def is_dicom(path: Path) -> bool:
    """Whether ``path`` starts with the DICOM preamble (``DICM`` at byte 128)."""
    with path.open("rb") as handle:
        return is_dicom_bytes(handle.read(132))


def decode_image(path: Path, channels: int) -> NDArray[np.uint8]:
    """Decodes one image file to ``uint8 [H, W, channels]``.

    Raises:
        ImageDecodeError: unreadable, corrupt, too large or unsupported.
    """
    try:
        size = path.stat().st_size
        if size > MAX_IMAGE_BYTES:
            raise ImageDecodeError(f"{path}: larger than {MAX_IMAGE_BYTES} bytes")
        data = path.read_bytes()
    except OSError as exc:
        raise ImageDecodeError(f"cannot read image {path}: {exc.strerror or exc}") from exc
    try:
        return decode_image_bytes(data, channels)
    except ImageDecodeError as exc:
        raise ImageDecodeError(f"{path}: {exc}") from exc
