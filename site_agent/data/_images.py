"""Decoding single image files: PNG, JPEG and other Pillow formats, and DICOM.

DICOM is read with an allow-list of tags (``specific_tags``): only the tags
needed to decode pixels are parsed, so patient-identifying attributes
(PatientName, PatientID, dates, ...) never enter memory, let alone an output.
Burned-in text in the pixels is not detected: see the README's limitations.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from PIL import Image, UnidentifiedImageError

from site_agent.errors import ImageDecodeError

__all__ = ["DICOM_PIXEL_TAGS", "decode_image", "is_dicom"]

#: Image files larger than this are refused (bytes).
MAX_IMAGE_BYTES = 256 * 1024 * 1024
#: The only DICOM attributes ever read: the Image Pixel module and the
#: modality/VOI LUT attributes needed to turn stored values into grey levels.
DICOM_PIXEL_TAGS = (
    "SamplesPerPixel",
    "PhotometricInterpretation",
    "Rows",
    "Columns",
    "BitsAllocated",
    "BitsStored",
    "HighBit",
    "PixelRepresentation",
    "PlanarConfiguration",
    "NumberOfFrames",
    "RescaleSlope",
    "RescaleIntercept",
    "WindowCenter",
    "WindowWidth",
    "PixelData",
)


def is_dicom(path: Path) -> bool:
    """Whether ``path`` starts with the DICOM preamble (``DICM`` at byte 128)."""
    with path.open("rb") as handle:
        head = handle.read(132)
    return len(head) == 132 and head[128:] == b"DICM"


def decode_image(path: Path, channels: int) -> NDArray[np.uint8]:
    """Decodes one image file to ``uint8 [H, W, channels]``.

    Raises:
        ImageDecodeError: unreadable, corrupt, too large or unsupported.
    """
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise ImageDecodeError(f"cannot read image {path}: {exc.strerror or exc}") from exc
    if size > MAX_IMAGE_BYTES:
        raise ImageDecodeError(f"{path}: larger than {MAX_IMAGE_BYTES} bytes")
    grey = _decode_dicom(path) if is_dicom(path) else _decode_pillow(path, channels)
    if grey.ndim == 2:
        grey = grey[..., None]
    if grey.shape[-1] == channels:
        return grey
    if channels == 3:
        return np.repeat(grey, 3, axis=-1)
    return np.asarray(Image.fromarray(grey).convert("L"))[..., None]


def _decode_pillow(path: Path, channels: int) -> NDArray[np.uint8]:
    try:
        with Image.open(path) as image:
            image.load()
            converted = image.convert("L" if channels == 1 else "RGB")
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
        raise ImageDecodeError(f"{path}: not a readable image ({exc})") from exc
    return np.asarray(converted, dtype=np.uint8)


def _decode_dicom(path: Path) -> NDArray[np.uint8]:
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        dataset = pydicom.dcmread(path, specific_tags=list(DICOM_PIXEL_TAGS))
        pixels = dataset.pixel_array.astype(np.float64)
    except (InvalidDicomError, AttributeError, ValueError, RuntimeError, OSError) as exc:
        raise ImageDecodeError(f"{path}: DICOM pixel data cannot be decoded ({exc})") from exc
    if pixels.ndim == 3 and dataset.get("SamplesPerPixel", 1) == 1:
        pixels = pixels[pixels.shape[0] // 2]  # a multi-frame series: its middle frame
    pixels = pixels * float(dataset.get("RescaleSlope", 1) or 1) + float(
        dataset.get("RescaleIntercept", 0) or 0
    )
    low, high = _window(dataset, pixels)
    scaled = np.clip((pixels - low) / max(high - low, 1e-6), 0.0, 1.0)
    if dataset.get("PhotometricInterpretation") == "MONOCHROME1":
        scaled = 1.0 - scaled
    return np.asarray(np.round(scaled * 255.0), dtype=np.uint8)


def _window(dataset: object, pixels: NDArray[np.float64]) -> tuple[float, float]:
    center, width = getattr(dataset, "WindowCenter", None), getattr(dataset, "WindowWidth", None)
    if center is not None and width is not None:
        center = float(center[0] if hasattr(center, "__len__") else center)
        width = float(width[0] if hasattr(width, "__len__") else width)
        if width > 1:
            return center - width / 2, center + width / 2
    return float(pixels.min()), float(pixels.max())
