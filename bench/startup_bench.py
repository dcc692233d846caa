"""What a whole command pays before and after its hosts' work (issue 12.3): a timeline.

    sudo .venv/bin/python bench/startup_bench.py [--repeat 5] [--profile FILE] [-- ARGS...]
    sudo .venv/bin/python bench/startup_bench.py --trees BEFORE AFTER [--repeat 5] [-- ARGS...]

Runs `python -m nornir_k8sha ARGS` (default: `check -i inventory/lab --json`) as a whole
process `--repeat` times and prints, per mark, the median seconds from the moment the process
was started: the interpreter up, the command's modules imported, the inventory read and
validated, Nornir open, the cluster lock taken (commands that change hosts), each phase's start
and end (from the report), the report written, the command's function returned, the last
`atexit` handler, and the process gone. The marks come from wrappers put around the command's
own functions in the child (`_child`); the code run is the command's, unchanged. With
`--profile FILE` the last run also writes a cProfile of the whole process (imports included).

Run it from the repository root of the code to measure (it imports `nornir_k8sha` from the
working directory, as `python -m` does); the lab must be up and deployed for the lab's
inventory.

`--trees A B`: the plain whole command (no marks), alternating between two checkouts (e.g. the
code before a change exported with `git archive`, its `.k8sha` a link to this one's), `--repeat`
each: median, min and max wall seconds per tree, and the exit codes.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DEFAULT = ["check", "-i", "inventory/lab", "--json"]


def _child(argv: list[str], marks_file: str, started: float, profile: str | None) -> None:
    """In the measured process: mark, wrap the command's functions, run the real `main`."""
    import atexit

    marks: list[tuple[str, float]] = [("interpreter up", time.time())]
    began: dict[str, float] = {}  # when the phases (deploy) or the sweep (check) began

    def mark(name: str) -> None:
        marks.append((name, time.time()))
        if name in ("phases start", "sweep starts"):
            began["base"] = marks[-1][1]

    def dump() -> None:
        mark("last atexit handler")
        import gc
        Path(marks_file).write_text(json.dumps({"started": started, "marks": marks,
                                                "phases": phases,
                                                "gc": [s["collections"] for s in gc.get_stats()]}))

    atexit.register(dump)  # registered first: runs last
    phases: list[dict] = []
    profiler = None
    if profile:
        import cProfile
        profiler = cProfile.Profile()
        profiler.enable()
        atexit.register(lambda: (profiler.disable(), profiler.dump_stats(profile)))
    sys.argv = ["nornir_k8sha", *argv]
    sys.path.insert(0, os.getcwd())
    import contextlib

    try:  # the command line's own way of importing a command, where it has one
        from nornir_k8sha.cli.startup import imports as importing
    except ImportError:
        importing = contextlib.nullcontext
    with importing():
        from nornir_k8sha.cli import commands

        group = commands._group(commands.COMMANDS[argv[0]][0])
    mark("command's modules imported")

    def wrap(module: object, name: str, before: str | None, after: str | None) -> None:
        real = getattr(module, name, None)
        if real is None:
            return

        def wrapper(*args: object, **kwargs: object) -> object:
            if before:
                mark(before)
            try:
                return real(*args, **kwargs)
            finally:
                if after:
                    mark(after)

        setattr(module, name, wrapper)

    wrap(group, "load_spec", None, "inventory read and validated")
    wrap(group, "open_nornir", None, "Nornir open")
    wrap(group, "run_checks", "sweep starts", "sweep done")
    wrap(group, "run_stages", "phases start", "phases done")
    wrap(group, "finish", "finish starts", None)
    real_lock = getattr(group, "one_operation", None)
    if real_lock is not None:

        @contextlib.contextmanager
        def lock(*args: object, **kwargs: object):  # type: ignore[no-untyped-def]
            with real_lock(*args, **kwargs):
                mark("locks taken")
                yield
            mark("locks released")

        group.one_operation = lock  # type: ignore[attr-defined]
    from nornir_k8sha import report as report_mod

    real_write = report_mod.RunReport.write_json

    def write_json(self, path):  # type: ignore[no-untyped-def]
        if not phases:
            for p in self.phases:
                phases.append({"name": p.name, "started": p.started, "duration": p.duration,
                               "base": began.get("base")})
        out = real_write(self, path)
        mark(f"report written ({Path(path).parent.name}/)")
        return out

    report_mod.RunReport.write_json = write_json  # type: ignore[method-assign]

    try:
        commands.main()
    finally:
        mark("main returned")


