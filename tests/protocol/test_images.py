"""Image decoding shared by the site agent and the hub: every encoding, every refusal."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydicom.data import get_testdata_file

from protocol import ImageDecodeError, MediaType, decode_image_bytes, sniff_media_type


def _encode(array: np.ndarray, fmt: str) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, fmt)
    return buffer.getvalue()


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    # Only the object array (the pickle the decoder must refuse) needs pickling to be written.
    np.save(buffer, array, allow_pickle=array.dtype == object)
    return buffer.getvalue()


GREY = np.linspace(0, 255, 120).round().astype(np.uint8).reshape(12, 10)  # full range


def test_png_round_trip_in_grey_and_rgb() -> None:
    data = _encode(GREY, "PNG")
    assert sniff_media_type(data) is MediaType.PNG
    grey = decode_image_bytes(data, 1)
    assert grey.shape == (12, 10, 1)
    assert np.array_equal(grey[..., 0], GREY)
    rgb = decode_image_bytes(data, 3, media_type=MediaType.PNG)
    assert rgb.shape == (12, 10, 3)
    assert np.array_equal(rgb[..., 2], GREY)


def test_jpeg_and_other_pillow_formats() -> None:
    assert decode_image_bytes(_encode(GREY, "JPEG"), 1).shape == (12, 10, 1)
    assert decode_image_bytes(_encode(GREY, "BMP"), 1).shape == (12, 10, 1)  # sniffed by Pillow


@pytest.mark.parametrize(
    ("array", "expected"),
    [
        (GREY, GREY),
        (GREY[None], GREY),  # channels first
        (GREY[..., None], GREY),
        (GREY.astype(np.float32) / 255.0, GREY),  # scaled by its own range
        (GREY.astype(np.int16) * 4, GREY),
    ],
)
def test_npy_arrays(array: np.ndarray, expected: np.ndarray) -> None:
    decoded = decode_image_bytes(_npy(array), 1, media_type=MediaType.NPY)
    assert np.abs(decoded[..., 0].astype(int) - expected.astype(int)).max() <= 1


def test_dicom_from_pydicom() -> None:
    data = Path(get_testdata_file("CT_small.dcm")).read_bytes()
    assert sniff_media_type(data) is MediaType.DICOM
    pixels = decode_image_bytes(data, 1)
    assert pixels.shape == (128, 128, 1)
    assert pixels.dtype == np.uint8


@pytest.mark.parametrize(
    ("data", "declared", "message"),
    [
        (b"", None, "not a readable image"),
        (b"\x89PNG\r\n\x1a\n truncated", None, "not a readable image"),
        (_encode(GREY, "PNG"), MediaType.JPEG, "declared image/jpeg, but the content is image/png"),
        (b"just text", MediaType.DICOM, "not application/dicom"),
        (_npy(np.array([{"a": 1}], dtype=object)), None, "not a readable .npy"),  # no pickle
        (_npy(np.zeros((2, 3, 4, 5), np.uint8)), None, "must be [H, W]"),
        (_npy(np.array([[np.nan, 1.0]])), None, "NaN or infinite"),
        (_npy(np.array(["a", "b"])), None, "numeric array"),
        (_npy(np.zeros((0, 5), np.uint8)), None, "empty"),
    ],
)
def test_refusals(data: bytes, declared: MediaType | None, message: str) -> None:
    with pytest.raises(ImageDecodeError, match=message.replace("[", r"\[").replace(".", r"\.")):
        decode_image_bytes(data, 1, media_type=declared)


def test_size_is_checked_before_pixels_are_decoded() -> None:
    big = _encode(np.zeros((3000, 3000), np.uint8), "PNG")  # 9 Mpx, a few KB compressed
    with pytest.raises(ImageDecodeError, match="more than the limit of 1000000"):
        decode_image_bytes(big, 1, max_pixels=1_000_000)
    with pytest.raises(ImageDecodeError, match="more than the limit"):
        decode_image_bytes(_npy(np.zeros((2000, 1000), np.uint8)), 1, max_pixels=1_000_000)
