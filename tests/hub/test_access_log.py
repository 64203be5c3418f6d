"""The hub's hash-chained access log, on a real file."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from pydantic import ValidationError

from hub import AccessLog, AccessLogError, verify_access_log
from protocol import Mode

DIGEST = "ab" * 32


def _write(path: Path, count: int) -> None:
    log = AccessLog(path, fsync=False)
    for number in range(count):
        log.append(
            request_id=f"r{number}",
            client_id="viewer",
            outcome="ok",
            image_sha256=DIGEST,
            task_id="pneumonia-cxr",
            mode_requested=Mode.GSCO,
            mode_used=Mode.GSCO,
            label="pneumonia",
            specialist_digests=(DIGEST,),
            registry_snapshot_version=3,
        )
    log.close()


def test_the_chain_continues_across_restarts(tmp_path: Path) -> None:
    path = tmp_path / "access.jsonl"
    _write(path, 2)
    _write(path, 3)
    records = verify_access_log(path)
    assert [r.seq for r in records] == [0, 1, 2, 3, 4]
    assert [r.request_id for r in records] == ["r0", "r1", "r0", "r1", "r2"]


@pytest.mark.parametrize("edit", ["change", "drop", "swap"])
def test_editing_the_log_is_detected(tmp_path: Path, edit: str) -> None:
    path = tmp_path / "access.jsonl"
    _write(path, 4)
    lines = path.read_bytes().splitlines(keepends=True)
    if edit == "change":
        record = json.loads(lines[1])
        record["label"] = "normal"
        lines[1] = json.dumps(record).encode() + b"\n"
    elif edit == "drop":
        del lines[1]
    elif edit == "swap":
        lines[1], lines[2] = lines[2], lines[1]
    path.write_bytes(b"".join(lines))
    with pytest.raises(AccessLogError, match=r"access.jsonl: "):
        verify_access_log(path)
    with pytest.raises(AccessLogError):
        AccessLog(path)  # a hub refuses to append to a broken log


def test_an_unfinished_last_line_is_flagged_then_cut_off_when_a_hub_reopens(
    tmp_path: Path,
) -> None:
    # What a hub killed inside a write leaves: part of a line, no newline. The auditor
    # flags it; the restarted hub cuts it off (no answer waited on a line never
    # written whole) and the chain goes on from the last complete line.
    path = tmp_path / "access.jsonl"
    _write(path, 4)
    data = path.read_bytes()
    path.write_bytes(data[:-10])
    with pytest.raises(AccessLogError, match="truncated"):
        verify_access_log(path)
    _write(path, 1)
    records = verify_access_log(path)
    assert [r.request_id for r in records] == ["r0", "r1", "r2", "r0"]
    assert [r.seq for r in records] == [0, 1, 2, 3]


def test_group_commit_writes_many_answers_at_once_each_durable_when_returned(
    tmp_path: Path,
) -> None:
    path = tmp_path / "access.jsonl"
    log = AccessLog(path)
    fields = {"client_id": "viewer", "outcome": "ok", "task_id": "pneumonia-cxr"}
    with ThreadPoolExecutor(32) as pool:
        records = list(pool.map(lambda n: log.append(request_id=f"r{n}", **fields), range(400)))
    writes = log.writes
    log.close()
    on_disk = verify_access_log(path)
    assert sorted(r.request_id for r in on_disk) == sorted(f"r{n}" for n in range(400))
    assert {r.seq for r in records} == set(range(400))  # what each caller got is on disk
    assert writes < 400  # answers shared writes (and fsyncs)
    with pytest.raises(AccessLogError, match="closed"):
        log.append(request_id="late", **fields)


def test_a_record_that_does_not_validate_fails_only_its_caller(tmp_path: Path) -> None:
    path = tmp_path / "access.jsonl"
    log = AccessLog(path, fsync=False)
    with pytest.raises(ValidationError):
        log.append(request_id="", client_id="viewer", outcome="ok")
    log.append(request_id="fine", client_id="viewer", outcome="ok")
    log.close()
    assert [r.request_id for r in verify_access_log(path)] == ["fine"]


def test_one_writer_at_a_time(tmp_path: Path) -> None:
    path = tmp_path / "access.jsonl"
    first = AccessLog(path, fsync=False)
    with pytest.raises(AccessLogError, match="in use by another hub"):
        AccessLog(path)
    first.close()
    AccessLog(path).close()
