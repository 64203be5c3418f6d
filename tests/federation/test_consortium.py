"""``federation``'s consortium folder and membership rules, without a SuperLink (fast)."""

from __future__ import annotations

import stat
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from federation import (
    CertificateError,
    Consortium,
    ConsortiumError,
    MembershipError,
    OwnCertificate,
    add_site,
    init_consortium,
    node_key_digest,
    open_consortium,
)
from protocol import SiteKey
from site_agent import init_site
from site_agent._node_key import node_key
from site_agent.errors import OptionsError


def test_init_makes_a_ca_and_a_certificate_that_check(tmp_path: Path) -> None:
    made = init_consortium(tmp_path / "c", "lung", hosts=("127.0.0.1", "superlink.example"))
    opened = open_consortium(tmp_path / "c")
    assert opened.config == made.config
    opened.check_certificates()
    for private in (opened.key, opened.root / "tls" / "ca.key"):
        assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert opened.address == "127.0.0.1:9092"
    config = (opened.flwr_home / "config.toml").read_text()
    assert 'address = "127.0.0.1:9092"' in config
    assert str(opened.ca_certificate.resolve()) in config
    with pytest.raises(CertificateError, match="not now"):
        opened.check_certificates(datetime.now(UTC) + timedelta(days=900))


def test_init_never_overwrites_a_consortium(tmp_path: Path) -> None:
    made = init_consortium(tmp_path, "lung")
    before = made.key.read_bytes()
    with pytest.raises(ConsortiumError, match="already"):
        init_consortium(tmp_path, "other")
    assert made.key.read_bytes() == before
    with pytest.raises(ConsortiumError, match="not a consortium folder"):
        open_consortium(tmp_path / "nowhere")


def test_an_operators_own_certificate_is_checked_before_anything_is_written(
    tmp_path: Path,
) -> None:
    first = init_consortium(tmp_path / "a", "a", hosts=("127.0.0.1",))
    second = init_consortium(tmp_path / "b", "b", hosts=("127.0.0.1",))
    good = OwnCertificate(first.certificate, first.key, first.ca_certificate)
    copied = init_consortium(tmp_path / "own", "own", hosts=("127.0.0.1",), own=good)
    assert copied.config.own_certificate
    assert not (copied.root / "tls" / "ca.key").exists()  # no CA key held for the operator's
    cases = {
        "is not the key of": OwnCertificate(first.certificate, second.key, first.ca_certificate),
        "was not issued by": OwnCertificate(first.certificate, first.key, second.ca_certificate),
        "does not name superlink.example": good,
    }
    for number, (error, own) in enumerate(cases.items()):
        target = tmp_path / f"bad-{number}"
        hosts = ("superlink.example",) if "name" in error else ("127.0.0.1",)
        with pytest.raises(CertificateError, match=error):
            init_consortium(target, "bad", hosts=hosts, own=own)
        assert not target.exists()


def test_a_site_node_key_is_made_once_and_kept(tmp_path: Path) -> None:
    site = init_site(tmp_path / "home", "st-marys")
    made = node_key(site)
    assert made.created
    assert stat.S_IMODE(made.private.stat().st_mode) == 0o600
    again = node_key(site)
    assert not again.created
    assert again.private.read_bytes() == made.private.read_bytes()
    assert len(node_key_digest(made.public)) == 64
    made.public.unlink()
    with pytest.raises(Exception, match="only one of"):
        node_key(site)
    assert made.private.is_file()  # the remaining half is not replaced


def _site_key(site_id: str, *, revoked: bool = False) -> SiteKey:
    return SiteKey(
        site_id=site_id,
        key_id="0" * 64,
        public_key_pem="-----BEGIN PUBLIC KEY-----",
        enrolled_at=datetime.now(UTC),
        revoked=revoked,
    )


