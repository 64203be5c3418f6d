"""Received ``.npy``/``.npz`` bytes and images: bounded before allocation, typed errors only.

An uploaded ``.npy`` of 200 bytes whose header declared 37 GiB made ``np.load``
try to allocate it (a ``MemoryError``, a 500); a mangled header escaped as a
tokenizer error; an ``index.npz`` in a signed bundle could do the same to the
registry at publication and to every hub at sync, or inflate a small archive to
gigabytes. Pillow tried every plugin it has (EPS runs Ghostscript) and some
raised ``NotImplementedError``. These tests build that class of input, and a
seeded mutation run over many formats that may only ever fail as
``ImageDecodeError``.
"""

from __future__ import annotations

import io
import random
import struct
import tracemalloc
import zipfile
from collections.abc import Callable, Iterable, Iterator

import numpy as np
import pytest
from PIL import Image

from protocol import PILLOW_FORMATS, ArtifactError, ImageDecodeError, MediaType, load_index
from protocol import decode_image_bytes as decode
from protocol._npy import NpyError, read_npy, read_npz


def _npy_bytes(shape: tuple[int, ...], descr: str = "<f4", body: bytes = b"\0" * 64) -> bytes:
    """A version 1.0 .npy whose header says ``shape`` whatever ``body`` holds."""
    header = f"{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape!r}, }}"
    header += " " * (63 - (10 + len(header)) % 64) + "\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header.encode() + body


def _saved(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def _zip(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def test_a_huge_declared_shape_is_refused_from_the_header_without_allocating() -> None:
    tiny = _npy_bytes((10**10,))  # 37 GiB declared, 64 bytes present
    tracemalloc.start()
    try:
        with pytest.raises(ImageDecodeError, match="more than the limit"):
            decode(tiny, 1)
        with pytest.raises(ImageDecodeError, match="more than the limit"):
            decode(tiny, 1, media_type=MediaType.NPY)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1024**2  # numpy's allocations are traced: nothing of the 37 GiB was asked for
    # Within the bound, but more than the file holds: refused before the allocation too.
    with pytest.raises(ImageDecodeError, match="declares 4000000 bytes of data, the file has 64"):
        decode(_npy_bytes((1000, 1000)), 1)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (_npy_bytes((2, 2), descr="|O", body=b"\x80\x04N."), "object arrays are refused"),
        (b"\x93NUMPY\x01\x00\x10\x00{'descr': '<f4', ", "malformed .npy header"),
        (b"\x93NUMPY\x01\x00\xff\x7f" + b"{" * 40, "malformed .npy header"),
        (b"\x93NUMPY\x09\x00", "malformed .npy header|unsupported .npy format version"),
        (_npy_bytes((-1, 2)), "malformed .npy"),
        # Zero-size items that numpy widens to one character when it allocates (37 GiB).
        (_npy_bytes((10**10,), descr="<U0"), "zero-size items"),
        (_npy_bytes((10**10,), descr="|S0"), "zero-size items"),
        (_npy_bytes((10**10,), descr="|V0"), "zero-size items"),
    ],
)
def test_malformed_headers_are_typed_errors(data: bytes, message: str) -> None:
    with pytest.raises(ImageDecodeError, match=message.replace(".", r"\.").replace("|", "|")):
        decode(data, 1)


@pytest.mark.parametrize(
    "array",
    [
        np.arange(12, dtype=np.uint8).reshape(3, 4),
        np.asfortranarray(np.arange(30, dtype=">i4").reshape(5, 6)),
        np.arange(24, dtype=np.float16).reshape(2, 3, 4),
        np.zeros((0, 3), np.float64),
    ],
)
def test_read_npy_gives_what_np_load_gives(array: np.ndarray) -> None:
    data = _saved(array)
    read = read_npy(data, max_bytes=1024)
    expected = np.load(io.BytesIO(data), allow_pickle=False)
    assert read.dtype == expected.dtype
    assert read.shape == expected.shape
    np.testing.assert_array_equal(read, expected)
    assert read.flags.writeable
    with pytest.raises(NpyError, match="more than the limit"):
        read_npy(data, max_bytes=array.nbytes - 1) if array.nbytes else read_npy(
            _saved(np.zeros(8)), max_bytes=63
        )


