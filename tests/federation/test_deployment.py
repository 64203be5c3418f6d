"""A consortium federation deployed as hospitals would run it, every piece its own process.

A SuperLink with TLS and SuperNode authentication (``gsco federation serve``),
three hospitals' SuperNodes (``gsco site join``, each with its own site home,
data share and SuperNode key), a run (``gsco federation run``): every site
trains, signs and publishes its specialist; the sites co-train a shared one
and tune the generalist's adapter, fit its arbitration policy among
themselves (their cases never meet) and one publishes it; a hub verifies the
three sites; the egress ledgers match the registry (``gsco audit registry
--ledger``). One SuperNode is killed mid-run and the run still completes with
the others; a SuperNode whose key the consortium never added is refused.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from protocol import flower_environment, free_loopback_port
from site_agent import open_site
from tests.adapters import model_dir
from tests.federation.conftest import GSCO, Processes, gsco_run, wait_for_port, wait_for_status
from tests.servers import start_hub, start_registry
from tests.site_agent.conftest import medmnist_dir

pytestmark = [pytest.mark.slow, pytest.mark.long]

SITES = ("st-marys", "royal-free", "guys")


def _share(source: Path, out: Path, number: int) -> Path:
    """A site's own slice of PneumoniaMNIST: 120 training, 40 validation, 40 test images."""
    with np.load(source, allow_pickle=False) as archive:
        arrays = {key: archive[key] for key in archive.files}
    rows = {"train": 120, "val": 40, "test": 40}
    share = {}
    for split, n in rows.items():
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        part = slice(number * n, (number + 1) * n)
        share[f"{split}_images"], share[f"{split}_labels"] = images[part], labels[part]
    np.savez(out, **share)
    return out


