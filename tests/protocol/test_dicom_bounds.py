"""DICOM decoding is bounded from the header: deflate bombs, frame bombs, lying headers."""

from __future__ import annotations

import io
import resource
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from protocol import DecodeLimits, ImageDecodeError, bounded_dicom, decode_image_bytes
from tests.dicom_bombs import deflate_bomb, multiframe_rle


def test_a_real_deflated_file_decodes_as_pydicom_decodes_it() -> None:
    path = get_testdata_file("image_dfl.dcm")
    assert path is not None
    data = Path(path).read_bytes()
    plain, size = bounded_dicom(data, DecodeLimits())
    assert (size.rows, size.columns, size.frames) == (512, 512, 1)
    expected = pydicom.dcmread(path).pixel_array
    assert np.array_equal(pydicom.dcmread(io.BytesIO(plain)).pixel_array, expected)
    assert decode_image_bytes(data, 1).shape == (512, 512, 1)


def test_multiframe_decodes_only_its_middle_frame() -> None:
    path = get_testdata_file("SC_rgb_rle_2frame.dcm")
    assert path is not None
    frames = pydicom.dcmread(path).pixel_array
    assert frames.shape == (2, 100, 100, 3)
    decoded = decode_image_bytes(Path(path).read_bytes(), 3)
    assert decoded.shape == (100, 100, 3)


def test_a_deflate_bomb_is_refused_before_it_inflates() -> None:
    bomb = deflate_bomb(rows=512, columns=512, inflated_bytes=1024**3)
    assert len(bomb) < 1_100_000  # 1 MB that pydicom would inflate to 1 GB
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(ImageDecodeError, match="inflates to more than its header announces"):
        decode_image_bytes(bomb, 1)
    grown_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert grown_kb < 64 * 1024


def test_a_deflated_header_over_the_limits_is_refused_from_the_header() -> None:
    bomb = deflate_bomb(rows=60000, columns=60000, inflated_bytes=4 << 20)
    with pytest.raises(ImageDecodeError, match="more than the limit"):
        bounded_dicom(bomb, DecodeLimits())


def test_frames_count_against_the_pixel_and_byte_limits() -> None:
    rle = multiframe_rle(frames=100, rows=512, columns=512)
    assert len(rle) < 1_000_000
    with pytest.raises(ImageDecodeError, match="x 100 frame"):
        decode_image_bytes(rle, 1, limits=DecodeLimits(max_image_pixels=16 * 1024 * 1024))
    with pytest.raises(ImageDecodeError, match="pixel data would decode"):
        decode_image_bytes(rle, 1, limits=DecodeLimits(max_pixel_data_bytes=16 * 1024 * 1024))
    # Within the limits the same file decodes (its middle frame).
    assert decode_image_bytes(rle, 1).shape == (512, 512, 1)


def test_a_header_longer_than_its_limit_is_refused() -> None:
    small = deflate_bomb(rows=64, columns=64, inflated_bytes=64 * 64 + 200)
    limits = DecodeLimits(max_dicom_header_bytes=16)
    with pytest.raises(ImageDecodeError):
        bounded_dicom(small, limits)
    assert decode_image_bytes(small, 1).shape == (64, 64, 1)


def test_the_site_agent_reads_dicom_within_the_same_bounds(tmp_path: Path) -> None:
    from site_agent.data._images import decode_image
    from site_agent.errors import ImageDecodeError as SiteDecodeError

    path = tmp_path / "bomb.dcm"
    path.write_bytes(deflate_bomb(rows=512, columns=512, inflated_bytes=1024**3))
    with pytest.raises(SiteDecodeError, match="inflates to more"):
        decode_image(path, 1)
