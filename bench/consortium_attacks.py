"""One hospital attacks the adapter stage every way it can: does the consortium notice?

Runs ``gsco simulate --dataset pneumoniamnist --sites 3 --tune-generalist`` twice,
without faults and with hospital-03 acting out every adapter fault
(``rogue-adapter``, ``poison-adapter``, ``inflate-examples``, ``lie-policy``),
and writes ``bench/results/consortium_attacks.json``: each method's test
accuracy in both runs (the line: every mode within 1 point), what was refused
of the attacker, who co-signed the adapter served, and the run times.

    python bench/consortium_attacks.py                     # both runs (about 55 min here)
    python bench/consortium_attacks.py --reports A B       # from two report folders
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

FAULTS = ("rogue-adapter", "poison-adapter", "inflate-examples", "lie-policy")
COMMAND = ["simulate", "--dataset", "pneumoniamnist", "--sites", "3", "--tune-generalist"]


def _run(out: Path, faults: bool) -> float:
    """One simulation into ``out``; its wall time in seconds."""
    extra = [a for kind in FAULTS for a in ("--fault", f"hospital-03:{kind}")] if faults else []
    started = time.monotonic()
    gsco = Path(sys.executable).with_name("gsco")
    subprocess.run([str(gsco), *COMMAND, *extra, "--out", str(out)], check=True)
    return time.monotonic() - started


def _summary(report: Path) -> dict[str, object]:
    results = json.loads((report / "results.json").read_text())
    adapter = results.get("adapter") or {}
    return {
        "accuracy": {m["method"]: m["accuracy"]["value"] for m in results["methods"]},
        "adapter_served": adapter.get("digest"),
        "co_signed_by": adapter.get("co_signed_by"),
        "version": adapter.get("version"),
        "aggregation": adapter.get("aggregation"),
        "policy_weights": {
            mode: fitted["generalist_weight"]
            for mode, fitted in (adapter.get("policy") or {}).get("modes", {}).items()
        },
        "refused": adapter.get("refused") or {},
    }


def _commit() -> str:
    found = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
    )
    return found.stdout.strip() or "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reports", nargs=2, type=Path, metavar=("CLEAN", "FAULTS"))
    parser.add_argument("--work", type=Path, default=Path("bench-consortium-attacks"))
    parser.add_argument("--out", type=Path, default=Path("bench/results/consortium_attacks.json"))
    args = parser.parse_args()
    seconds: dict[str, float | None] = {"clean": None, "faults": None}
    if args.reports:
        clean, faulty = args.reports
    else:
        clean, faulty = args.work / "clean", args.work / "faults"
        seconds = {"clean": _run(clean, False), "faults": _run(faulty, True)}
    without, with_faults = _summary(clean), _summary(faulty)
    gaps = {
        method: round(abs(value - with_faults["accuracy"][method]), 4)  # type: ignore[index]
        for method, value in without["accuracy"].items()  # type: ignore[attr-defined]
    }
    document = {
        "benchmark": "consortium_attacks",
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "commit": _commit(),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "command": "gsco " + " ".join(COMMAND),
        "attacker": {"site": "hospital-03", "faults": list(FAULTS)},
        "pass_line": "every method's test ACC within 0.01 of the run without faults",
        "passed": all(gap <= 0.01 for gap in gaps.values()),
        "accuracy_gap": gaps,
        "seconds": seconds,
        "without_faults": without,
        "with_faults": with_faults,
    }
    args.out.write_text(json.dumps(document, indent=2) + "\n")
    print(json.dumps({"passed": document["passed"], "accuracy_gap": gaps}, indent=2))


if __name__ == "__main__":
    main()
