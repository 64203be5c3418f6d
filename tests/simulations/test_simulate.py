"""``gsco simulate`` for real: Flower's simulation runtime, a registry, a hub, the vLLM generalist.

Small on purpose (1 epoch, few test images) so it fits in the test suite;
the demo and the benchmark run the full-size versions.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest

from generalist import EmbeddedServer
from hub import verify_access_log
from protocol import GscoError, SpecialistCard
from registry import verify_event_log
from tests.servers import GSCO
from tests.site_agent.conftest import GRADED_TASK, graded_arrays, medmnist_dir, write_npz

pytestmark = pytest.mark.slow

MODES = ["voting", "ensemble", "moed", "rad", "generalist", "gsco"]
#: The report's rows after the oracle: the modes, with the gsco ablation before gsco itself.
METHODS = [*MODES[:5], "gsco (zero-shot)", "gsco (calibrated)", "gsco"]


def _simulate(out: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    env = dict(os.environ, NO_COLOR="1", COLUMNS="200", GSCO_DATA_DIR=str(medmnist_dir()))
    result = subprocess.run(
        [GSCO, "simulate", "--out", str(out), "--epochs", "1", "--minutes-per-site", "1", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=1800,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return result, json.loads((out / "results.json").read_text())


def _audit(out: Path, tmp_path: Path) -> str:
    """``gsco audit registry`` of a report folder's registry, ledgers and access log: it passes."""
    audit = subprocess.run(
        [
            GSCO, "audit", "registry", "--root", str(out / "registry"),
            "--ledger", str(out / "sites"), "--access-log", str(out / "hub"),
            "--out", str(tmp_path / "audit"),
        ],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert audit.returncode == 0, audit.stdout + audit.stderr
    return audit.stdout


def _cards(out: Path) -> list[SpecialistCard]:
    """Every specialist card the simulation's registry stored."""
    cards = []
    for blob in (out / "registry" / "blobs").glob("*/*"):
        try:
            cards.append(SpecialistCard.parse(blob.read_bytes()))
        except GscoError:
            continue
    return cards


@pytest.mark.long
def test_breastmnist_five_sites_with_faults(tmp_path: Path, vllm_url: str) -> None:
    out = tmp_path / "report"
    result, report = _simulate(
        out,
        "--dataset", "breastmnist", "--sites", "5", "--partition", "dirichlet:0.5",
        "--test-images", "16", "--generalist", vllm_url,
        "--fault", "2:flip-labels", "--fault", "3:tamper", "--fault", "4:unsigned",
        "--fault", "5:drop-out",
    )  # fmt: skip
    sites = {s["site_id"]: s for s in report["sites"]}
    assert sites["hospital-01"]["status"] == "published"
    assert sites["hospital-02"]["status"] == "published"  # flipped labels still sign fine
    assert sites["hospital-03"]["status"] == "rejected"
    assert "FILE_CHANGED" in sites["hospital-03"]["detail"]
    assert sites["hospital-04"]["status"] == "rejected"
    assert "UNSIGNED" in sites["hospital-04"]["detail"]
    assert sites["hospital-05"]["status"] == "dropped-out"
    # The tampered and unsigned bundles never reached the hub.
    assert report["hub"]["sites_served"] == ["hospital-01", "hospital-02"]
    assert not sites["hospital-03"]["served_by_hub"]
    # Every method, with confidence intervals.
    names = [m["method"] for m in report["methods"]]
    assert names[0].startswith("best single specialist, oracle")  # chosen on test: labelled
    assert names[1:] == METHODS
    for method in report["methods"]:
        accuracy = method["accuracy"]
        assert accuracy["low"] <= accuracy["value"] <= accuracy["high"]
        assert method["macro_f1"]["low"] <= method["macro_f1"]["value"]
    assert report["degraded_answers"]["gsco"] == 0  # the real generalist answered
    assert report["test_images"] == 16
    # The flipped-label site's effect is quantified.
    effect = report["fault_effects"]["hospital-02"]
    assert set(effect["accuracy_without_site"]) == {"ensemble", "voting"}
    assert 0.0 <= effect["site_alone_accuracy"] <= 1.0
    text = (out / "report.md").read_text()
    assert "The registry refused it, and the hub never served it." in text
    assert "without it" in text
    for plot in ("methods.png", "sites.png", "confusion.png"):
        assert (out / plot).stat().st_size > 1000
    assert "gsco" in result.stdout
    assert "report:" in result.stdout
    for number in range(1, 6):  # every site's epochs, relayed from its Flower ClientApp
        assert f"hospital-0{number} epoch 1/1: train loss" in result.stderr, result.stderr[-3000:]
    # The evidence stays: the registry's event log records the rejections, the
    # hub's access log every request, and each site's egress ledger what it sent.
    events, _ = verify_event_log((out / "registry" / "events.jsonl").read_bytes().splitlines())
    assert sum(e.kind == "reject" for e in events) == 2
    # Every evaluation request, and those that fitted the policy on validation images.
    policy = report["arbitration_policy"]
    assert policy["fitted_on"] == "validation"
    assert set(policy["modes"]) == {"gsco", "moed", "rad"}
    fitting = policy["n_examples"] * 4  # ensemble, gsco, moed, rad
    assert len(verify_access_log(out / "hub" / "access.jsonl")) == 16 * len(MODES) + fitting
    assert set(report["overturned_ensemble"]) == {"moed", "rad", "generalist", "gsco"}
    assert "The arbitration policy was fitted on" in text
    assert (out / "sites" / "hospital-01" / "egress.jsonl").read_text().count("\n") == 1
    assert not (out / "sites" / "hospital-03" / "egress.jsonl").exists()
    # And the compliance audit of all of it passes (its tamper cases: tests/audit).
    assert "2 bundles, 2 egress ledgers, 1 access logs audited" in _audit(out, tmp_path)


def test_dp_fedavg_and_the_generalist_going_down(tmp_path: Path, vllm_url: str) -> None:
    """Sites also co-train a shared specialist with DP-FedAvg; the generalist is unreachable
    during the evaluation. The shared embedded server, which this session's other tests use,
    is never stopped for it (the same process before and after)."""
    before = EmbeddedServer().state()
    assert before is not None
    out = tmp_path / "report"
    _, report = _simulate(
        out,
        "--dataset", "breastmnist", "--sites", "2", "--test-images", "8",
        "--fedavg-rounds", "2", "--dp-noise", "0.8", "--dp-clip", "1.0",
        "--generalist", "embedded", "--generalist-down",
    )  # fmt: skip
    after = EmbeddedServer().state()
    assert after is not None
    assert after.pid == before.pid  # never stopped, never restarted
    assert httpx.get(vllm_url + "/models", timeout=30).status_code == 200
    assert report["degraded_answers"] == {
        "voting": 0, "ensemble": 0, "moed": 8, "rad": 8, "generalist": 8, "gsco": 8,
    }  # fmt: skip
    names = {s["name"]: s for s in report["sites"]}
    assert set(names) == {
        "hospital-01", "hospital-02", "hospital-01 (fedavg)", "hospital-02 (fedavg)",
    }  # fmt: skip
    assert all(s["status"] == "published" and s["served_by_hub"] for s in names.values())
    assert any(m["method"].startswith("fedavg shared specialist") for m in report["methods"])
    assert report["federation_privacy"].startswith("epsilon ")
    # The shared specialist's card, as the registry stores it, records the budget.
    cards = _cards(out)
    shared = [c for c in cards if c.federation is not None]
    assert {c.site_id for c in shared} == {"hospital-01", "hospital-02"}
    privacy = shared[0].federation.differential_privacy  # type: ignore[union-attr]
    assert privacy is not None
    assert privacy.noise_multiplier == 0.8
    assert privacy.epsilon > 0


@pytest.mark.long
def test_a_declared_ordinal_rgb_task_end_to_end(tmp_path: Path) -> None:
    """``--task-file`` and ``--data``: a task the catalog does not know, 64 px RGB, graded.

    The sites train and publish it, the hub serves it (median grades), and the report scores
    every method with quadratic weighted kappa and the mean absolute error.
    """
    data = write_npz(
        tmp_path / "knee.npz", **graded_arrays(grades=4, per_grade=40, size=64, channels=3)
    )
    (tmp_path / "knee.yaml").write_text(GRADED_TASK)
    out = tmp_path / "report"
    result, report = _simulate(
        out,
        "--task-file", str(tmp_path / "knee.yaml"), "--data", str(data), "--sites", "2",
        "--backbone", "resnet18", "--test-images", "12", "--generalist", "none",
        "--policy-images", "0",
    )  # fmt: skip
    assert report["task_id"] == "knee-oa-grade"
    assert report["task_type"] == "ordinal"
    assert report["scenario"]["dataset"] == "knee.npz"
    assert all(s["status"] == "published" for s in report["sites"])
    for method in report["methods"]:
        kappa, error = method["quadratic_weighted_kappa"], method["mean_absolute_error"]
        assert -1.0 <= kappa["value"] <= 1.0, method
        assert error["low"] <= error["value"] <= error["high"], method
    text = (out / "report.md").read_text()
    assert "| QWK | MAE (grades) |" in text
    assert "QWK" in result.stdout
    for number in (1, 2):
        assert f"hospital-0{number} epoch 1/1: train loss" in result.stderr
    cards = _cards(out)
    assert len(cards) == 2
    for card in cards:
        assert card.task_type.value == "ordinal"
        assert card.preprocessing.channels == 3
        assert card.metrics.quadratic_weighted_kappa is not None


def test_bad_scenarios_are_one_line_errors(tmp_path: Path) -> None:
    for args, message in [
        (["--partition", "zipf"], "unknown partition"),
        (["--fault", "9:tamper"], "names site 9"),
        (["--fault", "1:meteor"], "unknown fault"),
        (["--dataset", "nosuchmnist"], "no task for dataset"),
    ]:
        result = subprocess.run(
            [GSCO, "simulate", "--sites", "2", "--out", str(tmp_path / "x"), *args],
            capture_output=True,
            text=True,
            check=False,
        )
        assert result.returncode == 1, (args, result.stderr)
        assert message in result.stderr
        assert "Traceback" not in result.stderr


@pytest.mark.long
def test_the_tuned_adapter_is_federated_signed_published_served_and_reported(
    tmp_path: Path, vllm_url: str
) -> None:
    """--tune-generalist: FedAvg of a LoRA adapter over the sites, through the registry to vLLM."""
    out = tmp_path / "report"
    result, report = _simulate(
        out,
        "--dataset", "breastmnist", "--sites", "2", "--test-images", "8",
        "--generalist", "embedded", "--tune-generalist", "--tune-rounds", "1",
        "--tune-examples", "12", "--policy-images", "24",
        "--tune-dp-noise", "0.3", "--tune-dp-clip", "1.0",
    )  # fmt: skip
    adapter = report["adapter"]
    assert adapter["digest"], adapter
    card = adapter["card"]
    assert card["kind"] == "generalist-lora"
    assert card["training"]["sites"] == ["hospital-01", "hospital-02"]
    assert card["training"]["examples"] == 24  # 12 per site
    assert card["training"]["rounds"] == 1
    assert "disjoint" in card["training"]["evidence_split"]
    assert card["training"]["option_order"] == "shuffled"  # it reads labels, not positions
    privacy = card["training"]["differential_privacy"]  # Flower's DP wrapper, budget recorded
    assert privacy["noise_multiplier"] == 0.3
    assert privacy["epsilon"] > 0
    assert set(adapter["per_site"]) == {"hospital-01", "hospital-02"}
    assert all(s["peak_rss_mb"] > 100 for s in adapter["per_site"].values())
    names = [m["method"] for m in report["methods"]]
    assert names[-4:] == ["gsco (zero-shot)", "gsco (calibrated)", "gsco (adapter)", "gsco"]
    # The adapter learnt (and answers) gsco; its weight was fitted for it, on validation
    # cases it was not tuned on; moed and rad keep the base model and its weights.
    assert card["training"]["prompt_modes"] == ["gsco"]
    modes = report["arbitration_policy"]["modes"]
    assert modes["gsco"]["model"] == adapter["name"]
    assert modes["moed"]["model"] is None
    assert report["arbitration_policy"]["model"] == "smollm2-135m-instruct"
    assert "evidence-tuned adapter" in (out / "report.md").read_text()
    # Its policy was fitted at the two sites, as deployed hospitals fit it (12 validation
    # cases each, not the tuning ones; only sums and counts left them), and is in the
    # card of the one version published, signed with the weights.
    assert adapter["policy_sites"] == 2
    assert adapter["policy"]["n_examples"] == 24
    assert card["version"] == 1
    assert set(card["policy"]["modes"]) == {"gsco"}
    signed = card["policy"]["modes"]["gsco"]
    assert signed["generalist_weight"] == modes["gsco"]["generalist_weight"]
    assert signed["label_bias"] == modes["gsco"]["label_bias"]
    assert "fitted at the 2 sites" in (out / "report.md").read_text()
    # Published like a specialist: in the registry's log, TUF, the signer's egress ledger.
    events, _ = verify_event_log((out / "registry" / "events.jsonl").read_bytes().splitlines())
    published = [e for e in events if e.kind == "publish" and e.backbone == "generalist-lora"]
    assert [e.bundle_digest for e in published] == [adapter["published"]]
    assert adapter["digest"] == adapter["published"]
    signer = card["site_id"]
    assert (out / "sites" / signer / "egress.jsonl").read_text().count("\n") == 2
    # Every answer of the adapter's modes names it.
    records = verify_access_log(out / "hub" / "access.jsonl")
    assert records
    assert "3 bundles" in _audit(out, tmp_path)
    assert "gsco (adapter)" in result.stdout


@pytest.mark.long
def test_one_hospital_attacking_the_adapter_stage_is_named_and_refused(
    tmp_path: Path, vllm_url: str
) -> None:
    """hospital-03 attacks the adapter every way it can; the consortium's adapter is served."""
    out = tmp_path / "report"
    _, report = _simulate(
        out,
        "--dataset", "breastmnist", "--sites", "3", "--test-images", "8",
        "--generalist", "embedded", "--tune-generalist", "--tune-rounds", "2",
        "--tune-examples", "10", "--policy-images", "36",
        "--fault", "hospital-03:rogue-adapter", "--fault", "hospital-03:poison-adapter",
        "--fault", "hospital-03:inflate-examples", "--fault", "3:lie-policy",
    )  # fmt: skip
    adapter = report["adapter"]
    assert adapter["digest"] == adapter["published"], adapter  # served: the consortium's
    assert adapter["co_signed_by"] == ["hospital-01", "hospital-02"]
    assert "hospital-03" in adapter["declined_to_co_sign"]
    refused = " | ".join(adapter["refused"]["hospital-03"])
    assert "claimed 1,000,000,000 examples" in refused  # inflate-examples, declared
    assert "counted as the 10 it declared" in refused  # inflate-examples, each round
    assert "round 1: update clipped" in refused  # poison-adapter: scaled by 10^6
    assert "round 2: refused: the update holds NaN or infinity" in refused  # then NaN
    assert "policy answers excluded" in refused  # lie-policy
    assert "NO_CONSORTIUM_BACKING" in refused  # rogue-adapter, both ways
    assert "ACCEPTED" not in refused
    assert list(adapter["refused"]) == ["hospital-03"]  # nobody else was refused anything
    card = adapter["card"]
    assert card["training"]["strategy"] == "trimmed-mean"
    assert card["version"] == 1  # not 4294967295
    policy = card["policy"]
    assert "hospital-03" in policy["sites_excluded"]
    assert all(m["generalist_weight"] <= 4 for m in policy["modes"].values())
    text = (out / "report.md").read_text()
    assert "**hospital-03** (rogue-adapter, poison-adapter, inflate-examples, lie-policy)" in text
    assert "The hub serves the consortium's adapter" in text
    _audit(out, tmp_path)  # it passes: every adapter the registry holds is co-signed


def test_the_demo_shows_each_hospitals_training_progress(tmp_path: Path) -> None:
    """``gsco demo`` itself, at its smallest: an epoch line for each of its three hospitals."""
    env = dict(os.environ, NO_COLOR="1", COLUMNS="200", GSCO_DATA_DIR=str(medmnist_dir()))
    result = subprocess.run(
        [
            GSCO, "demo", "--out", str(tmp_path / "demo"), "--epochs", "1",
            "--minutes-per-site", "0.5", "--test-images", "16", "--no-tune-generalist",
            "--generalist", "none",
        ],
        capture_output=True, text=True, env=env, timeout=1200, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-4000:]
    assert "GSCo demo: 3 simulated hospitals" in result.stderr
    for number in range(1, 4):  # relayed from each hospital's Flower ClientApp as it trains
        assert f"hospital-0{number} epoch 1/1: train loss" in result.stderr, result.stderr[-3000:]
    assert (tmp_path / "demo" / "report.md").is_file()


@pytest.mark.long
def test_the_tiny_meddr_sees_every_image_and_the_policy_keeps_gsco_from_harm(
    tmp_path: Path,
) -> None:
    """--generalist tiny-meddr: MedDr's architecture (random weights) with MedDr's recipe."""
    out = tmp_path / "report"
    _, report = _simulate(
        out,
        "--dataset", "breastmnist", "--sites", "3", "--test-images", "24",
        "--generalist", "tiny-meddr", "--no-tune-generalist",
    )  # fmt: skip
    seen = report["generalist_saw_image"]
    assert seen["answers"] > 0
    assert seen["with_image"] == seen["answers"]
    assert f"it saw the image in all {seen['answers']}" in (out / "report.md").read_text()
    policy = report["arbitration_policy"]
    assert policy["model"] == "meddr"
    for fitted in policy["modes"].values():
        # Noise from the generalist: the fit keeps the policy at or above both bases on the
        # cases it was fitted on (the test split can differ from them by a case or two).
        accuracy = fitted["validation_accuracy"]
        assert accuracy["policy"] >= max(accuracy["ensemble"], accuracy["voting"])