def test_three_hospitals_train_publish_and_are_audited(
    tmp_path: Path, processes: Processes, vllm_url: str
) -> None:
    source = medmnist_dir() / "pneumoniamnist.npz"
    if not source.is_file():
        pytest.skip("PneumoniaMNIST is not here (set GSCO_DATA_DIR)")
    root = tmp_path / "consortium"
    port = free_loopback_port()
    assert gsco_run("federation", "init", "--name", "lung", "--root", str(root),
                 "--port", str(port)).returncode == 0  # fmt: skip
    registry = start_registry(tmp_path / "registry")
    hub = None
    try:
        reg = ["--registry", registry.address]
        link_log = tmp_path / "superlink.log"
        env = flower_environment()
        link = processes.start(
            [GSCO, "federation", "serve", "--root", str(root), "--bind", "127.0.0.1"],
            link_log,
            env,
        )
        wait_for_port(port, link, link_log)
        ca = root / "tls" / "ca.pem"
        # What the consortium hands each site for adapter tuning, out of band: the
        # registry's TUF root and the generalist's base model (transformers folder).
        tuning = [
            "--trusted-root", str(registry.root / "tuf" / "metadata" / "1.root.json"),
            "--generalist-model", str(model_dir()),
        ]  # fmt: skip
        nodes = {}
        for number, site_id in enumerate(SITES):
            home = tmp_path / site_id
            assert (
                gsco_run("site", "init", "--site-id", site_id, "--home", str(home)).returncode == 0
            )
            assert gsco_run("site", "node-key", "--home", str(home)).returncode == 0
            with registry.client() as client:
                client.enroll(site_id, open_site(home).public_key().pem)
            node_key = str(home / "keys" / "supernode.pub")
            added = gsco_run("federation", "add-site", site_id, node_key, "--root", str(root), *reg)
            assert added.returncode == 0, added.stderr
            data = _share(source, tmp_path / f"{site_id}.npz", number)
            site_options = [
                "--home", str(home), "--superlink", f"127.0.0.1:{port}", "--ca", str(ca),
                "--task", "pneumonia-cxr", "--data", str(data), *reg, *tuning,
            ]  # fmt: skip
            # The README's order: the site checks its set-up, then joins.
            doctor = gsco_run("site", "doctor", *site_options)
            assert doctor.returncode == 0, doctor.stdout + doctor.stderr
            assert "TLS verified" in doctor.stdout
            assert f"{site_id} enrolled, not revoked" in doctor.stdout
            assert "ok      adapter tuning: TUF root and base model" in doctor.stdout
            join = [GSCO, "site", "join", *site_options, "--port", str(free_loopback_port())]
            nodes[site_id] = processes.start(join, tmp_path / f"{site_id}.log", env)
        members = json.loads((root / "members.json").read_text())["members"]
        for member in members:
            wait_for_status(root, member["node_id"], "online")
        # A hospital the consortium never added: its SuperNode key is refused.
        intruder = tmp_path / "intruder"
        assert (
            gsco_run("site", "init", "--site-id", "intruder", "--home", str(intruder)).returncode
            == 0
        )
        assert gsco_run("site", "node-key", "--home", str(intruder)).returncode == 0
        refused = processes.start(
            [GSCO, "site", "join", "--home", str(intruder), "--superlink", f"127.0.0.1:{port}",
             "--ca", str(ca), "--task", "pneumonia-cxr", "--data", str(tmp_path / "guys.npz"),
             *reg, "--port", str(free_loopback_port())],
            tmp_path / "intruder.log",
            env,
        )  # fmt: skip
        assert refused.wait(timeout=120) != 0
        assert "Failed to activate SuperNode" in (tmp_path / "intruder.log").read_text()

        run = ["federation", "run", "--root", str(root), "--task", "pneumonia-cxr",
               "--backbone", "resnet18", "--epochs", "1", "--input-size", "28",
               "--timeout-s", "900"]  # fmt: skip
        # With one FedAvg round: then the three co-train a shared specialist, which the
        # SuperLink starts from weights a site made (it has no data), and each publishes it.
        # With one tuning round: then they tune the generalist's adapter on 12 validation
        # cases each, fit its policy on 20 others each, and one publishes it.
        tune = ["--tune-rounds", "1", "--tune-examples-per-site", "12", "--tune-policy-cases", "20"]
        done = gsco_run(*run, "--min-sites", "3", "--fedavg-rounds", "1", *tune, timeout=1800)
        assert done.returncode == 0, done.stdout + done.stderr
        sites_lines = [line for line in done.stdout.splitlines() if "adapter:" not in line]
        assert sum(" published " in line for line in sites_lines) == 6, done.stdout
        assert done.stdout.count(" (fedavg) ") == 3, done.stdout
        results = Path(done.stdout.split("results in ", 1)[1].split()[0])
        answer = json.loads(results.read_text())
        assert answer["_run"]["published"] == 3  # sites' own
        adapter = answer["_adapter"]
        assert adapter["examples_per_site"] == dict.fromkeys(SITES, 12), adapter
        assert adapter["policy"]["n_examples"] == 60  # 20 at each site, fitted on their sums
        assert adapter["policy_sites"] == 3
        assert "policy fitted at 3 sites on 60 cases: gsco weight" in done.stdout
        assert f"adapter: version 1 published by {adapter['signed_by']}" in done.stdout
        assert adapter["co_signed_by"] == sorted(SITES)  # every trainer checked and co-signed
        assert f"co-signed by {', '.join(sorted(SITES))}" in done.stdout
        assert adapter["aggregation"] == "trimmed-mean"  # the robust default from three sites
        assert not adapter.get("refused")  # nothing of an honest site was refused
        assert "/" not in adapter["bundle"]  # where a site keeps its files stays there
        # Only the ServerApp's lines reach the consortium: no site's scores or labels.
        assert "policy-evidence" not in done.stderr
        # A site's training log stays at the site (its SuperNode's log): only the
        # ServerApp's lines, outcomes and counts reach the consortium.
        assert "gsco: st-marys epoch 1/1" in (tmp_path / "st-marys.log").read_text()
        assert "epoch" not in done.stderr

        with registry.client() as client:
            everything = client.bundles(task_id="pneumonia-cxr")
        adapters = [ref for ref in everything if ref.kind == "adapter"]
        assert [(a.site_id, a.version) for a in adapters] == [(adapter["signed_by"], 1)]
        assert adapters[0].bundle_digest == adapter["published"]
        listed = [ref for ref in everything if ref.kind == "specialist"]
        assert {ref.site_id for ref in listed} == set(SITES)
        shared = [ref for ref in listed if ref.version == 2]  # each site's second bundle
        assert {ref.site_id for ref in shared} == set(SITES), listed
        hub = start_hub(
            registry, tmp_path / "hub", "--allow-anonymous", "--generalist-url", vllm_url
        )
        task = httpx.get(hub.url + "/v1/tasks", timeout=30).json()["tasks"][0]
        assert task["sites"] == sorted(SITES)  # each verified: signature, TUF, ONNX
        # The co-signed adapter is the consortium's: the hub serves it, loaded into vLLM.
        assert task["adapter"]["bundle_digest"] == adapter["published"], task
        assert task["adapter"]["endorsed_by"] == sorted(SITES)
        assert task["adapter"]["source"] == "registry"
        ledgers = [a for s in SITES for a in ("--ledger", str(tmp_path / s / "egress.jsonl"))]
        audit = gsco_run("audit", "registry", "--root", str(registry.root), *ledgers,
                         "--out", str(tmp_path / "audit"))  # fmt: skip
        assert audit.returncode == 0, audit.stdout + audit.stderr
        assert "3 egress ledgers" in audit.stdout

        # A SuperNode killed mid-run does not fail the run while enough sites remain.
        second = processes.start([GSCO, *run, "--min-sites", "2"], tmp_path / "second-run.log", env)
        log = tmp_path / "second-run.log"
        deadline = time.monotonic() + 300
        while "gsco: 3 hospital sites connected" not in log.read_text():
            assert second.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.5)
        processes.stop(nodes["guys"])
        assert second.wait(timeout=1200) == 0, log.read_text()[-3000:]
        text = log.read_text()
        results = Path(text.split("results in ", 1)[1].split()[0])
        statuses = sorted(
            o["status"] for k, o in json.loads(results.read_text()).items() if k != "_run"
        )
        assert statuses == ["dropped-out", "published", "published"], text[-3000:]
        assert json.loads(results.read_text())["_run"]["published"] == 2
        status = gsco_run("federation", "status", "--root", str(root), *reg)
        assert status.returncode == 0, status.stderr
        assert "runs: 2 (latest first)" in status.stdout
        assert "pneumonia-cxr: 1 dropped-out, 2 published" in status.stdout
        assert "pneumonia-cxr: 6 published" in status.stdout
        for process in nodes.values():
            processes.stop(process)
        processes.stop(link)
    finally:
        if hub is not None:
            hub.stop()
        registry.stop()
    assert processes.leftovers() == {}