def _index(**arrays: np.ndarray) -> bytes:
    return _zip({f"{name}.npy": _saved(array) for name, array in arrays.items()})


GOOD_INDEX = {
    "embeddings": np.ones((4, 8), np.float32),
    "labels": np.zeros(4, np.int64),
    "group_sizes": np.ones(4, np.int64),
}


def test_an_index_whose_header_declares_gigabytes_is_refused_from_the_header() -> None:
    members = {
        "embeddings.npy": _npy_bytes((10**10,)),  # 544 bytes zipped, 37 GiB declared
        "labels.npy": _saved(np.zeros(2, np.int64)),
        "group_sizes.npy": _saved(np.zeros(2, np.int64)),
    }
    with pytest.raises(ArtifactError, match="more than the limit"):
        load_index(_zip(members))


def test_an_index_that_inflates_past_the_bound_is_refused_before_inflating() -> None:
    big = np.zeros((2048, 1024), np.float32)  # 8 MiB of zeros: a few KB deflated
    data = _index(**{**GOOD_INDEX, "embeddings": big})
    assert len(data) < 64 * 1024
    with pytest.raises(ArtifactError, match="inflate to .* more than the limit of 1048576"):
        load_index(data, max_bytes=1024**2)
    assert load_index(data, max_bytes=16 * 1024**2)["embeddings"].shape == big.shape


