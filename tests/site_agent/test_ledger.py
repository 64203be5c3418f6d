"""The egress ledger's hash chain."""

from __future__ import annotations

from pathlib import Path

import pytest

from site_agent import EgressLedger
from site_agent.errors import LedgerError


def _append(ledger: EgressLedger, version: int) -> None:
    ledger.append(
        destination="registry.example:50051",
        bundle_digest=f"{version:064x}",
        task_id="pneumonia-cxr",
        site_id="site-a",
        backbone="resnet18",
        version=version,
        files={"model.onnx": "a" * 64},
    )


def test_append_and_read_back(tmp_path: Path) -> None:
    ledger = EgressLedger(tmp_path / "egress.jsonl")
    assert ledger.records() == []
    assert ledger.last_version("pneumonia-cxr", "resnet18") == 0
    for version in (1, 2, 3):
        _append(ledger, version)
    records = ledger.records()
    assert [r.seq for r in records] == [0, 1, 2]
    assert ledger.last_version("pneumonia-cxr", "resnet18") == 3
    assert ledger.last_version("pneumonia-cxr", "densenet121") == 0


@pytest.mark.parametrize("damage", ["edit", "delete", "swap"])
def test_any_change_breaks_the_chain(tmp_path: Path, damage: str) -> None:
    path = tmp_path / "egress.jsonl"
    ledger = EgressLedger(path)
    for version in (1, 2, 3):
        _append(ledger, version)
    lines = path.read_text().splitlines(keepends=True)
    if damage == "edit":
        lines[1] = lines[1].replace('"version":2', '"version":9')
    elif damage == "delete":
        del lines[1]
    else:
        lines[1], lines[2] = lines[2], lines[1]
    path.write_text("".join(lines))
    with pytest.raises(LedgerError, match=r"hash chain breaks at lines [12] and [23]"):
        ledger.records()


def test_the_last_line_needs_an_outside_anchor(tmp_path: Path) -> None:
    """Documents the limit: a consistent edit of the tail is invisible to the chain alone."""
    path = tmp_path / "egress.jsonl"
    ledger = EgressLedger(path)
    for version in (1, 2):
        _append(ledger, version)
    lines = path.read_text().splitlines(keepends=True)
    lines[-1] = lines[-1].replace('"version":2', '"version":7')
    path.write_text("".join(lines))
    assert ledger.records()[-1].version == 7  # caught only by the registry cross-check
