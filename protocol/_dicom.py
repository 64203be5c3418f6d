"""DICOM read within bounds: the cost of decoding is checked from the header first.

A DICOM file can cost far more to decode than it weighs: a deflated data set
(transfer syntax 1.2.840.10008.1.2.1.99) inflates about a thousandfold, and a
multi-frame file multiplies the pixels of one frame by its number of frames.
pydicom inflates a deflated body whole before it reads a tag, so this module
does the inflating itself, in bounded steps:

1. the file meta header names the transfer syntax;
2. for a deflated body, at most ``max_dicom_header_bytes`` are inflated and
   the pixel module is read from them;
3. rows x columns x frames is checked against ``max_image_pixels`` and
   rows x columns x samples x frames x bits allocated / 8 against
   ``max_pixel_data_bytes``, before any pixel is decoded;
4. the rest is inflated only up to the size that header announces; a body
   that inflates to more is refused.

What comes out is an ordinary (not deflated) DICOM file for pydicom to read.
The hub's decoder and every site-agent reader of DICOM go through
:func:`bounded_dicom`.
"""

from __future__ import annotations

import io
import zlib
from dataclasses import dataclass
from typing import Any

from protocol.errors import ImageDecodeError

__all__ = ["DEFLATED_TRANSFER_SYNTAX", "DecodeLimits", "DicomSize", "bounded_dicom"]

#: Deflated Explicit VR Little Endian: the body after the file meta is raw deflate.
DEFLATED_TRANSFER_SYNTAX = "1.2.840.10008.1.2.1.99"
_EXPLICIT_LITTLE = "1.2.840.10008.1.2.1"
_SIZE_TAGS = ("Rows", "Columns", "SamplesPerPixel", "NumberOfFrames", "BitsAllocated")
_SLACK_BYTES = 64 * 1024  # elements after the pixel data (padding, overlays' ends)


@dataclass(frozen=True)
class DecodeLimits:
    """How much decoding one image may cost. Checked from headers, before decoding.

    Attributes:
        max_image_pixels: rows x columns x frames (every frame counts).
        max_pixel_data_bytes: decoded pixel data, rows x columns x samples x
            frames x bits allocated / 8.
        max_dicom_header_bytes: the DICOM elements before the pixel data, once
            inflated (a deflated file's header must fit in this).
    """

    max_image_pixels: int = 64 * 1024 * 1024
    max_pixel_data_bytes: int = 256 * 1024 * 1024
    max_dicom_header_bytes: int = 1024 * 1024


