"""End to end: two hospitals, a registry, a hub and the real vLLM CPU generalist.

Two sites train small specialists on disjoint halves of the PneumoniaMNIST
training split with ``gsco site train``, publish them with ``gsco site
publish`` to a real registry on loopback, and a real ``gsco hub serve``
diagnoses test images in every mode with the real vLLM OpenAI server
(SmolLM2-135M on the CPU: a text-only stand-in for MedDr, so it never sees the
image). Stopping the generalist degrades answers to the ensemble; restarting
it restores ``gsco`` answers.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from generalist import MODEL_NAME, EmbeddedServer
from hub import verify_access_log
from hub.web import HubClient
from protocol import Mode, encode_png
from tests.servers import GSCO, RunningRegistry, start_hub, start_registry
from tests.site_agent.conftest import medmnist_dir

pytestmark = pytest.mark.slow

SITES = {
    # site: (backbone, extra training options); both small enough for a test
    "st-marys": ("tf_efficientnet_lite0", ["--input-size", "32"]),
    "northgate": ("resnet18", ["--weights", "scratch", "--input-size", "32"]),
}
N_IMAGES = 6


def _run(*args: str, home: Path | None = None) -> str:
    env = dict(os.environ, NO_COLOR="1")
    if home is not None:
        env["GSCO_SITE_HOME"] = str(home)
    result = subprocess.run(
        [GSCO, *args], capture_output=True, text=True, env=env, timeout=900, check=False
    )
    assert result.returncode == 0, f"gsco {' '.join(args)}:\n{result.stderr[-3000:]}"
    return result.stdout


def _site_data(source: Path, target: Path, half: int) -> Path:
    """This site's half of the training split (val and test are shared benchmarks)."""
    with np.load(source, allow_pickle=False) as archive:
        arrays = {key: archive[key] for key in archive.files}
    for key in ("train_images", "train_labels"):
        arrays[key] = arrays[key][half::2]
    np.savez(target, **arrays)
    return target


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, vllm_url: str) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("e2e")
    source = medmnist_dir() / "pneumoniamnist.npz"
    registry: RunningRegistry = start_registry(root / "registry")
    hub = None
    try:
        for half, (site, (backbone, options)) in enumerate(SITES.items()):
            home = root / site
            _run("site", "init", "--site-id", site, home=home)
            with registry.client() as client:
                client.enroll(site, (home / "keys" / "site.pub").read_bytes())
            bundle = root / f"{site}-bundle"
            _run(
                "site",
                "train",
                "--task",
                "pneumonia-cxr",
                "--data",
                str(_site_data(source, root / f"{site}.npz", half)),
                "--backbone",
                backbone,
                *options,
                "--epochs",
                "2",
                "--max-train-images",
                "400",
                "--max-eval-images",
                "120",
                "--out",
                str(bundle),
                "--sign",
                home=home,
            )
            _run("site", "publish", str(bundle), "--registry", registry.address, home=home)
        hub = start_hub(
            registry,
            root / "hub",
            "--allow-anonymous",
            "--generalist-url",
            vllm_url,
            "--generalist-timeout",
            "120",
        )
        with np.load(source, allow_pickle=False) as archive:
            images, labels = archive["test_images"][:N_IMAGES], archive["test_labels"][:N_IMAGES]
        pngs = [encode_png(image[..., None]) for image in images]
        yield {"hub": hub, "pngs": pngs, "labels": labels.ravel(), "registry": registry}
    finally:
        if hub is not None:
            hub.stop()
        registry.stop()


def _client(world: dict[str, Any]) -> HubClient:
    return HubClient(world["hub"].url, timeout_s=300)


def test_both_sites_specialists_are_in_service(world: dict[str, Any]) -> None:
    with _client(world) as client:
        tasks = client.tasks()["tasks"]
    (task,) = tasks
    assert task["sites"] == sorted(SITES)
    assert task["arbitration_policy"] is None  # none given to this hub
    assert {s["backbone"] for s in task["specialists"]} == {b for b, _ in SITES.values()}


@pytest.mark.parametrize("mode", list(Mode))
def test_every_mode_answers_with_evidence_and_provenance(world: dict[str, Any], mode: Mode) -> None:
    with _client(world) as client:
        responses = [client.diagnose(image, "pneumonia-cxr", mode=mode) for image in world["pngs"]]
    for response in responses:
        assert response.label in ("normal", "pneumonia")
        assert response.mode_used is mode
        assert not response.degraded, response.warnings
        assert {s.site_id for s in response.specialists} == set(SITES)
        assert all(len(s.bundle_digest) == 64 and s.version == 1 for s in response.specialists)
        assert {p.specialist.site_id for p in response.moed} == set(SITES)
        assert response.registry_snapshot_version is not None
        assert response.timings.total_ms > 0
        if mode in (Mode.GSCO, Mode.RAD):
            assert 0 < len(response.rad) <= 5
            assert {c.site_id for c in response.rad} <= set(SITES)
            assert response.timings.retrieval_ms is not None
        if mode in (Mode.GSCO, Mode.MOED, Mode.RAD, Mode.GENERALIST):
            generalist = response.generalist
            assert generalist is not None
            assert generalist.model == MODEL_NAME
            assert generalist.saw_image is False  # a text-only model: the note says so
            assert "not available to you" in generalist.prompt
            assert response.timings.generalist_ms is not None
            if mode in (Mode.GSCO, Mode.MOED):
                assert "reference answers by other models" in generalist.prompt
            if mode in (Mode.GSCO, Mode.RAD):
                assert "most similar cases" in generalist.prompt
            # Raw and calibrated label scores, and which calibration was applied.
            assert generalist.raw_scores is not None
            assert set(generalist.raw_scores) == {"normal", "pneumonia"}
            assert generalist.calibration == "contextual"
            assert generalist.calibrated_scores is not None
            assert generalist.option_orders == 2  # the options as given and reversed
            assert response.scores == generalist.calibrated_scores  # no policy in service here
            best = max(generalist.calibrated_scores, key=generalist.calibrated_scores.__getitem__)
            if len(set(generalist.calibrated_scores.values())) > 1:
                assert response.label == best
        else:
            assert response.generalist is None


