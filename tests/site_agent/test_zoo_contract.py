"""Every backbone of the zoo: train a step, export with parity, write, sign and verify a bundle."""

from __future__ import annotations

from pathlib import Path

import pytest

from protocol import IndexMode, SpecialistCard, check_index, check_onnx, load_index
from signing import KeyRing, sign_bundle, verify_bundle_dir
from site_agent.data import LocalDataset
from site_agent.index import IndexSettings
from site_agent.pipeline import write_bundle
from site_agent.train import TrainConfig, WeightsPolicy, default_zoo
from tests.conftest import SiteKeys

ZOO = default_zoo()
#: The backbones built for 224 px take 40-60 s each here: they run with the long tests.
LONG = pytest.mark.long


@pytest.mark.slow
@pytest.mark.parametrize(
    "backbone",
    [
        pytest.param(name, marks=LONG) if ZOO.get(name).default_input_size >= 224 else name
        for name in ZOO.names()
    ],
)
def test_backbone_contract(
    backbone: str, tiny_pneumonia: LocalDataset, tmp_path: Path, site_a: SiteKeys
) -> None:
    spec = ZOO.get(backbone)
    dataset = tiny_pneumonia.subsample(max_train=16, max_eval=8, seed=2)
    config = TrainConfig(
        backbone=backbone,
        weights=WeightsPolicy.DEFAULT,
        input_size=max(32, spec.min_input_size),
        epochs=1,
        batch_size=8,
        augment=False,
    )
    result = write_bundle(
        dataset,
        tmp_path / "bundle",
        site_id="site-a",
        version=1,
        license_id="CC-BY-4.0",
        config=config,
        index=IndexSettings(IndexMode.PROTOTYPE, k=2),
    )
    bundle = result.path
    assert sorted(p.name for p in bundle.iterdir()) == [
        "card.json",
        "index.npz",
        "metrics.json",
        "model.onnx",
    ]
    card = SpecialistCard.parse((bundle / "card.json").read_bytes())
    assert card.backbone == backbone
    assert card.preprocessing.channels == 1
    summary = check_onnx((bundle / "model.onnx").read_bytes())
    assert summary.num_classes == 2
    assert summary.embedding_dim == card.index.embedding_dim
    check_index(load_index((bundle / "index.npz").read_bytes()), card)
    assert result.metrics["export"]["parity_images"] == 8  # type: ignore[index]

    signed = sign_bundle(bundle, site_a.private)
    verified = verify_bundle_dir(bundle, KeyRing([site_a.trusted()]), expected_site_id="site-a")
    assert verified.digest == signed.digest
    assert set(verified.files) == {"card.json", "index.npz", "metrics.json", "model.onnx"}
