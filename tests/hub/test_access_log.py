"""The hub's hash-chained access log, on a real file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

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


@pytest.mark.parametrize("edit", ["change", "drop", "swap", "truncate"])
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
    else:
        lines[-1] = lines[-1][:-10]
    path.write_bytes(b"".join(lines))
    with pytest.raises(AccessLogError, match=r"access.jsonl: "):
        verify_access_log(path)
    with pytest.raises(AccessLogError):
        AccessLog(path)  # a hub refuses to append to a broken log


def test_one_writer_at_a_time(tmp_path: Path) -> None:
    path = tmp_path / "access.jsonl"
    first = AccessLog(path, fsync=False)
    with pytest.raises(AccessLogError, match="in use by another hub"):
        AccessLog(path)
    first.close()
    AccessLog(path).close()
