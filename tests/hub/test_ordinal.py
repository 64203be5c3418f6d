"""Ordinal tasks at the hub: the ensemble answers the median grade, a vote is the median vote.

Three sites publish real signed bundles whose ONNX models answer one fixed
distribution each over three grades, so the right answer of each rule is
known in advance; the same models under a multiclass card answer by the
largest probability and the plurality. The hub syncs them through TUF from
an in-process registry (``test_engine_fast.py`` has the same set-up).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from onnx import TensorProto, helper

from hub.web import Hub, create_app
from protocol import Mode
from registry import Registry
from tests.bundles import EMBEDDING_DIM, publish_to, read_files, write_bundle_files
from tests.conftest import SiteKeys
from tests.hub.conftest import in_process_hub, png

GRADES = ("none", "mild", "severe")
# Site A: "severe" by the largest probability, "mild" by the median (0.40 + 0.15 >= 0.5).
SITES = {
    "site-a": (0.40, 0.15, 0.45),
    "site-b": (0.50, 0.30, 0.20),
    "site-c": (0.10, 0.20, 0.70),
}
# Their mean, 0.333 / 0.217 / 0.45: severe by argmax, mild by the median. Their labels by
# the median are none, mild and severe: a three-way tie for a plurality (the mean breaks it:
# severe), mild for the median vote.


def _constant_onnx(probs: tuple[float, ...]) -> bytes:
    """image [N,1,8,8] -> embedding (flatten) -> logits = log(probs), whatever the image."""
    k = len(probs)
    graph = helper.make_graph(
        [
            helper.make_node("Flatten", ["image"], ["embedding"], axis=1),
            helper.make_node("MatMul", ["embedding", "zero"], ["scaled"]),
            helper.make_node("Add", ["scaled", "bias"], ["logits"]),
        ],
        "constant",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 1, 8, 8])],
        [
            helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", k]),
            helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["N", EMBEDDING_DIM]),
        ],
        [
            helper.make_tensor(
                "zero", TensorProto.FLOAT, [EMBEDDING_DIM, k], [0.0] * (EMBEDDING_DIM * k)
            ),
            helper.make_tensor("bias", TensorProto.FLOAT, [k], np.log(probs).tolist()),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    return model.SerializeToString()


def _card(site_id: str, task_type: str) -> dict[str, Any]:
    metrics: dict[str, Any] = {
        "split": "test", "n": 60, "accuracy": 0.6, "macro_auc": 0.8, "macro_f1": 0.55,
        "ece": 0.05, "per_class_recall": dict.fromkeys(GRADES, 0.6),
    }  # fmt: skip
    if task_type == "ordinal":
        metrics |= {"quadratic_weighted_kappa": 0.71, "mean_absolute_error": 0.45}
    return {
        "task_id": "knee-oa-grade",
        "modality": "knee X-ray",
        "labels": list(GRADES),
        "task_type": task_type,
        "site_id": site_id,
        "calibration_temperature": 1.0,
        "metrics": metrics,
        "data_summary": {
            "source": "npz",
            "n_train": 300,
            "n_val": 60,
            "n_test": 60,
            "train_class_counts": dict.fromkeys(GRADES, 100),
        },
        "index": {
            "mode": "prototype",
            "min_group_size": 10,
            "noise_std": 0.0,
            "embedding_dim": EMBEDDING_DIM,
            "entries_per_class": dict.fromkeys(GRADES, 2),
        },
    }


def _write(folder: Path, site: SiteKeys, task_type: str) -> Path:
    card = _card(site.site_id, task_type)
    model = _constant_onnx(SITES[site.site_id])
    folder = write_bundle_files(folder, site, card_overrides=card, model=model, sign=False)
    rng = np.random.default_rng(3)
    embeddings = rng.normal(size=(6, EMBEDDING_DIM)).astype(np.float32)
    embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
    np.savez(
        folder / "index.npz",
        embeddings=embeddings,
        labels=np.array([0, 0, 1, 1, 2, 2], np.int64),
        group_sizes=np.full(6, 10, np.int64),
    )
    from signing import sign_bundle

    sign_bundle(folder, site.private)
    return folder


@pytest.fixture(scope="module")
def sites(site_a: SiteKeys, site_b: SiteKeys, keys_dir: Path) -> list[SiteKeys]:
    return [site_a, site_b, SiteKeys(keys_dir, "site-c")]


@pytest.fixture(params=["ordinal", "multiclass"])
def hub(request: pytest.FixtureRequest, tmp_path: Path, sites: list[SiteKeys]) -> Iterator[Hub]:
    registry = Registry(tmp_path / "registry")
    for site in sites:
        registry.enroll(site.site_id, site.public.pem)
        folder = _write(tmp_path / site.site_id, site, request.param)
        publish_to(registry, read_files(folder), site)
    hub = in_process_hub(registry, tmp_path / "hub")
    yield hub
    asyncio.run(hub.aclose())
    registry.close()


def _answer(hub: Hub, mode: Mode) -> Any:
    assert hub.engine is not None
    return asyncio.run(
        hub.engine.diagnose(
            request_id="t", task_id="knee-oa-grade", image=png(size=8), media_type=None, mode=mode
        )
    ).response


def test_ensemble_and_voting_follow_the_task_type(hub: Hub) -> None:
    ordinal = hub.catalog.task_spec("knee-oa-grade").task_type.value == "ordinal"
    ensemble, voting = _answer(hub, Mode.ENSEMBLE), _answer(hub, Mode.VOTING)
    by_site = {p.specialist.site_id: p.label for p in ensemble.moed}
    if ordinal:
        assert by_site == {"site-a": "mild", "site-b": "none", "site-c": "severe"}
        assert ensemble.label == "mild"  # the median of the mean distribution
        assert voting.label == "mild"  # the median of none, mild, severe
    else:
        assert by_site == {"site-a": "severe", "site-b": "none", "site-c": "severe"}
        assert ensemble.label == "severe"
        assert voting.label == "severe"
    assert ensemble.scores["severe"] == pytest.approx(0.45, abs=1e-4)  # the scores are the mean
    assert sum(voting.scores.values()) == pytest.approx(1.0)  # vote shares


def test_the_tasks_report_carries_each_specialists_held_out_grading_metrics(hub: Hub) -> None:
    ordinal = hub.catalog.task_spec("knee-oa-grade").task_type.value == "ordinal"

    async def tasks() -> dict[str, Any]:
        app = create_app(hub)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://hub") as http:
            response = await http.get("/v1/tasks")
            assert response.status_code == 200, response.text
            return dict(response.json())

    (task,) = asyncio.run(tasks())["tasks"]
    for specialist in task["specialists"]:
        held_out = specialist["held_out_metrics"]
        assert held_out["accuracy"] == 0.6
        if ordinal:
            assert held_out["quadratic_weighted_kappa"] == 0.71
            assert held_out["mean_absolute_error"] == 0.45
        else:
            assert held_out["quadratic_weighted_kappa"] is None