def test_a_member_larger_than_its_archive_declares_is_cut_off_and_refused() -> None:
    data = bytearray(_index(**GOOD_INDEX))
    # Lower the inflated size that the central directory declares for the first member.
    directory = data.rindex(b"PK\x01\x02")
    first = data.index(b"PK\x01\x02")
    assert first <= directory
    (declared,) = struct.unpack_from("<I", data, first + 24)
    struct.pack_into("<I", data, first + 24, declared // 2)
    with pytest.raises(ArtifactError, match="not a readable npz"):
        load_index(bytes(data))


def test_index_members_must_be_exactly_the_three_arrays() -> None:
    good = {f"{name}.npy": _saved(array) for name, array in GOOD_INDEX.items()}
    assert set(read_npz(_zip(good), names=GOOD_INDEX, max_bytes=1024)) == set(GOOD_INDEX)
    for members in (
        {**good, "extra.npy": _saved(np.zeros(1))},
        {k.removesuffix(".npy") + ".bin": v for k, v in good.items()},
        {k: v for k, v in good.items() if k != "labels.npy"},
    ):
        with pytest.raises(ArtifactError, match="exactly"):
            load_index(_zip(members))


def _mutations(
    seeds: list[bytes], count: int, seed: int, *, keep: int = 0, truncate: bool = False
) -> Iterator[bytes]:
    """``count`` seeded mutants of ``seeds``: 1-6 bytes flipped, runs cut or inserted.

    ``keep`` leading bytes are never touched; with ``truncate`` a mutation may also cut
    the file short (and runs of up to 16 bytes are cut).
    """
    generator = random.Random(seed)
    flip, cut, insert, longest = (0.5, 0.7, 0.85, 16) if truncate else (0.6, 0.8, 1.0, 8)
    for _ in range(count):
        data = bytearray(generator.choice(seeds))
        for _ in range(generator.randint(1, 6)):
            if len(data) <= keep:
                break
            at = generator.randrange(keep, len(data))
            roll = generator.random()
            if roll < flip:
                data[at] = generator.randrange(256)
            elif roll < cut:
                del data[at : at + generator.randint(1, longest)]
            elif roll < insert:
                data[at:at] = generator.randbytes(generator.randint(1, 8))
            else:
                del data[at:]
        yield bytes(data)


def _escaped(read: Callable[[bytes], object], inputs: Iterable[bytes], typed: type) -> list[str]:
    """The exceptions other than ``typed`` that ``read`` raised on ``inputs``."""
    escaped = []
    for data in inputs:
        try:
            read(data)
        except typed:
            continue
        except Exception as exc:  # noqa: BLE001  (what the tests look for)
            escaped.append(f"{type(exc).__name__}: {exc}"[:200])
    return escaped


def test_mutated_indexes_fail_only_as_artifact_errors() -> None:
    """Corrupt deflate streams escaped as zlib.error (a 500 at the registry, a failed sync)."""
    seeds = []
    for save in (np.savez, np.savez_compressed):
        buffer = io.BytesIO()
        save(buffer, **GOOD_INDEX)
        seeds.append(buffer.getvalue())
    escaped = _escaped(load_index, _mutations(seeds, 3000, seed=3), ArtifactError)
    assert not escaped, escaped[:10]


def _pillow(array: np.ndarray, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, fmt, **options)
    return buffer.getvalue()


GREY = (np.arange(17 * 23) % 251).astype(np.uint8).reshape(17, 23)


@pytest.mark.parametrize("fmt", ["BMP", "TIFF", "GIF", "WEBP", "PPM"])
def test_the_listed_pillow_formats_decode(fmt: str) -> None:
    assert fmt in PILLOW_FORMATS
    pixels = decode(_pillow(GREY, fmt, **({"lossless": True} if fmt == "WEBP" else {})), 1)
    assert pixels.shape == (17, 23, 1)
    assert np.abs(pixels[..., 0].astype(int) - GREY).max() <= 1


@pytest.mark.parametrize("fmt", ["ICO", "PCX", "SGI", "TGA", "IM", "DDS"])
def test_other_pillow_formats_are_never_tried(fmt: str) -> None:
    rgb = np.repeat(GREY[..., None], 3, axis=-1)
    data = _pillow(rgb, fmt)
    with Image.open(io.BytesIO(data)) as image:
        image.load()  # Pillow itself would read it
    with pytest.raises(ImageDecodeError, match="not a readable image"):
        decode(data, 1)


def test_an_eps_upload_never_reaches_ghostscript() -> None:
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n"
    with pytest.raises(ImageDecodeError, match="not a readable image"):
        decode(eps, 1)


def _seeds() -> list[bytes]:
    rng = np.random.default_rng(0)
    rgb = (rng.random((19, 21, 3)) * 255).astype(np.uint8)
    seeds = [_saved(GREY), _saved(rgb.astype(np.float32)), _saved(np.asfortranarray(GREY))]
    for fmt in ("PNG", "JPEG", "BMP", "TIFF", "GIF", "WEBP", "PPM", "ICO", "DDS", "PCX"):
        for mode in ("L", "RGB", "RGBA", "P"):
            try:
                seeds.append(_pillow(np.asarray(Image.fromarray(rgb).convert(mode)), fmt))
            except (OSError, ValueError, KeyError):
                continue  # the format cannot write that mode
    return seeds


def test_mutated_images_of_many_formats_fail_only_as_image_decode_errors() -> None:
    """A seeded mutation run (bytes flipped, cut, inserted): no other exception escapes.

    Before the bounds, this run's ancestors found MemoryError, tokenize.TokenError,
    SyntaxError and NotImplementedError.
    """
    escaped: list[str] = []
    for data in _mutations(_seeds(), 4000, seed=7, truncate=True):
        for channels in (1, 3):
            try:
                pixels = decode(data, channels)
            except ImageDecodeError:
                continue
            except Exception as exc:  # noqa: BLE001  (what the test looks for)
                escaped.append(f"{type(exc).__name__}: {exc}"[:200])
                continue
            assert pixels.dtype == np.uint8
            assert pixels.shape[-1] == channels
    assert not escaped, escaped[:10]


def test_mutated_dicom_files_fail_only_as_image_decode_errors() -> None:
    """pydicom's BytesLengthException, NotImplementedError (an unknown VR) and TypeError
    escaped as 500s; every failure of pydicom on received bytes is an ImageDecodeError."""
    import warnings
    from pathlib import Path

    from pydicom.data import get_testdata_file

    seeds = [
        Path(str(get_testdata_file(name))).read_bytes()
        for name in ("CT_small.dcm", "MR_small.dcm", "SC_rgb_small_odd.dcm")
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns about what the mutations break
        # The first 132 bytes (preamble and DICM) kept, so that the mutants reach pydicom.
        escaped = _escaped(
            lambda data: decode(data, 1),
            _mutations(seeds, 1500, seed=5, keep=132),
            ImageDecodeError,
        )
    assert not escaped, escaped[:10]
