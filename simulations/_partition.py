"""Splitting one training set across simulated hospital sites.

Schemes (``--partition``):

- ``iid``: a uniform random split into equal parts;
- ``dirichlet:ALPHA``: label skew; each class is spread over the sites in
  proportions drawn from Dirichlet(ALPHA) (small ALPHA: each site sees mostly
  one class);
- ``quantity:ALPHA``: quantity skew; site sizes drawn from Dirichlet(ALPHA),
  labels IID within each site.

Every site gets at least ``min_per_class`` images of every class (a site
agent cannot train a classifier on a class it never saw): skewed draws are
repeated until that holds, then the shortfall is topped up from the largest
holders, and the result says how many images were moved.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from simulations.errors import ScenarioError

__all__ = ["Partition", "PartitionSpec", "partition"]

_SPEC = re.compile(r"^(iid|dirichlet:(?P<a>[0-9.]+)|quantity:(?P<q>[0-9.]+))$")


@dataclass(frozen=True)
class PartitionSpec:
    """A parsed ``--partition`` value."""

    scheme: str  # iid | dirichlet | quantity
    alpha: float | None = None

    @classmethod
    def parse(cls, text: str) -> PartitionSpec:
        """Parses ``iid``, ``dirichlet:ALPHA`` or ``quantity:ALPHA``.

        Raises:
            ScenarioError: anything else, or a non-positive alpha.
        """
        found = _SPEC.match(text.strip().lower())
        if found is None:
            raise ScenarioError(
                f"unknown partition {text!r}: use iid, dirichlet:ALPHA or quantity:ALPHA"
            )
        alpha_text = found.group("a") or found.group("q")
        if alpha_text is None:
            return cls("iid")
        try:
            alpha = float(alpha_text)
        except ValueError as exc:
            raise ScenarioError(f"partition {text!r}: {alpha_text!r} is not a number") from exc
        if alpha <= 0:
            raise ScenarioError(f"partition {text!r}: alpha must be positive")
        return cls("dirichlet" if found.group("a") else "quantity", alpha)

    def __str__(self) -> str:
        return self.scheme if self.alpha is None else f"{self.scheme}:{self.alpha:g}"


@dataclass(frozen=True)
class Partition:
    """Row indices of the training set, one array per site."""

    sites: tuple[NDArray[np.int64], ...]
    moved: int  # images reassigned to give every site every class

    def class_counts(self, labels: NDArray[np.int64], num_classes: int) -> list[list[int]]:
        """Per site, the number of images of each class."""
        return [
            np.bincount(labels[rows], minlength=num_classes).astype(int).tolist()
            for rows in self.sites
        ]


def _dirichlet_label_skew(
    labels: NDArray[np.int64], n_sites: int, alpha: float, rng: np.random.Generator
) -> list[list[int]]:
    buckets: list[list[int]] = [[] for _ in range(n_sites)]
    for label in np.unique(labels):
        rows = rng.permutation(np.flatnonzero(labels == label))
        shares = rng.dirichlet(np.full(n_sites, alpha))
        cuts = (np.cumsum(shares)[:-1] * len(rows)).astype(int)
        for site, part in enumerate(np.split(rows, cuts)):
            buckets[site].extend(part.tolist())
    return buckets


def _quantity_skew(n: int, n_sites: int, alpha: float, rng: np.random.Generator) -> list[list[int]]:
    rows = rng.permutation(n)
    shares = rng.dirichlet(np.full(n_sites, alpha))
    cuts = (np.cumsum(shares)[:-1] * n).astype(int)
    return [part.tolist() for part in np.split(rows, cuts)]


def _shortfall(buckets: list[list[int]], labels: NDArray[np.int64], need: int) -> int:
    classes = np.unique(labels)
    return sum(
        max(0, need - int(np.sum(labels[np.asarray(b, dtype=np.int64)] == c)))
        for b in buckets
        for c in classes
    )


def _top_up(buckets: list[list[int]], labels: NDArray[np.int64], need: int) -> int:
    """Moves images so every site has ``need`` of every class; returns how many moved."""
    moved = 0
    for label in np.unique(labels):
        for site, bucket in enumerate(buckets):
            have = [row for row in bucket if labels[row] == label]
            while len(have) < need:
                donor = max(
                    (s for s in range(len(buckets)) if s != site),
                    key=lambda s: sum(1 for row in buckets[s] if labels[row] == label),
                )
                candidates = [row for row in buckets[donor] if labels[row] == label]
                if len(candidates) <= need:
                    raise ScenarioError(
                        f"too few images of class {int(label)} to give every site {need}"
                    )
                row = candidates[-1]
                buckets[donor].remove(row)
                bucket.append(row)
                have.append(row)
                moved += 1
    return moved


def partition(
    labels: NDArray[np.int64],
    n_sites: int,
    spec: PartitionSpec,
    *,
    seed: int = 0,
    min_per_class: int = 2,
    attempts: int = 50,
) -> Partition:
    """Splits rows ``0..len(labels)-1`` across ``n_sites`` sites.

    Raises:
        ScenarioError: fewer than one site, or too few images for the sites.
    """
    labels = np.asarray(labels, dtype=np.int64).ravel()
    num_classes = len(np.unique(labels))
    if n_sites < 1:
        raise ScenarioError("a simulation needs at least one site")
    if len(labels) < n_sites * num_classes * min_per_class:
        raise ScenarioError(
            f"{len(labels)} training images cannot give {n_sites} sites "
            f"{min_per_class} images of each of {num_classes} classes"
        )
    rng = np.random.default_rng(seed)
    best: list[list[int]] | None = None
    for _ in range(attempts if spec.scheme != "iid" else 1):
        if spec.scheme == "iid":
            buckets = [
                part.tolist() for part in np.array_split(rng.permutation(len(labels)), n_sites)
            ]
        elif spec.scheme == "dirichlet":
            assert spec.alpha is not None
            buckets = _dirichlet_label_skew(labels, n_sites, spec.alpha, rng)
        else:
            assert spec.alpha is not None
            buckets = _quantity_skew(len(labels), n_sites, spec.alpha, rng)
        if best is None or _shortfall(buckets, labels, min_per_class) < _shortfall(
            best, labels, min_per_class
        ):
            best = buckets
        if _shortfall(best, labels, min_per_class) == 0:
            break
    assert best is not None
    moved = _top_up(best, labels, min_per_class)
    return Partition(tuple(np.sort(np.asarray(b, dtype=np.int64)) for b in best), moved)
