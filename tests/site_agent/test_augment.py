"""Training-time augmentation: translations always, left-right mirroring on request."""

from __future__ import annotations

import torch

from site_agent.train._loop import _flip


def test_flip_mirrors_a_random_part_of_the_batch() -> None:
    batch = torch.arange(64 * 2 * 3, dtype=torch.float32).reshape(64, 1, 2, 3)
    flipped = _flip(batch, torch.Generator().manual_seed(0))
    mirrored = [bool(torch.equal(f, b.flip(-1))) for f, b in zip(flipped, batch, strict=True)]
    unchanged = [bool(torch.equal(f, b)) for f, b in zip(flipped, batch, strict=True)]
    assert all(m != u for m, u in zip(mirrored, unchanged, strict=True))  # one or the other
    assert 16 < sum(mirrored) < 48
