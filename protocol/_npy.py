"""NumPy ``.npy`` and ``.npz`` bytes that crossed a trust boundary, read within bounds.

``np.load`` allocates the array a header declares before it reads a byte of data
(a 200-byte file can ask for terabytes: a ``MemoryError``, or with overcommit an
allocation the data never fills), reads compressed ``.npz`` members to whatever
size they inflate to, and lets a malformed header escape as tokenizer or syntax
errors. Here every header is parsed first, the array's size is checked against
the caller's bound and against the bytes actually there, and only then is
anything allocated. Nothing is unpickled: object dtypes are refused.
"""

from __future__ import annotations

import io
import lzma
import math
import zipfile
import zlib
from collections.abc import Collection

import numpy as np
from numpy.lib import format as npy_format
from numpy.typing import NDArray

__all__ = ["NpyError", "read_npy", "read_npz"]

#: The longest ``.npy`` header read (numpy's own default bound).
MAX_HEADER_BYTES = 10_000


class NpyError(ValueError):
    """Not a readable ``.npy``/``.npz`` of plain arrays, or over its bound."""


def read_npy(data: bytes, *, max_bytes: int) -> NDArray[np.generic]:
    """The array in ``.npy`` bytes, if it holds at most ``max_bytes`` of data.

    Raises:
        NpyError: malformed header, object dtype, more than ``max_bytes``, or
            fewer data bytes than the header declares.
    """
    stream = io.BytesIO(data)
    try:
        version = npy_format.read_magic(stream)
        if version == (1, 0):
            header = npy_format.read_array_header_1_0(stream, max_header_size=MAX_HEADER_BYTES)
        elif version == (2, 0):
            header = npy_format.read_array_header_2_0(stream, max_header_size=MAX_HEADER_BYTES)
        else:
            raise NpyError(f"unsupported .npy format version {version[0]}.{version[1]}")
    except NpyError:
        raise
    except Exception as exc:  # numpy's parser on untrusted text: any failure is the file's
        raise NpyError(f"malformed .npy header ({type(exc).__name__}: {exc})") from exc
    shape, fortran_order, dtype = header
    if dtype.hasobject:
        raise NpyError("object arrays are refused (reading them would unpickle)")
    if dtype.itemsize == 0:  # numpy would make 'U0'/'S0' one character wide when allocating
        raise NpyError(f"arrays of zero-size items ({dtype.str}) are refused")
    if not all(isinstance(size, int) and size >= 0 for size in shape):
        raise NpyError(f"malformed .npy shape {shape!r}")
    count = math.prod(shape)
    size = count * dtype.itemsize
    if size > max_bytes:
        raise NpyError(f"the array holds {size} bytes, more than the limit of {max_bytes}")
    offset = stream.tell()
    if len(data) - offset < size:
        raise NpyError(
            f"the header declares {size} bytes of data, the file has {len(data) - offset}"
        )
    if count == 0:
        return np.zeros(shape, dtype=dtype)
    flat = np.frombuffer(data, dtype=dtype, count=count, offset=offset)
    array = flat.reshape(shape[::-1]).transpose() if fortran_order else flat.reshape(shape)
    return np.array(array)  # a writable copy, as np.load gives


def read_npz(
    data: bytes, *, names: Collection[str], max_bytes: int
) -> dict[str, NDArray[np.generic]]:
    """The arrays of an ``.npz`` holding exactly ``names``, at most ``max_bytes`` in all.

    Every member's inflated size is read from the archive's directory and bounded
    before it is inflated (a member that inflates beyond what it declares is cut
    off there and refused).

    Raises:
        NpyError: not a zip of exactly ``names`` as ``.npy`` members, or over the bound.
    """
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            members = archive.infolist()
            found = [member.filename.removesuffix(".npy") for member in members]
            if sorted(found) != sorted(names) or not all(
                m.filename.endswith(".npy") for m in members
            ):
                raise NpyError(f"the archive must hold exactly {sorted(names)}, holds {found}")
            declared = sum(member.file_size for member in members)
            if declared > max_bytes + len(members) * MAX_HEADER_BYTES:
                raise NpyError(
                    f"the arrays inflate to {declared} bytes, more than the limit of {max_bytes}"
                )
            arrays: dict[str, NDArray[np.generic]] = {}
            left = max_bytes
            for name, member in zip(found, members, strict=True):
                with archive.open(member) as stream:
                    raw = stream.read(member.file_size + 1)
                if len(raw) != member.file_size:
                    raise NpyError(f"{member.filename} is not the size its archive declares")
                arrays[name] = read_npy(raw, max_bytes=left)
                left -= arrays[name].nbytes
            return arrays
    except NpyError:
        raise
    except (
        zipfile.BadZipFile,
        zipfile.LargeZipFile,
        zlib.error,  # a corrupt deflate stream
        lzma.LZMAError,
        OSError,
        EOFError,
        ValueError,
    ) as exc:
        raise NpyError(f"not a readable .npz ({type(exc).__name__}: {exc})") from exc
    except (NotImplementedError, RuntimeError) as exc:  # a compression method, encryption
        raise NpyError(f"not a readable .npz ({exc})") from exc