def test_a_stopped_generalist_degrades_and_a_restarted_one_recovers(
    world: dict[str, Any], vllm_url: str
) -> None:
    server = EmbeddedServer()
    state = server.state()
    assert state is not None
    server.stop()
    try:
        with _client(world) as client:
            degraded = client.diagnose(world["pngs"][0], "pneumonia-cxr", mode=Mode.GSCO)
        assert degraded.degraded
        assert degraded.mode_used is Mode.ENSEMBLE
        assert degraded.generalist is None
        assert "generalist" in degraded.warnings[0]
    finally:
        restarted = server.start(port=state.port, timeout_s=900)
    assert restarted.url == vllm_url
    with _client(world) as client:
        recovered = client.diagnose(world["pngs"][0], "pneumonia-cxr", mode=Mode.GSCO)
    assert not recovered.degraded
    assert recovered.mode_used is Mode.GSCO
    records = verify_access_log(world["hub"].state_dir / "access.jsonl")
    assert any(r.degraded for r in records)
    assert records[-1].mode_used is Mode.GSCO


def test_a_fitted_policy_weighs_the_generalist_against_the_ensemble(
    world: dict[str, Any], vllm_url: str, tmp_path: Path
) -> None:
    """A policy file in service: weight 0 is the ensemble exactly; the weights are in provenance."""
    import json

    from protocol import ArbitrationPolicy, ModePolicy

    def mode_policy(weight: float, bias: tuple[float, float] | None = None) -> ModePolicy:
        return ModePolicy(
            generalist_weight=weight,
            validation_accuracy={"policy": 0.9},
            weights_tried={},
            label_bias=bias,
        )

    policy = ArbitrationPolicy(
        task_id="pneumonia-cxr",
        labels=("normal", "pneumonia"),
        model=MODEL_NAME,
        n_examples=100,
        modes={Mode.GSCO: mode_policy(0.0), Mode.MOED: mode_policy(4.0, (1.5, -1.5))},
        recommended_mode=Mode.MOED,
    )
    path = tmp_path / "policies.json"
    path.write_text(json.dumps([policy.model_dump(mode="json")]))
    hub = start_hub(
        world["registry"],
        tmp_path / "hub",
        "--allow-anonymous",
        "--generalist-url", vllm_url,
        "--generalist-timeout", "120",
        "--policies", str(path),
    )  # fmt: skip
    try:
        with HubClient(hub.url, timeout_s=300) as client:
            (task,) = client.tasks()["tasks"]
            assert ArbitrationPolicy.parse(task["arbitration_policy"]) == policy
            moeds = []
            for image in world["pngs"][:4]:
                ensemble = client.diagnose(image, "pneumonia-cxr", mode=Mode.ENSEMBLE)
                gsco = client.diagnose(image, "pneumonia-cxr", mode=Mode.GSCO)
                assert gsco.generalist is not None
                assert gsco.generalist.policy_weight == 0.0
                assert gsco.label == ensemble.label  # weight 0: the ensemble's answer
                assert gsco.generalist.overturned_ensemble is False
                moed = client.diagnose(image, "pneumonia-cxr", mode=Mode.MOED)
                assert moed.generalist is not None
                assert moed.generalist.policy_weight == 4.0
                assert moed.generalist.overturned_ensemble == (moed.label != ensemble.label)
                assert gsco.generalist.calibration == "contextual"  # no bias fitted for gsco
                assert moed.generalist.calibration == "contextual+bias"
                moeds.append(moed)
            (task,) = client.tasks()["tasks"]
            assert {c["mode"] for c in task["calibrations"]} >= {"gsco", "moed"}
            # The bias is applied on top of the contextual calibration, in label order.
            (measured,) = [c for c in task["calibrations"] if c["mode"] == "moed"]
            for moed in moeds:
                assert moed.generalist is not None
                assert moed.generalist.raw_scores is not None
                raw, cf = moed.generalist.raw_scores, measured["content_free"]
                logs = np.log(
                    [max(raw[k], 1e-6) / max(cf[k], 1e-6) for k in ("normal", "pneumonia")]
                ) + np.array([1.5, -1.5])
                expected = np.exp(logs - logs.max()) / np.exp(logs - logs.max()).sum()
                assert moed.generalist.calibrated_scores is not None
                got = [moed.generalist.calibrated_scores[k] for k in ("normal", "pneumonia")]
                assert got == pytest.approx(expected.tolist(), abs=1e-6)
    finally:
        hub.stop()
