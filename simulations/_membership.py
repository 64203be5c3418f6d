"""Membership inference against a published index: how much does a bundle say about who trained it?

The attacker holds the published bundle (the model and ``index.npz``) and a
pool of candidate images, half of them from the site's training split
(members) and half from its test split (non-members). It embeds each
candidate with the published model and scores membership by the cosine
similarity to the nearest index entry: a raw index holds every member's own
embedding, so members score 1.0. The attack's ROC AUC is reported for each
index setting, next to RAD's accuracy with that index (majority label of the
k nearest entries on the test split), so the privacy/accuracy trade-off is
one table.

Two control rows separate the index's leakage from the model's own:
``control_settings`` builds the index from held-out images (never members),
so what its AUC shows comes from the model's embedding geometry, not from the
index; :func:`loss_attack_auc` is the classic attack on the model alone (the
probability it gives the candidate's true label), which no index setting can
remove.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np
from numpy.typing import NDArray

from protocol import IndexMode
from site_agent.index import IndexSettings, build_index

__all__ = [
    "AttackResult",
    "attack_auc",
    "candidate_pool",
    "loss_attack_auc",
    "membership_table",
    "rad_accuracy",
]

Embed = Callable[[NDArray[np.uint8]], NDArray[np.float32]]


@dataclass(frozen=True)
class AttackResult:
    """One row of the table."""

    setting: str
    mode: str
    k: int | None
    noise_std: float
    index_entries: int
    attack_auc: float  # 0.5: the index tells nothing about membership
    rad_accuracy: float  # RAD's top-k majority label on the test split

    def as_dict(self) -> dict[str, object]:
        """JSON form."""
        return asdict(self)


def _unit(rows: NDArray[np.floating]) -> NDArray[np.float32]:
    return np.asarray(
        rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-12), np.float32
    )


def attack_auc(member_scores: NDArray[np.floating], other_scores: NDArray[np.floating]) -> float:
    """ROC AUC of "member" vs "non-member" scores (ties count half)."""
    from sklearn.metrics import roc_auc_score

    truth = np.r_[np.ones(len(member_scores)), np.zeros(len(other_scores))]
    return float(roc_auc_score(truth, np.r_[member_scores, other_scores]))


def rad_accuracy(
    index: NDArray[np.float32],
    index_labels: NDArray[np.int64],
    queries: NDArray[np.float32],
    labels: NDArray[np.int64],
    top_k: int = 5,
) -> float:
    """Accuracy of the majority label among each query's ``top_k`` nearest entries."""
    if not len(index):
        return 0.0
    similarity = _unit(queries) @ index.T
    top = np.argsort(-similarity, axis=1)[:, : min(top_k, len(index))]
    votes = index_labels[top]
    predicted = np.array([np.bincount(row).argmax() for row in votes])
    return float((predicted == labels).mean())


def candidate_pool(
    n_train: int, n_test: int, pool_size: int | None = None, seed: int = 0
) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """Indices of the member (training) and non-member (test) candidates, as many of each."""
    rng = np.random.default_rng(seed)
    size = min(pool_size or n_test, n_test, n_train)
    members = rng.choice(n_train, size, replace=False)
    return members.astype(np.int64), rng.choice(n_test, size, replace=False).astype(np.int64)


def loss_attack_auc(
    member_probs: NDArray[np.floating],
    member_labels: NDArray[np.int64],
    other_probs: NDArray[np.floating],
    other_labels: NDArray[np.int64],
) -> float:
    """The model-only attack: the (calibrated) probability of each candidate's true label."""
    return attack_auc(
        np.take_along_axis(member_probs, member_labels[:, None], axis=1)[:, 0],
        np.take_along_axis(other_probs, other_labels[:, None], axis=1)[:, 0],
    )


def membership_table(
    embed: Embed,
    train_images: NDArray[np.uint8],
    train_labels: NDArray[np.int64],
    test_images: NDArray[np.uint8],
    test_labels: NDArray[np.int64],
    label_names: tuple[str, ...],
    settings: Sequence[tuple[str, IndexSettings]],
    *,
    held_out: tuple[NDArray[np.uint8], NDArray[np.int64]] | None = None,
    control_settings: Sequence[tuple[str, IndexSettings]] = (),
    pool_size: int | None = None,
    seed: int = 0,
) -> list[AttackResult]:
    """The attack AUC and RAD accuracy for each named index setting.

    The index is built from all training embeddings, as the site agent builds
    it; the candidate pool (:func:`candidate_pool`) takes ``pool_size``
    members and as many non-members (default: as many as the test split has).
    Each of ``control_settings`` is built from the ``held_out`` images and
    labels instead (for example the validation split).
    """
    train = embed(train_images)
    test = embed(test_images)
    member_ids, other_ids = candidate_pool(len(train), len(test), pool_size, seed)
    members = _unit(train[member_ids])
    others = _unit(test[other_ids])
    sources = [(name, setting, train, train_labels) for name, setting in settings]
    if control_settings:
        if held_out is None:
            raise ValueError("control settings need held-out images")
        held = embed(held_out[0])
        sources += [(name, setting, held, held_out[1]) for name, setting in control_settings]
    rows = []
    for name, setting, source, source_labels in sources:
        built = build_index(source, source_labels, label_names, setting)
        index = built.arrays["embeddings"].astype(np.float32)
        index_labels = built.arrays["labels"].astype(np.int64)
        if len(index):
            member_scores = (members @ index.T).max(axis=1)
            other_scores = (others @ index.T).max(axis=1)
            auc = attack_auc(member_scores, other_scores)
        else:
            auc = 0.5
        rows.append(
            AttackResult(
                setting=name,
                mode=setting.mode.value,
                k=setting.k if setting.mode is IndexMode.PROTOTYPE else None,
                noise_std=setting.noise_std,
                index_entries=len(index),
                attack_auc=round(auc, 4),
                rad_accuracy=round(rad_accuracy(index, index_labels, test, test_labels), 4),
            )
        )
    return rows
