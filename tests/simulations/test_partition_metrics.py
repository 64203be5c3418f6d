"""Partitioning across sites and bootstrap scores: pure functions, real MedMNIST labels."""

from __future__ import annotations

import numpy as np
import pytest

from simulations import PartitionSpec, ScenarioError, partition, score_method
from site_agent.data import LocalDataset


@pytest.mark.parametrize(
    ("text", "scheme", "alpha"),
    [("iid", "iid", None), ("dirichlet:0.5", "dirichlet", 0.5), ("quantity:2", "quantity", 2.0)],
)
def test_partition_specs(text: str, scheme: str, alpha: float | None) -> None:
    spec = PartitionSpec.parse(text)
    assert (spec.scheme, spec.alpha) == (scheme, alpha)


@pytest.mark.parametrize(
    "text", ["", "random", "dirichlet", "dirichlet:0", "dirichlet:-1", "iid:3"]
)
def test_bad_partition_specs(text: str) -> None:
    with pytest.raises(ScenarioError):
        PartitionSpec.parse(text)


def test_iid_is_an_even_disjoint_cover(pneumonia: LocalDataset) -> None:
    labels = pneumonia.train.labels
    split = partition(labels, 3, PartitionSpec.parse("iid"), seed=1)
    rows = np.concatenate(split.sites)
    assert sorted(rows.tolist()) == list(range(len(labels)))
    assert max(len(s) for s in split.sites) - min(len(s) for s in split.sites) <= 1


def test_dirichlet_skews_labels_but_every_site_sees_every_class(pneumonia: LocalDataset) -> None:
    labels = pneumonia.train.labels
    split = partition(labels, 10, PartitionSpec.parse("dirichlet:0.1"), seed=0, min_per_class=2)
    assert len(np.unique(np.concatenate(split.sites))) == len(labels)  # disjoint
    counts = np.asarray(split.class_counts(labels, 2))
    assert counts.min() >= 2
    shares = counts[:, 1] / counts.sum(axis=1)
    assert shares.max() - shares.min() > 0.5  # strongly skewed, unlike iid


def test_quantity_skew_varies_sizes(pneumonia: LocalDataset) -> None:
    split = partition(pneumonia.train.labels, 5, PartitionSpec.parse("quantity:0.5"), seed=0)
    sizes = sorted(len(s) for s in split.sites)
    assert sizes[-1] > 3 * sizes[0]


def test_too_few_images_is_a_clear_error() -> None:
    with pytest.raises(ScenarioError, match="cannot give 10 sites"):
        partition(np.array([0, 1, 0, 1]), 10, PartitionSpec.parse("iid"))


def test_scores_and_intervals() -> None:
    truth = np.array([0, 1] * 50)
    perfect = score_method("perfect", truth, truth, np.eye(2)[truth], 2)
    assert perfect.accuracy.value == perfect.accuracy.low == 1.0
    assert perfect.macro_auc is not None
    assert perfect.macro_auc.value == 1.0
    rng = np.random.default_rng(0)
    noisy = np.where(rng.random(100) < 0.8, truth, 1 - truth)
    scored = score_method("noisy", truth, noisy, None, 2)
    assert scored.macro_auc is None
    assert scored.accuracy.low < scored.accuracy.value < scored.accuracy.high
    assert 0.6 < scored.accuracy.value < 0.95


def test_federated_weights_are_repaired_after_dp_noise() -> None:
    import torch

    from fedapp import usable_state

    noisy = {
        "bn.running_var": torch.tensor([0.5, -0.2]),
        "bn.running_mean": torch.tensor([-0.3, 0.1]),
        "bn.num_batches_tracked": torch.tensor(41.7),
        "conv.weight": torch.tensor([-1.0]),
    }
    fixed = usable_state(noisy)
    assert fixed["bn.running_var"].tolist() == [0.5, pytest.approx(1e-3)]
    assert fixed["bn.running_mean"].tolist() == pytest.approx([-0.3, 0.1])
    assert fixed["bn.num_batches_tracked"].dtype == torch.int64
    assert int(fixed["bn.num_batches_tracked"]) == 42
    assert fixed["conv.weight"].tolist() == [-1.0]