@dataclass(frozen=True)
class DicomSize:
    """What a DICOM header says its pixel data will cost."""

    rows: int
    columns: int
    samples: int
    frames: int
    bits_allocated: int

    @property
    def pixels(self) -> int:
        """Rows x columns x frames."""
        return self.rows * self.columns * self.frames

    @property
    def pixel_data_bytes(self) -> int:
        """The decoded pixel data's size in bytes."""
        return -(-self.pixels * self.samples * self.bits_allocated // 8)

    def check(self, limits: DecodeLimits) -> None:
        """Raises :class:`ImageDecodeError` when decoding would exceed ``limits``."""
        if self.rows < 1 or self.columns < 1:
            raise ImageDecodeError(f"the image is empty ({self.rows}x{self.columns})")
        if self.pixels > limits.max_image_pixels:
            raise ImageDecodeError(
                f"the image is {self.columns}x{self.rows} pixels x {self.frames} frame(s), "
                f"more than the limit of {limits.max_image_pixels} pixels"
            )
        if self.pixel_data_bytes > limits.max_pixel_data_bytes:
            raise ImageDecodeError(
                f"the pixel data would decode to {self.pixel_data_bytes} bytes, more than "
                f"the limit of {limits.max_pixel_data_bytes}"
            )


def _int(dataset: Any, keyword: str, default: int) -> int:
    value = dataset.get(keyword, default)
    try:
        number = int(value if value not in (None, "") else default)
    except (TypeError, ValueError) as exc:
        raise ImageDecodeError(f"DICOM {keyword} is not a number") from exc
    if number < 0:
        raise ImageDecodeError(f"DICOM {keyword} is negative")
    return number


def size_of(dataset: Any) -> DicomSize:
    """The pixel module's dimensions, as a header states them."""
    if "Rows" not in dataset or "Columns" not in dataset:
        raise ImageDecodeError("the DICOM file has no Rows and Columns before its pixel data")
    return DicomSize(
        rows=_int(dataset, "Rows", 0),
        columns=_int(dataset, "Columns", 0),
        samples=max(_int(dataset, "SamplesPerPixel", 1), 1),
        frames=max(_int(dataset, "NumberOfFrames", 1), 1),
        bits_allocated=max(_int(dataset, "BitsAllocated", 8), 1),
    )


def _read_header(data: bytes) -> Any:
    import pydicom

    return pydicom.dcmread(
        io.BytesIO(data), stop_before_pixels=True, specific_tags=list(_SIZE_TAGS)
    )


def _meta(data: bytes) -> tuple[Any, int]:
    """The file meta data set and the offset of the body that follows it."""
    from pydicom.filereader import read_preamble

    from protocol._compat import read_file_meta

    stream = io.BytesIO(data)
    read_preamble(stream, False)
    meta = read_file_meta(stream)
    return meta, stream.tell()


def _plain_file(data: bytes, meta: Any, body: bytes) -> bytes:
    """Preamble, the file meta rewritten to Explicit VR Little Endian, then ``body``."""
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_file_meta_info

    meta = meta.copy()
    meta.TransferSyntaxUID = _EXPLICIT_LITTLE
    out = DicomBytesIO()
    out.write(data[:128] + b"DICM")
    write_file_meta_info(out, meta, enforce_standard=False)
    out.write(body)
    return out.getvalue()


class _Inflater:
    """Raw deflate, never producing more than it is allowed."""

    def __init__(self, compressed: bytes) -> None:
        self._engine = zlib.decompressobj(-zlib.MAX_WBITS)
        self._pending = compressed
        self.out = bytearray()

    def until(self, limit: int) -> bool:
        """Inflates up to ``limit`` bytes in all; whether the stream ended within it."""
        while len(self.out) < limit and self._pending:
            piece = self._engine.decompress(self._pending, limit - len(self.out))
            self._pending = self._engine.unconsumed_tail
            self.out += piece
            if self._engine.eof or not piece:
                break
        if len(self.out) >= limit and not self._engine.eof:
            # At the limit: the stream may hold more. One byte tells, and is kept.
            probe = self._engine.decompress(self._pending, 1)
            self._pending = self._engine.unconsumed_tail
            if probe:
                self.out += probe
                return False
        return True


def bounded_dicom(data: bytes, limits: DecodeLimits) -> tuple[bytes, DicomSize]:
    """Checks a DICOM file's decoding cost from its header; inflates a deflated body, bounded.

    Returns:
        The file as pydicom can read it without inflating anything (the bytes
        given, unless they were deflated), and the header's :class:`DicomSize`.

    Raises:
        ImageDecodeError: not DICOM, malformed, over a limit, or a deflated
            body that inflates to more than its header announces.
    """
    from pydicom.errors import InvalidDicomError

    try:
        meta, body_at = _meta(data)
        syntax = str(meta.get("TransferSyntaxUID", ""))
        if syntax != DEFLATED_TRANSFER_SYNTAX:
            size = size_of(_read_header(data))
            size.check(limits)
            return data, size
        inflater = _Inflater(data[body_at:])
        ended = inflater.until(limits.max_dicom_header_bytes)
        size = size_of(_read_header(_plain_file(data, meta, bytes(inflater.out))))
        size.check(limits)
        allowed = limits.max_dicom_header_bytes + size.pixel_data_bytes + _SLACK_BYTES
        if not ended and not inflater.until(allowed):
            raise ImageDecodeError(
                f"the deflated data set inflates to more than its header announces "
                f"({allowed} bytes)"
            )
        return _plain_file(data, meta, bytes(inflater.out)), size
    except ImageDecodeError:
        raise
    except zlib.error as exc:
        raise ImageDecodeError(f"the deflated DICOM data set is corrupt ({exc})") from exc
    except InvalidDicomError as exc:
        raise ImageDecodeError(f"not a readable DICOM file ({exc})") from exc
    except Exception as exc:  # pydicom on untrusted bytes: any failure is the file's
        # (ValueError, KeyError, OSError mostly; BytesLengthException, NotImplementedError
        # for an unknown VR, TypeError from a mangled string element)
        raise ImageDecodeError(f"not a readable DICOM file ({type(exc).__name__}: {exc})") from exc
