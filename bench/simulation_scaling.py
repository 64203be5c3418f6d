"""What adding sites costs: ``gsco simulate`` at 3, 10 and 30 sites, wall time and peak memory.

Each run is the real thing (Flower's simulation runtime, a registry, a hub,
TUF sync, evaluation through the hub) with a small backbone and a small time
budget per site, and no generalist (its cost does not grow with the sites;
see generalist_latency.py). Peak memory is the largest sum of resident memory
over the whole process tree (the CLI, Flower's SuperLink, Ray and its
workers), sampled every 0.5 s. Writes bench/results/simulation_scaling.json.

    python bench/simulation_scaling.py [--sites 3 10 30]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GSCO = shutil.which("gsco") or str(Path(sys.executable).parent / "gsco")


def _tree_rss(root: int) -> int:
    """Resident bytes of ``root`` and all its descendants (Linux /proc)."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            parents[int(stat.parent.name)] = int(fields[1])
        except (OSError, IndexError, ValueError):
            continue
    members, frontier = {root}, [root]
    while frontier:
        parent = frontier.pop()
        for pid, ppid in parents.items():
            if ppid == parent and pid not in members:
                members.add(pid)
                frontier.append(pid)
    total = 0
    for pid in members:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
        except OSError:
            continue
    return total


def _run(sites: int, args: argparse.Namespace, out: Path) -> dict[str, object]:
    command = [
        GSCO, "simulate", "--dataset", args.dataset, "--sites", str(sites),
        "--partition", "iid", "--epochs", "1", "--minutes-per-site", str(args.minutes),
        "--test-images", str(args.test_images), "--generalist", "none", "--out", str(out),
    ]  # fmt: skip
    started = time.monotonic()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peak = 0
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, _tree_rss(process.pid))
            time.sleep(0.5)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    output, _ = process.communicate()
    done.set()
    sampler.join()
    wall = time.monotonic() - started
    if process.returncode != 0:
        raise SystemExit(f"gsco simulate --sites {sites} failed:\n{output[-3000:]}")
    report = json.loads((out / "results.json").read_text())
    return {
        "sites": sites,
        "wall_seconds": round(wall, 1),
        "peak_rss_mb": round(peak / 2**20, 1),
        "stage_seconds": report["timings_s"],
        "published": sum(s["status"] == "published" for s in report["sites"]),
        "not_published": {
            s["site_id"]: f"{s['status']}: {s['detail'][:300]}"
            for s in report["sites"]
            if s["status"] != "published"
        },
        "ensemble_accuracy": next(
            m["accuracy"]["value"] for m in report["methods"] if m["method"] == "ensemble"
        ),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sites", type=int, nargs="+", default=[3, 10, 30])
    parser.add_argument("--dataset", default="pneumoniamnist")
    parser.add_argument("--minutes", type=float, default=0.5, help="training budget per site")
    parser.add_argument("--test-images", type=int, default=50)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args()
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for sites in args.sites:
            print(f"{sites} sites ...", file=sys.stderr)
            runs.append(_run(sites, args, Path(tmp) / f"sites-{sites}"))
            print(json.dumps(runs[-1]), file=sys.stderr)
    report = {
        "benchmark": "simulation_scaling",
        "what": "gsco simulate end to end (Flower, registry, hub, evaluation; no generalist), "
        "tf_efficientnet_lite0, 1 epoch, iid partition",
        "dataset": args.dataset,
        "minutes_per_site": args.minutes,
        "test_images": args.test_images,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count()},
        "runs": runs,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "simulation_scaling.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
