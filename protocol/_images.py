"""Decoding one received or local image to pixels: PNG, JPEG, DICOM and NumPy ``.npy``.

Shared by the site agent (local files) and the hub (uploaded bytes), so both
see the same pixels. Nothing here unpickles: ``.npy`` is read with
``allow_pickle=False``. DICOM is read with an allow-list of tags
(``specific_tags``): only the attributes needed to decode pixels are parsed
(pydicom adds the character set and the file meta header), so
patient-identifying attributes (PatientName, PatientID, dates, ...) are never
parsed. Burned-in text in the pixels is not detected (a documented limitation).
"""

from __future__ import annotations

import io
import warnings
from dataclasses import replace

import numpy as np
from numpy.typing import NDArray
from PIL import Image, UnidentifiedImageError

from protocol._diagnosis import MediaType
from protocol._dicom import DecodeLimits, bounded_dicom
from protocol._npy import NpyError, read_npy
from protocol.errors import ImageDecodeError

__all__ = [
    "DICOM_PIXEL_TAGS",
    "MAX_IMAGE_PIXELS",
    "PILLOW_FORMATS",
    "decode_image_bytes",
    "encode_png",
    "is_dicom_bytes",
    "sniff_media_type",
]

#: Images with more pixels than this are refused before their pixels are decoded.
MAX_IMAGE_PIXELS = DecodeLimits().max_image_pixels
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
_NPY_MAGIC = b"\x93NUMPY"


def is_dicom_bytes(data: bytes) -> bool:
    """Whether ``data`` starts with the DICOM preamble (``DICM`` at byte 128)."""
    return len(data) >= 132 and data[128:132] == b"DICM"


