"""The reference preprocessing: what a card's ``preprocessing`` means, in numpy and Pillow.

Training (site agent) and inference (hub) both call :func:`preprocess`, so the
model sees the same pixels in both places. Input: ``uint8 [N, H, W, C]``;
output: ``float32 [N, C, h, w]`` ready for ``model.onnx``.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from protocol._card import Preprocessing, ResizePolicy

__all__ = ["preprocess"]


def _resize_one(
    pixels: NDArray[np.uint8], size: tuple[int, int], policy: ResizePolicy
) -> Image.Image:
    height, width = size
    image = Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels)
    if image.size == (width, height):
        return image
    if policy is ResizePolicy.RESIZE:
        return image.resize((width, height), Image.Resampling.BILINEAR)
    scale = (min if policy is ResizePolicy.LETTERBOX else max)(
        width / image.width, height / image.height
    )
    scaled = image.resize(
        (max(1, round(image.width * scale)), max(1, round(image.height * scale))),
        Image.Resampling.BILINEAR,
    )
    canvas = Image.new(image.mode, (width, height))
    canvas.paste(scaled, ((width - scaled.width) // 2, (height - scaled.height) // 2))
    return canvas


def preprocess(images: NDArray[np.uint8], spec: Preprocessing) -> NDArray[np.float32]:
    """Scales to [0, 1], resizes by ``spec.resize``, converts channels, normalises.

    Grey images given to a 3-channel model are repeated; colour images given
    to a 1-channel model are converted to luminance (ITU-R 601-2, as Pillow).
    """
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4 or images.shape[-1] not in (1, 3) or images.dtype != np.uint8:
        raise ValueError(f"expected uint8 [N, H, W, 1 or 3], got {images.dtype} {images.shape}")
    out = np.empty((len(images), spec.channels, *spec.input_size), dtype=np.float32)
    mean = np.asarray(spec.mean, dtype=np.float32)[:, None, None]
    std = np.asarray(spec.std, dtype=np.float32)[:, None, None]
    for i, pixels in enumerate(images):
        image = _resize_one(pixels, spec.input_size, spec.resize)
        mode = "L" if spec.channels == 1 else "RGB"
        if image.mode != mode:  # converting to its own mode would only copy it
            image = image.convert(mode)
        array = np.asarray(image, dtype=np.float32) / 255.0
        array = array[None] if spec.channels == 1 else array.transpose(2, 0, 1)
        out[i] = (array - mean) / std
    return out
