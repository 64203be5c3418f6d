"""DICOM files that cost far more to decode than they weigh (for the hardening tests)."""

from __future__ import annotations

import io
import struct
import zlib
from functools import lru_cache

import numpy as np

__all__ = ["deflate_bomb", "multiframe_rle"]


def _element(group: int, element: int, vr: bytes, value: bytes) -> bytes:
    """One explicit-VR little-endian element."""
    if vr in (b"OB", b"OW", b"UN", b"SQ", b"UT"):
        return struct.pack("<HH2sHI", group, element, vr, 0, len(value)) + value
    return struct.pack("<HH2sH", group, element, vr, len(value)) + value


def _meta(transfer_syntax: str) -> bytes:
    from pydicom.dataset import FileMetaDataset
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_file_meta_info
    from pydicom.uid import SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = transfer_syntax
    out = DicomBytesIO()
    out.write(b"\0" * 128 + b"DICM")
    write_file_meta_info(out, meta, enforce_standard=True)
    return out.getvalue()


@lru_cache(maxsize=4)
def deflate_bomb(rows: int = 512, columns: int = 512, inflated_bytes: int = 1024**3) -> bytes:
    """A deflated DICOM whose body inflates to ``inflated_bytes`` (about 1 MB per GB).

    Its header declares a ``rows x columns`` 8-bit image, and a pixel data
    element as long as the whole inflated body: what pydicom would inflate,
    and hold, before reading a single tag.
    """

    def text(value: str) -> bytes:
        data = value.encode()
        return data + b" " * (len(data) % 2)

    header = b"".join(
        [
            _element(0x0028, 0x0002, b"US", struct.pack("<H", 1)),
            _element(0x0028, 0x0004, b"CS", text("MONOCHROME2")),
            _element(0x0028, 0x0010, b"US", struct.pack("<H", rows)),
            _element(0x0028, 0x0011, b"US", struct.pack("<H", columns)),
            _element(0x0028, 0x0100, b"US", struct.pack("<H", 8)),
            _element(0x0028, 0x0101, b"US", struct.pack("<H", 8)),
            _element(0x0028, 0x0102, b"US", struct.pack("<H", 7)),
            _element(0x0028, 0x0103, b"US", struct.pack("<H", 0)),
        ]
    )
    pixel_length = inflated_bytes - len(header) - 12
    pixel_length -= pixel_length % 2
    compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    out = io.BytesIO()
    out.write(_meta("1.2.840.10008.1.2.1.99"))
    out.write(
        compressor.compress(header + struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OB", 0, pixel_length))
    )
    block = bytes(16 * 1024 * 1024)
    left = pixel_length
    while left:
        piece = block[: min(left, len(block))]
        out.write(compressor.compress(piece))
        left -= len(piece)
    out.write(compressor.flush())
    return out.getvalue()


def multiframe_rle(frames: int = 100, rows: int = 512, columns: int = 512) -> bytes:
    """An RLE Lossless file of ``frames`` blank frames: a few kB, ``frames`` x the pixels."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import RLELossless, SecondaryCaptureImageStorage, generate_uid

    dataset = Dataset()
    dataset.file_meta = FileMetaDataset()
    dataset.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    dataset.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    dataset.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.1"
    dataset.SOPClassUID = SecondaryCaptureImageStorage
    dataset.SOPInstanceUID = dataset.file_meta.MediaStorageSOPInstanceUID
    dataset.SamplesPerPixel = 1
    dataset.PhotometricInterpretation = "MONOCHROME2"
    dataset.Rows, dataset.Columns = rows, columns
    dataset.NumberOfFrames = frames
    dataset.BitsAllocated, dataset.BitsStored, dataset.HighBit = 8, 8, 7
    dataset.PixelRepresentation = 0
    dataset.compress(RLELossless, np.zeros((frames, rows, columns), dtype=np.uint8))
    out = io.BytesIO()
    dataset.save_as(out, enforce_file_format=True)
    return out.getvalue()
