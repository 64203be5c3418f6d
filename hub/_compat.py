"""Workarounds for the hub's dependencies, in one place.

Each names the version it was written against; ``tests/test_compat.py`` fails
when one stops working or stops being needed.
"""

from __future__ import annotations

from typing import Any

__all__ = ["FAISS_BLAS_THRESHOLD_CHECKED", "faiss_blas_for_every_batch"]

#: faiss-cpu 1.15's default: flat searches with ``nq * d`` under this skip BLAS
#: (see facebookresearch/faiss#4925 and #5022, which made it dimension-aware).
FAISS_BLAS_THRESHOLD_CHECKED = 128000


def faiss_blas_for_every_batch(faiss: Any) -> None:
    """Makes flat searches use BLAS at every batch size (a process-wide faiss setting).

    The hub searches a few queries of 1280-d embeddings at a time, well under the
    default threshold, where faiss's sequential path measured 12x slower here.
    """
    faiss.cvar.distance_compute_blas_threshold = 1
