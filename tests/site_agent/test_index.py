"""The published retrieval index: privacy by default, checked against the card."""

from __future__ import annotations

import numpy as np
import pytest

from protocol import ArtifactError, IndexMode, SpecialistCard, check_index
from site_agent.errors import PrivacyIndexError
from site_agent.index import IndexSettings, build_index
from tests.conftest import card_dict

LABELS = ("normal", "pneumonia")


def _embeddings(n_per_class: tuple[int, int], dim: int = 16) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    points = [rng.normal(loc=3 * c, size=(n, dim)) for c, n in enumerate(n_per_class)]
    labels = np.concatenate([np.full(n, c) for c, n in enumerate(n_per_class)])
    return np.concatenate(points).astype(np.float32), labels.astype(np.int64)


def _card(built_privacy: object) -> SpecialistCard:
    return SpecialistCard.parse(card_dict(index=built_privacy.model_dump(mode="json")))  # type: ignore[attr-defined]


@pytest.mark.parametrize("k", [5, 10, 20])
def test_default_prototypes_hide_individual_images(k: int) -> None:
    embeddings, labels = _embeddings((57, 203))
    built = build_index(embeddings, labels, LABELS, IndexSettings(k=k))
    sizes, row_labels = built.arrays["group_sizes"], built.arrays["labels"]
    assert built.privacy.mode is IndexMode.PROTOTYPE
    assert sizes.min() >= k  # no group smaller than k
    assert len(sizes) < len(labels)  # no per-image rows
    for c in (0, 1):  # every training image is in exactly one group
        assert sizes[row_labels == c].sum() == (labels == c).sum()
    # no published row equals (or nearly equals) any single training embedding
    unit = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)
    assert (built.arrays["embeddings"] @ unit.T).max() < 0.9999
    check_index(built.arrays, _card(built.privacy))


def test_small_clusters_are_dissolved_into_groups_of_at_least_k() -> None:
    """Tight outlier clusters (3 images each) that k-means keeps apart still join a group >= k."""
    rng = np.random.default_rng(1)
    blob = rng.normal(size=(200, 8))
    directions = rng.normal(size=(6, 8))  # six directions of their own (rows are normalised)
    outliers = np.concatenate([d + rng.normal(scale=0.001, size=(3, 8)) for d in directions])
    embeddings = np.concatenate([blob, outliers]).astype(np.float32)
    labels = np.zeros(len(embeddings), dtype=np.int64)
    built = build_index(embeddings, labels, ("a", "b"), IndexSettings(k=10))
    assert built.arrays["group_sizes"].min() >= 10
    assert built.arrays["group_sizes"].sum() == len(embeddings)
    assert built.skipped_classes == ("b",)


def test_class_smaller_than_k_publishes_nothing() -> None:
    embeddings, labels = _embeddings((7, 40))
    built = build_index(embeddings, labels, LABELS, IndexSettings(k=10))
    assert built.skipped_classes == ("normal",)
    assert built.privacy.entries_per_class["normal"] == 0
    assert (built.arrays["labels"] == 1).all()


def test_noise_moves_prototypes_and_is_recorded() -> None:
    embeddings, labels = _embeddings((50, 50))
    clean = build_index(embeddings, labels, LABELS, IndexSettings(k=10))
    noisy = build_index(embeddings, labels, LABELS, IndexSettings(k=10, noise_std=0.1))
    assert noisy.privacy.noise_std == 0.1
    assert not np.allclose(clean.arrays["embeddings"], noisy.arrays["embeddings"])
    assert np.allclose(np.linalg.norm(noisy.arrays["embeddings"], axis=1), 1.0, atol=1e-5)


def test_raw_rows_only_by_explicit_opt_in() -> None:
    embeddings, labels = _embeddings((12, 9))
    built = build_index(embeddings, labels, LABELS, IndexSettings(mode=IndexMode.RAW))
    assert len(built.arrays["labels"]) == 21
    assert (built.arrays["group_sizes"] == 1).all()
    assert built.privacy.min_group_size is None
    check_index(built.arrays, _card(built.privacy))


def test_none_mode_publishes_an_empty_index() -> None:
    embeddings, labels = _embeddings((12, 9))
    built = build_index(embeddings, labels, LABELS, IndexSettings(mode=IndexMode.NONE))
    assert built.arrays["embeddings"].shape == (0, 16)


def test_bad_settings() -> None:
    embeddings, labels = _embeddings((12, 9))
    with pytest.raises(PrivacyIndexError):
        build_index(embeddings, labels, LABELS, IndexSettings(k=0))
    with pytest.raises(PrivacyIndexError, match="raw index"):
        build_index(embeddings, labels, LABELS, IndexSettings(mode=IndexMode.RAW, noise_std=0.1))


def test_card_contract_catches_a_leaky_index() -> None:
    embeddings, labels = _embeddings((50, 50))
    built = build_index(embeddings, labels, LABELS, IndexSettings(k=10))
    card = _card(built.privacy)
    leaky = dict(built.arrays, group_sizes=built.arrays["group_sizes"].copy())
    leaky["group_sizes"][0] = 3
    with pytest.raises(ArtifactError, match="fewer than k=10"):
        check_index(leaky, card)
    raw_rows = build_index(embeddings, labels, LABELS, IndexSettings(mode=IndexMode.RAW))
    with pytest.raises(ArtifactError):  # raw rows passed off as prototypes
        check_index(raw_rows.arrays, card)