def run_once(argv: list[str], profile: str | None = None) -> dict:
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        marks_file = f.name
    started = time.time()
    proc = subprocess.run(
        [sys.executable, __file__, "--child", marks_file, str(started),
         *(["--profile", profile] if profile else []), "--", *argv],
        capture_output=True, text=True)
    gone = time.time()
    data = json.loads(Path(marks_file).read_text())
    os.unlink(marks_file)
    data["gone"] = gone
    data["exit"] = proc.returncode
    return data


def compare(trees: list[str], argv: list[str], repeat: int) -> None:
    """The whole command from each tree in turn, `repeat` rounds; wall seconds per tree."""
    walls: dict[str, list[float]] = {t: [] for t in trees}
    codes: dict[str, list[int]] = {t: [] for t in trees}
    for _ in range(repeat):
        for tree in trees:
            start = time.monotonic()
            proc = subprocess.run([sys.executable, "-m", "nornir_k8sha", *argv], cwd=tree,
                                  capture_output=True, text=True)
            walls[tree].append(time.monotonic() - start)
            codes[tree].append(proc.returncode)
    print(f"`{' '.join(argv)}`, {repeat} rounds alternating, load average "
          f"{os.getloadavg()[0]:.2f}")
    for tree in trees:
        v = walls[tree]
        print(f"{tree:40} median {statistics.median(v):.3f} s ({min(v):.3f}-{max(v):.3f}), "
              f"each {' '.join(f'{x:.3f}' for x in v)}, exit {codes[tree]}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--trees", nargs=2, help="alternate the whole command between two checkouts")
    ap.add_argument("--profile", help="cProfile of the last run to this file")
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    ap.add_argument("argv", nargs="*")
    args = ap.parse_args()
    argv = args.argv or DEFAULT
    if args.child:
        _child(argv, args.child[0], float(args.child[1]), args.profile)
        return
    if args.trees:
        compare(args.trees, argv, args.repeat)
        return
    runs = [run_once(argv, args.profile if i == args.repeat - 1 else None)
            for i in range(args.repeat)]
    rows: dict[str, list[float]] = {}
    for run in runs:
        t0 = run["started"]
        for name, at in run["marks"]:
            rows.setdefault(name, []).append(at - t0)
        for p in run["phases"]:
            if p["base"] is not None:
                rows.setdefault(f"  phase {p['name']} starts", []).append(
                    p["base"] - t0 + p["started"])
                rows.setdefault(f"  phase {p['name']} ends", []).append(
                    p["base"] - t0 + p["started"] + p["duration"])
        rows.setdefault("process gone", []).append(run["gone"] - t0)
    order = sorted(rows, key=lambda k: statistics.median(rows[k]))
    print(f"`{' '.join(argv)}`, {args.repeat} runs, exit codes {[r['exit'] for r in runs]}, "
          f"load average {os.getloadavg()[0]:.2f}")
    print(f"garbage collections per generation, each run: {[r['gc'] for r in runs]}")
    print(f"{'mark (s from process start)':36} {'median':>7} {'min':>7} {'max':>7}")
    for name in order:
        v = rows[name]
        print(f"{name:36} {statistics.median(v):7.3f} {min(v):7.3f} {max(v):7.3f}")


if __name__ == "__main__":
    main()
