"""Deploy and check timings on the embedded lab, against the issues' targets.

    sudo .venv/bin/python bench/deploy_bench.py [--rounds 3] [--tier1-only]

Each round: `lab down` + `lab up` (a fresh lab from the cached rootfs), then the README's deploy,
then a no-op re-run, then the `check` sweep (in-process, median of 5, and the CLI once). Prints a
table with the targets: fresh tier-1 deploy < 60 s, full deploy < 120 s, no-op < 5 s,
check < 0.5 s. Run from the repository root, as root. Leaves the lab up and deployed.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

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


def check_in_process() -> list[float]:
    sys.path.insert(0, str(REPO))
    from nornir_k8sha.checks import run_checks
    from nornir_k8sha.inventory import open_nornir
    from nornir_k8sha.topology import load_cluster_spec

    spec = load_cluster_spec(REPO / INVENTORY)
    nr = open_nornir(REPO / INVENTORY)
    times = []
    for _ in range(6):  # the first opens the SSH connections
        start = time.monotonic()
        run_checks(spec, nr)
        times.append(time.monotonic() - start)
    return times


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--tier1-only", action="store_true", help="SLB tier and etcd only")
    args = ap.parse_args()
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
    sweep = check_in_process()
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
