"""``gsco audit registry``: a real registry on loopback, then tampering with its evidence."""

from __future__ import annotations

import json
import shutil
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from onnx import helper, load_model_from_string

from audit import LocalRegistry, Severity, run_audit, scan_card, scan_onnx_metadata
from tests.bundles import EMBEDDING_DIM, read_files, tiny_onnx, write_bundle_files
from tests.conftest import SiteKeys
from tests.servers import RunningRegistry, start_registry
from tests.test_cli import gsco

FIXTURE_CARD = Path(__file__).parents[1] / "fixtures" / "signed-bundle-v1" / "bundle" / "card.json"


@pytest.fixture(scope="module")
def populated(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[RunningRegistry, Path, SiteKeys, SiteKeys]]:
    """site-a publishes v1 and v2 (v1 then revoked); site-b publishes a raw-index bundle."""
    work = tmp_path_factory.mktemp("audit")
    (work / "keys").mkdir()
    site_a, site_b = SiteKeys(work / "keys", "site-a"), SiteKeys(work / "keys", "site-b")
    server = start_registry(work / "registry")
    with server.client() as client:
        client.enroll("site-a", site_a.public.pem)
        client.enroll("site-b", site_b.public.pem)
        first = client.publish_files(
            read_files(write_bundle_files(work / "a1", site_a)), site_a.private
        )
        client.publish_files(
            read_files(write_bundle_files(work / "a2", site_a, version=2)), site_a.private
        )
        raw = _raw_bundle(work / "b1", site_b)
        client.publish_files(read_files(raw), site_b.private)
        client.revoke_bundle(first.bundle_digest, "superseded")
    yield server, work, site_a, site_b
    server.stop()


def _raw_bundle(directory: Path, site: SiteKeys) -> Path:
    write_bundle_files(directory, site, sign=False)
    rng = np.random.default_rng(3)
    rows = rng.normal(size=(30, EMBEDDING_DIM)).astype(np.float32)
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    np.savez(
        directory / "index.npz",
        embeddings=rows,
        labels=np.arange(30, dtype=np.int64) % 2,
        group_sizes=np.ones(30, np.int64),
    )
    card = json.loads((directory / "card.json").read_text())
    card["index"] = {
        "mode": "raw",
        "noise_std": 0.0,
        "embedding_dim": EMBEDDING_DIM,
        "entries_per_class": {"normal": 15, "pneumonia": 15},
    }
    (directory / "card.json").write_text(json.dumps(card))
    from signing import sign_bundle

    sign_bundle(directory, site.private)
    return directory


def _audit(*args: str, out: Path) -> tuple[int, str, dict]:
    result = gsco("audit", "registry", *args, "--out", str(out))
    report = json.loads((out / "report.json").read_text()) if (out / "report.json").exists() else {}
    return result.returncode, result.stdout + result.stderr, report


def _copy(populated: tuple[RunningRegistry, Path, SiteKeys, SiteKeys], name: str) -> Path:
    server, work, _, _ = populated
    target = work / name
    with sqlite3.connect(server.root / "registry.sqlite3") as db:  # a consistent copy
        db.execute("PRAGMA wal_checkpoint(FULL)")
    shutil.copytree(server.root, target)
    return target


SOURCES = ("folder", "remote")


def _audit_source(source: str, root: Path, out: Path) -> tuple[int, str, dict]:
    """Audits the (tampered) storage ``root``: read from its folder, or served by a registry.

    The remote audit trusts the root metadata the copy was made with, handed over out of band.
    """
    if source == "folder":
        return _audit("--root", str(root), out=out)
    anchor = out.parent / f"{out.name}-root.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    anchor.write_bytes((root / "tuf" / "metadata" / "1.root.json").read_bytes())
    server = start_registry(root)
    try:
        return _audit("--registry", server.address, "--trusted-root", str(anchor), out=out)
    finally:
        server.stop()


def _blob(root: Path, file_name: str, version: int = 2) -> Path:
    with sqlite3.connect(f"file:{root / 'registry.sqlite3'}?mode=ro", uri=True) as db:
        files = db.execute(
            "SELECT files FROM bundles WHERE site_id = 'site-a' AND version = ?", (version,)
        ).fetchone()[0]
    digest = json.loads(files)[file_name]
    return root / "blobs" / digest[:2] / digest


