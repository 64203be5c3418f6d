"""The reference preprocessing shared by training and the hub."""

from __future__ import annotations

import numpy as np
import pytest

from protocol import Preprocessing, ResizePolicy, preprocess


def _spec(channels: int = 1, resize: ResizePolicy = ResizePolicy.RESIZE) -> Preprocessing:
    return Preprocessing(
        input_size=(8, 8),
        channels=channels,
        mean=(0.5,) * channels,
        std=(0.5,) * channels,
        resize=resize,
    )


def test_normalisation_of_a_constant_image() -> None:
    image = np.full((1, 8, 8, 1), 255, np.uint8)
    assert np.allclose(preprocess(image, _spec()), 1.0)
    assert np.allclose(preprocess(np.zeros((1, 8, 8, 1), np.uint8), _spec()), -1.0)


@pytest.mark.parametrize("policy", list(ResizePolicy))
def test_every_policy_gives_the_input_size(policy: ResizePolicy) -> None:
    image = np.random.default_rng(0).integers(0, 255, (2, 20, 12, 3), dtype=np.uint8)
    out = preprocess(image, _spec(3, policy))
    assert out.shape == (2, 3, 8, 8)
    assert out.dtype == np.float32


def test_grey_to_rgb_and_back() -> None:
    grey = np.random.default_rng(0).integers(0, 255, (1, 8, 8, 1), dtype=np.uint8)
    rgb = preprocess(grey, _spec(3))
    assert np.allclose(rgb[0, 0], rgb[0, 2])
    assert np.allclose(
        preprocess(np.repeat(grey, 3, axis=-1), _spec(1)), preprocess(grey, _spec(1)), atol=1 / 127
    )


def test_rejects_wrong_dtype() -> None:
    with pytest.raises(ValueError, match="uint8"):
        preprocess(np.zeros((1, 8, 8, 1), np.float32), _spec())  # type: ignore[arg-type]
