"""The calibrated softmax: what a specialist's logits and its card's temperature mean.

A contract between the site agent and the hub: the site fits the temperature
on validation (temperature scaling) and reports held-out metrics from these
probabilities; the hub turns the ONNX model's logits into the probabilities it
ensembles and answers with. One implementation, so both mean the same thing.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

__all__ = ["calibrated_softmax"]


def calibrated_softmax(
    logits: NDArray[np.floating], temperature: float = 1.0
) -> NDArray[np.float64]:
    """Row-wise softmax of ``logits / temperature`` (``[N, K]`` in, float64 ``[N, K]`` out).

    Raises:
        ValueError: ``temperature`` is not a positive finite number.
    """
    if not (np.isfinite(temperature) and temperature > 0):
        raise ValueError(f"the temperature must be positive and finite, not {temperature}")
    scaled = np.asarray(logits, dtype=np.float64) / temperature
    scaled -= scaled.max(axis=1, keepdims=True)
    exp = np.exp(scaled)
    out: NDArray[np.float64] = exp / exp.sum(axis=1, keepdims=True)
    return out
