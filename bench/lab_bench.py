"""Benchmark the embedded lab against the targets of issue 3; prints a table.

    sudo python bench/lab_bench.py [-i inventory/lab] [--fresh] [--rounds 3]

Measures, for the whole lab inventory: the first `lab up` with an empty rootfs cache (with
`--fresh`: mmdebstrap + boot, in a throw-away cache dir), `lab up` with the cached rootfs until
every host answers SSH, a no-op `lab up`, the lab's memory (PSS of every host's processes) and
`lab down`. Run from the repo root (the lab's state dir is relative to it). Not a test.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from nornir_k8sha.lab import rootfs
from nornir_k8sha.lab.lab import Lab

TARGETS = {
    "first up (packages + rootfs + boot)": 240.0,
    "cached up, all hosts answer SSH": 20.0,
    "no-op up": None,
    "lab down": 10.0,
}
MEMORY_TARGET_MIB = 2560.0


def _timed(action) -> float:  # noqa: ANN001
    started = time.monotonic()
    action()
    return time.monotonic() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-i", "--inventory", default="inventory/lab")
    parser.add_argument("--fresh", action="store_true",
                        help="also time a first up with an empty rootfs cache (~600 MB, removed)")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("lab_bench: needs root (it builds the lab)", file=sys.stderr)
        return 2
    lab = Lab.from_inventory(args.inventory)
    results: dict[str, list[float]] = {k: [] for k in TARGETS}
    lab.down()

    if args.fresh:
        cache = Path(tempfile.mkdtemp(prefix="k8sha-bench-cache-", dir="/var/tmp"))
        saved = rootfs.CACHE_ROOT
        rootfs.CACHE_ROOT = cache
        try:
            results["first up (packages + rootfs + boot)"].append(_timed(lab.up))
            lab.down()
        finally:
            rootfs.CACHE_ROOT = saved
            shutil.rmtree(cache, ignore_errors=True)

    # the cached rounds must not include a (re)build
    rootfs.ensure_rootfs(uml_modules=lab.kernel.modules)
    memory: list[float] = []
    for _ in range(args.rounds):
        results["cached up, all hosts answer SSH"].append(_timed(lab.up))
        results["no-op up"].append(_timed(lab.up))
        time.sleep(5)  # let the guests settle before reading memory
        memory.append(sum(s.pss_kib for s in lab.status()) / 1024)
        results["lab down"].append(_timed(lab.down))

    table = Table(title=f"embedded lab: {len(lab.spec.hosts)} hosts "
                        f"({len(lab.spec.role('lvs'))} UML, the rest nspawn) — "
                        f"{platform.node()}, {os.cpu_count()} cores, "
                        f"{time.strftime('%Y-%m-%d')}")
    for column in ("measure", "median", "min", "max", "runs", "target", "ok"):
        table.add_column(column)
    for name, values in results.items():
        if not values:
            table.add_row(name, "-", "-", "-", "0", "-", "not run")
            continue
        target = TARGETS[name]
        median = statistics.median(values)
        table.add_row(name, f"{median:.1f} s", f"{min(values):.1f} s", f"{max(values):.1f} s",
                      str(len(values)), f"< {target:.0f} s" if target else "-",
                      "yes" if target is None or median < target else "NO")
    mem = statistics.median(memory)
    table.add_row("memory (PSS, whole lab)", f"{mem:.0f} MiB", f"{min(memory):.0f} MiB",
                  f"{max(memory):.0f} MiB", str(len(memory)), f"< {MEMORY_TARGET_MIB:.0f} MiB",
                  "yes" if mem < MEMORY_TARGET_MIB else "NO")
    Console().print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