def test_a_clean_registry_passes_remotely_and_from_its_folder(
    populated: tuple[RunningRegistry, Path, SiteKeys, SiteKeys], tmp_path: Path
) -> None:
    server, _, _, _ = populated
    anchor = tmp_path / "root.json"
    anchor.write_bytes((server.root / "tuf" / "metadata" / "1.root.json").read_bytes())
    for args in (
        ("--registry", server.address, "--trusted-root", str(anchor)),
        ("--root", str(_copy(populated, f"clean-{tmp_path.name}"))),
    ):
        code, output, report = _audit(*args, out=tmp_path / args[0].strip("-"))
        assert code == 0, output
        assert report["passed"] is True
        bundles = {(b["site_id"], b["version"]): b for b in report["inventory"]["bundles"]}
        assert bundles[("site-a", 1)]["status"] == "revoked"
        assert bundles[("site-a", 2)]["index"]["min_group_size"] == 10
        assert bundles[("site-b", 1)]["index"]["mode"] == "raw"
        flags = [f for f in report["findings"] if f["severity"] == "flag"]
        assert len(flags) == 1
        assert "raw index: 30 per-image embeddings" in flags[0]["message"]
        assert report["checks_run"]["tuf-targets"] == 3
        assert report["inventory"]["event_log"]["entries"] == 6  # 2 enrol, 3 publish, 1 revoke
        text = (tmp_path / args[0].strip("-") / "report.md").read_text()
        assert "Verdict: **PASSED**" in text
        assert "raw index" in text


def test_an_edited_event_log_line_fails(
    populated: tuple[RunningRegistry, Path, SiteKeys, SiteKeys], tmp_path: Path
) -> None:
    root = _copy(populated, "edited-log")
    log = root / "events.jsonl"
    lines = log.read_text().splitlines(keepends=True)
    lines[2] = lines[2].replace('"version":1', '"version":7')
    log.write_text("".join(lines))
    code, output, report = _audit("--root", str(root), out=tmp_path)
    assert code == 1
    assert "FAIL event-log" in output
    assert "line 4 does not follow line 3" in output
    assert not report["passed"]
    # Served remotely, the same folder never gets that far: the registry refuses to open it.
    with pytest.raises(RuntimeError, match="did not start"):
        start_registry(root)


@pytest.mark.parametrize("source", SOURCES)
def test_a_replaced_bundle_file_fails(
    populated: tuple[RunningRegistry, Path, SiteKeys, SiteKeys], tmp_path: Path, source: str
) -> None:
    root = _copy(populated, f"replaced-file-{source}")
    _blob(root, "model.onnx").write_bytes(tiny_onnx(seed=99))
    code, output, report = _audit_source(source, root, tmp_path / "out")
    assert code == 1
    checks = {f["check"] for f in report["findings"] if f["severity"] == "fail"}
    if source == "folder":
        assert {"bundle-signature", "tuf-targets"} <= checks
        assert "FILE_CHANGED" in output
        assert "model.onnx" in output
    else:  # the registry will not serve a blob that no longer matches its digest
        assert {"bundle-files", "tuf-targets"} <= checks
        assert "is corrupt (its content changed)" in output


@pytest.mark.parametrize("source", SOURCES)
def test_a_card_field_with_a_patient_name_fails(
    populated: tuple[RunningRegistry, Path, SiteKeys, SiteKeys], tmp_path: Path, source: str
) -> None:
    root = _copy(populated, f"patient-name-{source}")
    blob = _blob(root, "card.json")
    card = json.loads(blob.read_bytes())
    card["referring_note"] = "Seen by Dr. Smith for DOE^JANE"
    blob.write_text(json.dumps(card))
    code, output, report = _audit_source(source, root, tmp_path / "out")
    assert code == 1
    if source == "folder":
        messages = [f["message"] for f in report["findings"] if f["check"] == "phi-scan"]
        assert any("a DICOM person name" in m for m in messages)
        assert "field 'referring_note' is outside the card schema" in output
    else:  # the edited card is no longer the blob it was stored as: the registry refuses it
        assert "is corrupt (its content changed)" in output
    assert "DOE^JANE" not in (tmp_path / "out" / "report.md").read_text()  # no PHI in it


def test_ledgers_and_access_logs_are_cross_checked(
    populated: tuple[RunningRegistry, Path, SiteKeys, SiteKeys], tmp_path: Path
) -> None:
    from site_agent import EgressLedger

    server, _, _, _ = populated
    with server.client() as client:
        refs = [r for r in client.bundles(include_revoked=True) if r.site_id == "site-a"]
        files = {r.bundle_digest: client.fetch(r.bundle_digest) for r in refs}
    from signing import digest_files

    ledger = EgressLedger(tmp_path / "site-a" / "egress.jsonl")
    for ref in refs[:1]:  # the second bundle never recorded as leaving
        ledger.append(
            destination=server.address, bundle_digest=ref.bundle_digest, task_id=ref.task_id,
            site_id=ref.site_id, backbone=ref.backbone, version=ref.version,
            files=digest_files(files[ref.bundle_digest]),
        )  # fmt: skip
    log = tmp_path / "hub" / "access.jsonl"
    log.parent.mkdir()
    log.write_text("not json\n")
    code, output, report = _audit(
        "--registry", server.address, "--ledger", str(tmp_path / "site-a"),
        "--access-log", str(tmp_path / "hub"), out=tmp_path / "out",
    )  # fmt: skip
    assert code == 1
    assert "never recorded it leaving" in output
    assert any(f["check"] == "access-log" for f in report["findings"])