def sniff_media_type(data: bytes) -> MediaType | None:
    """The media type that ``data``'s first bytes announce, or ``None``."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return MediaType.PNG
    if data.startswith(b"\xff\xd8\xff"):
        return MediaType.JPEG
    if data.startswith(_NPY_MAGIC):
        return MediaType.NPY
    if is_dicom_bytes(data):
        return MediaType.DICOM
    return None


def decode_image_bytes(
    data: bytes,
    channels: int,
    *,
    media_type: MediaType | None = None,
    max_pixels: int | None = None,
    limits: DecodeLimits | None = None,
) -> NDArray[np.uint8]:
    """Decodes one image to ``uint8 [H, W, channels]``.

    Args:
        data: the encoded image.
        channels: 1 (grey) or 3 (RGB) in the result.
        media_type: what the sender declared; ``None`` trusts the content.
            A declaration that the content contradicts is an error.
        max_pixels: the largest ``H * W`` (times frames, for DICOM) accepted;
            overrides ``limits.max_image_pixels``.
        limits: every bound of decoding (see :class:`DecodeLimits`), checked
            from the header before any pixel is decoded.

    Raises:
        ImageDecodeError: corrupt, truncated, too large, unsupported, or not
            what ``media_type`` says.
    """
    if channels not in (1, 3):
        raise ImageDecodeError(f"channels must be 1 or 3, not {channels}")
    limits = limits or DecodeLimits()
    if max_pixels is not None:
        limits = replace(limits, max_image_pixels=max_pixels)
    max_pixels = limits.max_image_pixels
    found = sniff_media_type(data)
    if found is None:
        # Pillow knows more formats (BMP, TIFF, ...) than the four the API names.
        if media_type in (MediaType.DICOM, MediaType.NPY):
            raise ImageDecodeError(f"the content is not {media_type.value}")
    elif media_type is not None and found is not media_type:
        raise ImageDecodeError(f"declared {media_type.value}, but the content is {found.value}")
    if found is MediaType.DICOM:
        pixels = _decode_dicom(data, limits)
    elif found is MediaType.NPY:
        pixels = _decode_npy(data, limits)
    else:
        pixels = _decode_pillow(data, channels, max_pixels)
    if pixels.ndim == 2:
        pixels = pixels[..., None]
    if pixels.ndim != 3 or pixels.shape[-1] not in (1, 3):
        raise ImageDecodeError(
            f"decoded pixels have shape {list(pixels.shape)}, not [H, W], [H, W, 1] or [H, W, 3]"
        )
    if pixels.shape[-1] == channels:
        return np.ascontiguousarray(pixels)
    if channels == 3:
        return np.repeat(pixels, 3, axis=-1)
    return np.asarray(Image.fromarray(pixels).convert("L"))[..., None]


def encode_png(pixels: NDArray[np.uint8]) -> bytes:
    """``uint8 [H, W, 1 | 3]`` pixels as PNG bytes (grey or RGB)."""
    buffer = io.BytesIO()
    Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels).save(buffer, "PNG")
    return buffer.getvalue()


def _check_size(height: int, width: int, max_pixels: int) -> None:
    if height < 1 or width < 1:
        raise ImageDecodeError(f"the image is empty ({height}x{width})")
    if height * width > max_pixels:
        raise ImageDecodeError(
            f"the image is {width}x{height} pixels, more than the limit of {max_pixels}"
        )


#: The formats Pillow may read. Its other plugins (EPS, which runs Ghostscript; DDS,
#: ICO, PCX, PSD, SGI, TGA, ...) are rarely medical images and are never tried.
PILLOW_FORMATS = ("PNG", "JPEG", "BMP", "TIFF", "GIF", "WEBP", "PPM", "JPEG2000")


def _decode_pillow(data: bytes, channels: int, max_pixels: int) -> NDArray[np.uint8]:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=PILLOW_FORMATS) as image:
                _check_size(image.height, image.width, max_pixels)
                image.load()
                mode = "L" if channels == 1 else "RGB"
                # np.asarray copies the pixels out before the file is closed; an image
                # already in the mode wanted is not converted (that would copy it twice).
                pixels = np.asarray(
                    image if image.mode == mode else image.convert(mode), dtype=np.uint8
                )
    except ImageDecodeError:
        raise
    except (UnidentifiedImageError, Image.DecompressionBombError) as exc:
        raise ImageDecodeError(f"not a readable image ({exc})") from exc
    except Exception as exc:  # Pillow's parsers on untrusted bytes: any failure is the file's
        # (OSError, ValueError and SyntaxError mostly; NotImplementedError, struct.error,
        # IndexError from some plugins; the bomb warning, raised as an error above).
        raise ImageDecodeError(f"not a readable image ({type(exc).__name__}: {exc})") from exc
    return pixels


def _to_uint8(values: NDArray[np.generic]) -> NDArray[np.uint8]:
    """Any real-valued array scaled to 0-255 by its own range (uint8 passes unchanged)."""
    if values.dtype == np.uint8:
        return np.asarray(values, dtype=np.uint8)
    floats = values.astype(np.float64)
    if not np.isfinite(floats).all():
        raise ImageDecodeError("the array holds NaN or infinite values")
    low, high = float(floats.min()), float(floats.max())
    scaled = (floats - low) / max(high - low, 1e-12)
    return np.asarray(np.round(scaled * 255.0), dtype=np.uint8)


def _decode_npy(data: bytes, limits: DecodeLimits) -> NDArray[np.uint8]:
    try:  # the header's size is checked before anything is allocated
        array = read_npy(data, max_bytes=limits.max_pixel_data_bytes)
    except NpyError as exc:
        raise ImageDecodeError(f"not a readable .npy array ({exc})") from exc
    if array.dtype.kind not in "buif":
        raise ImageDecodeError("a .npy image must be a numeric array")
    if array.ndim == 3 and array.shape[-1] not in (1, 3) and array.shape[0] in (1, 3):
        array = np.moveaxis(array, 0, -1)  # channels-first
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (1, 3)):
        raise ImageDecodeError(
            f"a .npy image must be [H, W], [H, W, 1|3] or [1|3, H, W], not {list(array.shape)}"
        )
    _check_size(array.shape[0], array.shape[1], limits.max_image_pixels)
    return _to_uint8(array)


def _decode_dicom(data: bytes, limits: DecodeLimits) -> NDArray[np.uint8]:
    try:
        import pydicom
        from pydicom.errors import InvalidDicomError
    except ImportError as exc:  # pragma: no cover - pydicom is in every extra that decodes
        raise ImageDecodeError("DICOM support needs pydicom (pip install pydicom)") from exc
    plain, size = bounded_dicom(data, limits)  # every bound checked from the header
    try:
        dataset = pydicom.dcmread(io.BytesIO(plain), specific_tags=list(DICOM_PIXEL_TAGS))
        # A series: its middle frame only. Never more frames than the header declares.
        dataset.pixel_array_options(
            index=size.frames // 2 if size.frames > 1 else None, allow_excess_frames=False
        )
        pixels = dataset.pixel_array.astype(np.float64)
        # pydicom converts an element when it is first read: these can fail as well.
        pixels = pixels * float(dataset.get("RescaleSlope", 1) or 1) + float(
            dataset.get("RescaleIntercept", 0) or 0
        )
        low, high = _window(dataset, pixels)
        inverted = dataset.get("PhotometricInterpretation") == "MONOCHROME1"
    except InvalidDicomError as exc:
        raise ImageDecodeError(f"DICOM pixel data cannot be decoded ({exc})") from exc
    except Exception as exc:  # pydicom on untrusted bytes: any failure is the file's
        # (ValueError, KeyError, OSError mostly; BytesLengthException, NotImplementedError
        # for an unknown VR, TypeError from a mangled string element)
        raise ImageDecodeError(
            f"DICOM pixel data cannot be decoded ({type(exc).__name__}: {exc})"
        ) from exc
    scaled = np.clip((pixels - low) / max(high - low, 1e-6), 0.0, 1.0)
    if inverted:
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
