"""The membership-inference evaluation on real PneumoniaMNIST images (pixels as embeddings)."""

from __future__ import annotations

import numpy as np

from protocol import IndexMode
from simulations import (
    attack_auc,
    candidate_pool,
    loss_attack_auc,
    membership_table,
    rad_accuracy,
)
from site_agent.data import LocalDataset
from site_agent.index import IndexSettings


def _pixels(images: np.ndarray) -> np.ndarray:
    return images.reshape(len(images), -1).astype(np.float32) - 128.0


def test_raw_rows_give_members_away_and_prototypes_hide_them(pneumonia: LocalDataset) -> None:
    data = pneumonia.subsample(max_train=400, max_eval=200, seed=0)
    rows = membership_table(
        _pixels,
        data.train.images, data.train.labels, data.test.images, data.test.labels,
        data.task.labels,
        [("raw", IndexSettings(IndexMode.RAW)), ("k=10", IndexSettings(k=10)),
         ("k=10 noisy", IndexSettings(k=10, noise_std=0.05))],
        held_out=(data.val.images, data.val.labels),
        control_settings=[("control", IndexSettings(k=10))],
    )  # fmt: skip
    raw, prototypes, noisy, control = rows
    assert raw.attack_auc == 1.0  # every member is its own nearest entry
    assert raw.index_entries == 400
    assert prototypes.attack_auc < 0.9
    assert prototypes.index_entries < 400 // 10 + 2
    assert noisy.noise_std == 0.05
    # Pixels are not trained on anything: an index of non-members tells nothing.
    assert control.setting == "control"
    assert 0.35 <= control.attack_auc <= 0.65
    assert control.index_entries <= len(data.val) // 10 + 2
    for row in rows:
        assert 0.4 <= row.rad_accuracy <= 1.0


def test_attack_auc_and_rad_accuracy_on_known_answers() -> None:
    assert attack_auc(np.array([0.9, 0.8]), np.array([0.1, 0.2])) == 1.0
    assert attack_auc(np.array([0.5, 0.5]), np.array([0.5, 0.5])) == 0.5
    index = np.eye(2, dtype=np.float32)
    queries = np.array([[1.0, 0.1], [0.1, 1.0]], np.float32)
    assert rad_accuracy(index, np.array([0, 1]), queries, np.array([0, 1]), top_k=1) == 1.0
    assert rad_accuracy(index[:0], np.array([], np.int64), queries, np.array([0, 1])) == 0.0


def test_loss_attack_and_candidate_pool() -> None:
    confident = np.array([[0.9, 0.1], [0.2, 0.8]])
    unsure = np.array([[0.6, 0.4], [0.45, 0.55]])
    labels = np.array([0, 1])
    assert loss_attack_auc(confident, labels, unsure, labels) == 1.0
    assert loss_attack_auc(unsure, labels, confident, labels) == 0.0
    members, others = candidate_pool(100, 30, seed=1)
    assert len(members) == len(others) == 30
    assert len(set(members.tolist())) == 30
    assert members.max() < 100
    assert others.max() < 30
    again = candidate_pool(100, 30, seed=1)
    assert (again[0] == members).all()