def test_only_an_enrolled_site_with_a_p256_key_can_be_added(tmp_path: Path) -> None:
    consortium = init_consortium(tmp_path / "c", "lung")
    site = init_site(tmp_path / "home", "st-marys")
    key = node_key(site).public
    for sites in ([], [_site_key("st-marys", revoked=True)], [_site_key("other")]):
        with pytest.raises(MembershipError, match="not enrolled"):
            add_site(consortium, "st-marys", key, sites)
    ed = tmp_path / "ed25519.pub"
    ed.write_bytes(
        ed25519.Ed25519PrivateKey.generate()
        .public_key()
        .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    )
    pem = tmp_path / "pem.pub"
    pem.write_bytes(
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    big = tmp_path / "big.pub"
    big.write_bytes(b"x" * 20_000)
    for bad, error in ((ed, "NIST"), (pem, "not an OpenSSH"), (big, "too large")):
        with pytest.raises(MembershipError, match=error):
            add_site(consortium, "st-marys", bad, [_site_key("st-marys")])
    assert not (consortium.root / "members.json").exists()


def test_two_sites_added_at_once_both_stay_members(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two operators' ``add-site`` at the same time: neither binding is lost.

    Flower's Control API call is replaced by a slow stand-in (the real one is
    exercised in test_superlink.py), so that both calls overlap for certain.
    """
    import threading
    import time

    from federation import _members, members

    def slow_register(_consortium: Consortium, _key: Path) -> int:
        time.sleep(0.3)
        return next(ids)

    ids = iter(range(100, 200))
    monkeypatch.setattr(_members, "register_node", slow_register)
    consortium = init_consortium(tmp_path / "c", "lung")
    keys = {s: node_key(init_site(tmp_path / s, s)).public for s in ("st-marys", "st-johns")}
    sites = [_site_key(s) for s in keys]
    errors: list[BaseException] = []

    def add(site_id: str) -> None:
        try:
            add_site(consortium, site_id, keys[site_id], sites)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=add, args=(s,)) for s in keys]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert {m.site_id for m in members(consortium)} == set(keys)


def _joining_site(tmp_path: Path) -> tuple[Path, Consortium, Path]:
    """A site home made by ``gsco site init``, a consortium, and a (placeholder) data file."""
    from tests.federation.conftest import gsco_run

    home = tmp_path / "home"
    assert gsco_run("site", "init", "--site-id", "st-marys", "--home", str(home)).returncode == 0
    data = tmp_path / "data.npz"
    data.write_bytes(b"")
    return home, init_consortium(tmp_path / "c", "lung"), data


def test_join_checks_its_options_before_starting_anything(tmp_path: Path) -> None:
    from tests.federation.conftest import gsco_run

    home, consortium, data = _joining_site(tmp_path)
    good = {
        "--superlink": "127.0.0.1:9092",
        "--ca": str(consortium.ca_certificate),
        "--task": "pneumonia-cxr",
        "--data": str(data),
        "--registry": "127.0.0.1:50051",
    }
    cases = {
        "--superlink": ("superlink.example", "give host:port"),
        "--ca": (str(data), "not a readable PEM certificate"),
        "--data": (str(tmp_path / "missing"), "no such file"),
    }
    for option, (value, error) in cases.items():
        args = [a for k, v in {**good, option: value}.items() for a in (k, v)]
        done = gsco_run("site", "join", "--home", str(home), *args)
        assert done.returncode == 2, done.stderr
        assert error in done.stderr
    assert not (home / "supernode.toml").exists()  # nothing was written or started
    assert not (home / "keys" / "supernode.key").exists()


def test_join_takes_a_task_file_and_the_deployed_site_trains_for_it(tmp_path: Path) -> None:
    from fedapp._client import deployed_job
    from tests.federation.conftest import gsco_run

    home, consortium, data = _joining_site(tmp_path)
    declared = tmp_path / "knee.yaml"
    declared.write_text(
        "task_id: knee-xr\nmodality: knee X-ray\nlabels: [no oa, oa]\ntask_type: binary\n"
    )
    common = [
        "--home", str(home), "--superlink", "127.0.0.1:9092", "--ca",
        str(consortium.ca_certificate), "--data", str(data), "--registry", "127.0.0.1:50051",
    ]  # fmt: skip
    refused = {
        "another task": (["--task", "pneumonia-cxr", "--task-file", str(declared)], "declares"),
        "no task": ([], "--task-file"),
        "a bad file": (["--task-file", str(data)], "--task-file"),
    }
    for case, (args, error) in refused.items():
        done = gsco_run("site", "join", *common, *args)
        assert done.returncode == 2, (case, done.stderr)
        assert error in done.stderr, case
    assert not (home / "supernode.toml").exists()

    from site_agent import open_site
    from site_agent._join import JoinSettings, supernode_command

    site = open_site(home)
    settings = JoinSettings(
        superlink="127.0.0.1:9092", ca=consortium.ca_certificate, task=None, data=data,
        registry="127.0.0.1:50051", work=tmp_path / "work", task_file=declared,
    )  # fmt: skip
    command = supernode_command(site, settings)
    assert "--node-config" in command
    assert "--health-server-address" not in command  # served only when asked for
    with_health = replace(settings, health_address="127.0.0.1:9099")
    served = supernode_command(site, with_health)
    assert served[served.index("--health-server-address") + 1] == "127.0.0.1:9099"
    with pytest.raises(OptionsError, match="--health-address"):
        supernode_command(site, replace(settings, health_address="9099"))
    import tomllib

    node = tomllib.loads((home / "supernode.toml").read_text())
    assert node["task"] == "knee-xr"
    assert node["task-file"] == str(declared.resolve())
    job = deployed_job(node, {"task": "knee-xr"}, run_id=7)
    assert job.task_spec().labels == ("no oa", "oa")
    assert job.task_spec().modality == "knee X-ray"


def test_a_site_that_tunes_the_adapter_joins_with_the_registry_root_and_the_base_model(
    tmp_path: Path,
) -> None:
    """Both options or neither; each checked first; the site's validation split shared out."""
    import json
    import tomllib

    import numpy as np

    from fedapp._tune import deployed_tune_job
    from fedapp.errors import JobError
    from site_agent._join import JoinSettings, supernode_command

    home, consortium, data = _joining_site(tmp_path)
    rng = np.random.default_rng(0)
    splits = {"train": 20, "val": 50, "test": 10}
    arrays = {}
    for split, n in splits.items():
        arrays[f"{split}_images"] = rng.integers(0, 255, (n, 28, 28), dtype=np.uint8)
        arrays[f"{split}_labels"] = rng.integers(0, 2, (n, 1))
    np.savez(data, **arrays)
    root = tmp_path / "1.root.json"
    root.write_text(json.dumps({"signed": {"_type": "root", "version": 1}, "signatures": []}))
    model = tmp_path / "base-model"
    model.mkdir()
    settings = JoinSettings(
        superlink="127.0.0.1:9092", ca=consortium.ca_certificate, task="pneumonia-cxr",
        data=data, registry="127.0.0.1:50051", work=tmp_path / "work",
    )  # fmt: skip
    from site_agent import open_site

    site = open_site(home)
    refused = {
        "one without the other": (replace(settings, trusted_root=root), "both --trusted-root"),
        "not a root": (
            replace(settings, trusted_root=data, generalist_model=model),
            "not a readable TUF root",
        ),
        "no model": (
            replace(settings, trusted_root=root, generalist_model=model),
            "no config.json",
        ),
    }
    for case, (refused_settings, error) in refused.items():
        with pytest.raises(OptionsError, match=error):
            supernode_command(site, refused_settings)
        assert not (home / "supernode.toml").exists(), case
    for name in ("config.json", "tokenizer_config.json"):
        (model / name).write_text("{}")
    supernode_command(site, replace(settings, trusted_root=root, generalist_model=model))
    node = tomllib.loads((home / "supernode.toml").read_text())
    assert node["trusted-root"] == str(root.resolve())
    assert node["generalist-model"] == str(model.resolve())

    run = {"tune-examples-per-site": 12, "tune-policy-cases-per-site": 40, "tune-modes": "gsco"}
    job = deployed_tune_job(node, run, run_id=3)
    assert job.site_id == "st-marys"
    assert job.model_dir == str(model.resolve())
    assert len(job.policy_rows) == 25  # at most half of the 50 validation cases
    assert len(job.rows) == 12
    assert not set(job.rows) & set(job.policy_rows)  # the policy never sees tuning cases
    assert job.task is not None
    assert job.task["labels"] == ["normal", "pneumonia"]
    assert job.folder == tmp_path / "work" / "run-3" / "adapter-scratch-pneumonia-cxr"
    assert deployed_tune_job(node, run, run_id=3) == job  # every message of the run agrees
    plain = {k: v for k, v in node.items() if k not in ("trusted-root", "generalist-model")}
    with pytest.raises(JobError, match="--trusted-root, --generalist-model"):
        deployed_tune_job(plain, run, run_id=3)
    with pytest.raises(JobError, match="MedMNIST-layout .npz"):
        deployed_tune_job({**node, "data": str(tmp_path)}, run, run_id=3)