def test_scans_find_personal_data_and_free_text() -> None:
    card = json.loads(FIXTURE_CARD.read_text())
    assert scan_card(json.dumps(card).encode()) == ([], [])
    card["data_summary"]["source"] = "MRN 00482913, admitted 2024-03-05"
    problems, hits = scan_card(json.dumps(card).encode())
    assert problems == []
    assert {h.what.split(" (")[0] for h in hits} == {"a date", "a record number"}
    model = load_model_from_string(tiny_onnx())
    model.doc_string = "exported for patient John Smith"
    helper.set_model_props(model, {"patient_id": "12345678"})
    free, hits = scan_onnx_metadata(model.SerializeToString())
    assert "the model has a doc_string" in free
    assert "metadata property 'patient_id'" in free
    assert any("record number" in h.what for h in hits)
    assert scan_onnx_metadata(tiny_onnx()) == ([], [])


def test_an_unreadable_folder_is_one_clear_error(tmp_path: Path) -> None:
    code, output, _ = _audit("--root", str(tmp_path), out=tmp_path / "out")
    assert code != 0
    assert "not a registry storage folder" in output
    assert "Traceback" not in output
    both = gsco("audit", "registry", "--out", str(tmp_path / "o"))
    assert both.returncode == 2
    assert "exactly one of" in both.stderr


def test_the_report_is_built_in_process(
    populated: tuple[RunningRegistry, Path, SiteKeys, SiteKeys],
) -> None:
    root = _copy(populated, "in-process")
    source = LocalRegistry(root)
    try:
        report = run_audit(source)
    finally:
        source.close()
    assert report.passed
    assert [f.severity for f in report.findings].count(Severity.FLAG) == 1


@pytest.mark.slow
def test_adapter_bundles_are_audited_like_specialists(tmp_path: Path) -> None:
    """A co-signed adapter passes the audit (its co-signers inventoried); its weights swapped
    in storage, or its role's co-signatures stripped, fail it."""
    from tests.adapters import adapter_bundle, publish_consortium

    (tmp_path / "keys").mkdir()
    site, other = SiteKeys(tmp_path / "keys", "site-a"), SiteKeys(tmp_path / "keys", "site-b")
    server = start_registry(tmp_path / "registry")
    try:
        with server.client() as client:
            client.enroll("site-a", site.public.pem)
            client.enroll("site-b", other.public.pem)
            client.publish_files(
                read_files(write_bundle_files(tmp_path / "s1", site)), site.private
            )
            bundle = adapter_bundle(tmp_path / "adapter", site, trainers=[site, other])
            adapter = publish_consortium(client, bundle, [site, other])
        anchor = tmp_path / "root.json"
        anchor.write_bytes((server.root / "tuf" / "metadata" / "1.root.json").read_bytes())
        code, output, report = _audit(
            "--registry", server.address, "--trusted-root", str(anchor), out=tmp_path / "remote"
        )
        assert code == 0, output
        kinds = {b["kind"]: b for b in report["inventory"]["bundles"]}
        assert kinds["adapter"]["bundle_digest"] == adapter.bundle_digest
        assert kinds["adapter"]["adapter"]["rank"] == 8
        (backed,) = report["inventory"]["consortium_adapters"]
        assert backed["co_signed_by"] == ["site-a", "site-b"]
        assert report["checks_run"]["tuf-targets"] == 2
    finally:
        server.stop()
    root = tmp_path / "registry"
    stripped = tmp_path / "stripped"
    shutil.copytree(root, stripped)
    with sqlite3.connect(f"file:{root / 'registry.sqlite3'}?mode=ro", uri=True) as db:
        files = db.execute(
            "SELECT files FROM bundles WHERE digest = ?", (adapter.bundle_digest,)
        ).fetchone()[0]
    digest = json.loads(files)["adapter_model.safetensors"]
    blob = root / "blobs" / digest[:2] / digest
    data = bytearray(blob.read_bytes())
    data[-1] ^= 0xFF
    blob.write_bytes(bytes(data))
    code, output, report = _audit("--root", str(root), out=tmp_path / "folder")
    assert code == 1
    checks = {f["check"] for f in report["findings"] if f["severity"] == "fail"}
    assert "bundle-signature" in checks
    assert "FILE_CHANGED" in output
    # The role's second co-signature stripped in storage: below the consortium's threshold.
    for role in (stripped / "tuf" / "metadata").glob("*_adapter.pneumonia-cxr.json"):
        document = json.loads(role.read_text())
        document["signatures"] = document["signatures"][:1]
        role.write_text(json.dumps(document))
    code, output, report = _audit("--root", str(stripped), out=tmp_path / "stripped-report")
    assert code == 1
    failed = {f["check"]: f["message"] for f in report["findings"] if f["severity"] == "fail"}
    assert "co-signed by 1 of its 2 training sites" in failed["consortium-backing"]


