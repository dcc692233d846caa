"""Deploy and check timings on the embedded lab, against the issues' targets.

    sudo .venv/bin/python bench/deploy_bench.py [--rounds 3] [--tier1-only]
    sudo .venv/bin/python bench/deploy_bench.py --noop [--repeat 5]

Each round: `lab down` + `lab up` (a fresh lab from the cached rootfs), then the README's deploy,
then a no-op re-run, then the `check` sweep (in-process, median of 5, and the CLI once). Prints a
table with the targets: fresh tier-1 deploy < 60 s, full deploy < 120 s, no-op < 5 s,
check < 0.5 s. Run from the repository root, as root. Leaves the lab up and deployed.

`--noop` (issue 12.3) takes a lab that is up and deployed as it is: `--repeat` no-op re-runs,
`--repeat` whole `check` commands and `--repeat` in-process sweeps (after one that opens the
connections), then the medians against the targets (no-op < 3 s, `check` < 1 s, sweep < 0.5 s)
and the no-op's phases and the sweep's rows, median seconds each.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
INVENTORY = "inventory/lab"
TIER1 = ["preflight", "pki", "lb", "etcd", "network", "registry"]


def cli(*args: str) -> tuple[float, subprocess.CompletedProcess[str]]:
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "nornir_k8sha", *args], cwd=REPO,
                          capture_output=True, text=True)
    return time.monotonic() - start, proc


def deploy(phases: list[str] | None) -> tuple[float, dict]:
    extra = [x for p in phases or [] for x in ("--phase", p)]
    took, proc = cli("deploy", "-i", INVENTORY, "--json", *extra)
    report = json.loads(proc.stdout)
    if proc.returncode != 0:
        print(f"deploy exited {proc.returncode}: failed hosts {report['failed_hosts']}",
              file=sys.stderr)
    return took, report


def check_in_process(runs: int = 6) -> list[tuple[float, Any]]:
    """`runs` sweeps on one Nornir: (seconds, RunReport) each; the first opens the
    connections."""
    sys.path.insert(0, str(REPO))
    from nornir_k8sha.checks import run_checks
    from nornir_k8sha.inventory import open_nornir
    from nornir_k8sha.topology import load_cluster_spec

    spec = load_cluster_spec(REPO / INVENTORY)
    nr = open_nornir(REPO / INVENTORY)
    out = []
    for _ in range(runs):
        start = time.monotonic()
        report = run_checks(spec, nr)
        out.append((time.monotonic() - start, report))
    nr.close_connections()
    return out


def _stats(values: list[float]) -> str:
    return (f"{statistics.median(values):9.3f} {min(values):9.3f} {max(values):9.3f}")


def noop_and_check(repeat: int) -> None:
    """Issue 12.3's three figures on a deployed lab, medians of `repeat`."""
    rows: dict[str, list[float]] = {"no-op deploy (command)": [], "check (command)": [],
                                    "check sweep (in-process)": []}
    phases: dict[str, list[float]] = {}
    changed = []
    for _ in range(repeat):
        took, report = deploy(None)
        rows["no-op deploy (command)"].append(took)
        changed.append(report["changed"])
        for p in report["phases"]:
            phases.setdefault(p["name"], []).append(p["duration_s"])
    sweep_rows: dict[str, list[float]] = {}
    for _ in range(repeat):
        took, proc = cli("check", "-i", INVENTORY, "--json")
        rows["check (command)"].append(took)
        if proc.returncode != 0:
            print(f"check exited {proc.returncode}", file=sys.stderr)
    for took, report in check_in_process(repeat + 1)[1:]:
        rows["check sweep (in-process)"].append(took)
        for p in report.phases:
            sweep_rows.setdefault(p.name, []).append(p.duration)
    target = {"no-op deploy (command)": 3.0, "check (command)": 1.0,
              "check sweep (in-process)": 0.5}
    print(f"{'measure (s)':32} {'median':>9} {'min':>9} {'max':>9} {'target':>7}  ok")
    for name, values in rows.items():
        ok = "yes" if statistics.median(values) < target[name] else "NO"
        print(f"{name:32} {_stats(values)} {target[name]:7} {ok:>3}")
    print(f"{'no-op changed (each run)':32} {changed}")
    print("no-op phases:")
    for name, values in phases.items():
        print(f"  {name:30} {_stats(values)}")
    print("sweep rows:")
    for name, values in sweep_rows.items():
        print(f"  {name:30} {_stats(values)}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--tier1-only", action="store_true", help="SLB tier and etcd only")
    ap.add_argument("--noop", action="store_true",
                    help="no-op re-runs and check on the lab as it is (issue 12.3)")
    ap.add_argument("--repeat", type=int, default=5, help="runs of each measure with --noop")
    args = ap.parse_args()
    if args.noop:
        noop_and_check(args.repeat)
        return
    phases = TIER1 if args.tier1_only else None
    rows: dict[str, list[float]] = {"fresh deploy": [], "no-op deploy": [], "no-op changed": [],
                                    "check (CLI)": []}
    for _ in range(args.rounds):
        cli("lab", "down")
        _, up = cli("lab", "up", "-i", INVENTORY)
        if up.returncode != 0:
            sys.exit(f"lab up failed:\n{up.stderr[-2000:]}")
        took, _ = deploy(phases)
        rows["fresh deploy"].append(took)
        took, report = deploy(phases)
        rows["no-op deploy"].append(took)
        rows["no-op changed"].append(report["changed"])
        took, _ = cli("check", "-i", INVENTORY, "--json")
        rows["check (CLI)"].append(took)
    sweep = [took for took, _ in check_in_process()]
    target = {"fresh deploy": 60.0 if args.tier1_only else 120.0, "no-op deploy": 5.0,
              "no-op changed": 0, "check (CLI)": None}
    print(f"{'measure':28} {'median':>9} {'min':>9} {'target':>9}")
    for name, values in rows.items():
        t = target[name]
        print(f"{name:28} {statistics.median(values):9.2f} {min(values):9.2f} "
              f"{'' if t is None else t:>9}")
    warm = sweep[1:]
    print(f"{'check sweep (in-process)':28} {statistics.median(warm):9.3f} {min(warm):9.3f} "
          f"{0.5:>9}")
    print(f"  (first sweep, opening SSH connections: {sweep[0]:.2f} s)")


if __name__ == "__main__":
    main()