def _store_unchecked(root: Path, folder: Path, *, kind: str, version: int = 1) -> str:
    """Stores a signed bundle the way a registry before today's checks would have.

    Blobs, its row and its publication event, none of today's checks: what an
    auditor must still find in a registry that has run for years.
    """
    from protocol import ADAPTER_BACKBONE
    from registry import Registry
    from signing import bundle_digest, digest_files

    files = {p.name: p.read_bytes() for p in sorted(folder.iterdir())}
    card = json.loads(files.get("card.json") or files["adapter_card.json"])
    digest = bundle_digest(digest_files(files))
    store = Registry(root)
    try:
        (key,) = [s.key_id for s in store.sites() if s.site_id == card["site_id"]]
        stored = {name: store.blobs.put(data) for name, data in files.items()}
        backbone = ADAPTER_BACKBONE if kind == "adapter" else card["backbone"]
        with store._transaction() as db:
            db.execute(
                "INSERT INTO bundles (digest, task_id, site_id, backbone, version, key_id, "
                "published_at, size_bytes, files, revoked_at, kind) "
                "VALUES (?, ?, ?, ?, ?, ?, '2026-01-01T00:00:00+00:00', ?, ?, NULL, ?)",
                (digest, card["task_id"], card["site_id"], backbone, version, key,
                 sum(map(len, files.values())), json.dumps(stored, sort_keys=True), kind),
            )  # fmt: skip
            store._event(
                db, "publish", site_id=card["site_id"], key_id=key, bundle_digest=digest,
                task_id=card["task_id"], backbone=backbone, version=version,
            )  # fmt: skip
    finally:
        store.close()
    return digest


@pytest.mark.slow
def test_stored_rows_todays_checks_refuse_are_flagged(tmp_path: Path) -> None:
    """What an older registry let in: one site's adapter with non-finite weights, one with a
    full-trust policy, a specialist whose labels hold terminal and markup characters."""
    from protocol import ArbitrationPolicy, Mode, ModePolicy
    from registry import Registry
    from tests.adapters import adapter_bundle, edit_json, resign

    (tmp_path / "keys").mkdir()
    site = SiteKeys(tmp_path / "keys", "site-a")
    root = tmp_path / "registry"
    store = Registry(root)
    store.enroll("site-a", site.public.pem)
    store.close()
    nan = adapter_bundle(tmp_path / "nan", site)
    from safetensors.numpy import load_file, save_file

    tensors = load_file(str(nan / "adapter_model.safetensors"))
    save_file(
        {k: v * float("nan") for k, v in tensors.items()}, str(nan / "adapter_model.safetensors")
    )
    resign(nan, site)
    full_trust = ModePolicy(
        generalist_weight=100.0, validation_accuracy={"policy": 1.0}, weights_tried={},
        label_bias=(20.0, -20.0),
    )  # fmt: skip
    trusting = adapter_bundle(
        tmp_path / "trusting", site, version=2**32 - 1,
        policy=ArbitrationPolicy(
            task_id="pneumonia-cxr", labels=("normal", "pneumonia"), model="rogue",
            n_examples=10, modes={Mode.GSCO: full_trust},
        ),
    )  # fmt: skip
    hostile = write_bundle_files(tmp_path / "hostile", site, sign=False)
    edit_json(
        hostile / "card.json",
        task_id="new-task",
        labels=["normal\x1b[31m", "<script>alert(1)</script>\u202e"],
        data_summary={"source": "test", "n_train": 10, "n_val": 2, "n_test": 2,
                      "train_class_counts": {}},
    )  # fmt: skip
    resign(hostile, site)
    _store_unchecked(root, nan, kind="adapter")
    _store_unchecked(root, trusting, kind="adapter", version=2**32 - 1)
    _store_unchecked(root, hostile, kind="specialist")
    code, _, report = _audit("--root", str(root), out=tmp_path / "report")
    assert code == 1
    failed: dict[str, list[str]] = {}
    for finding in report["findings"]:
        if finding["severity"] == "fail":
            failed.setdefault(finding["check"], []).append(finding["message"])
    assert any("NaN or infinite" in m for m in failed["adapter-content"])
    assert any("weight 100" in m for m in failed["adapter-policy"])
    assert len(failed["consortium-backing"]) == 2  # neither adapter has the co-signatures
    assert any("labels" in m and "U+001B" in m for m in failed["card-schema"]), failed
