"""Where the etcd tier's FRESH deploy spends its time (issue 12.1): a timeline per run.

    sudo .venv/bin/python bench/etcd_fresh_bench.py [--runs 5] [-i inventory/lab]

Run from the repository root, as root, under the shared lab lock. For each run: a new lab
(`lab down` + `lab up`, as `bench/ansible_bench.py` makes one before its fresh runs), our
persistent masters ended (`ansible_bench.no_masters`), then `deploy -i INVENTORY --json --phase
etcd` (the bench's command for the etcd tier) as a whole process, with wrappers around its own
functions in the child (the code run is the command's, unchanged): every SSH operation of the
transport (host, what, start, end), the cluster lock, etcd's observation, the phase, the wait
for a quorum. Prints each run's timeline (seconds from the process start) and, over the runs,
the median of each mark; the load average before each run.
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

REPO = Path(__file__).resolve().parent.parent


def _child(argv: list[str], out: str, started: float) -> None:
    """In the measured process: wrap, run the real `main`, write the events at exit."""
    import atexit
    import threading

    events: list[dict] = [{"what": "interpreter up", "t0": time.time(), "t1": time.time()}]

    def dump() -> None:
        now = time.time()
        events.append({"what": "last atexit handler", "t0": now, "t1": now})
        Path(out).write_text(json.dumps({"started": started, "events": events}))

    atexit.register(dump)
    sys.argv = ["nornir_k8sha", *argv]
    sys.path.insert(0, os.getcwd())
    from nornir_k8sha.cli import commands

    group = commands._group(commands.COMMANDS[argv[0]][0])
    now = time.time()
    events.append({"what": "command imported", "t0": now, "t1": now})

    def wrap(owner: object, name: str, label, host=None) -> None:  # noqa: ANN001
        real = getattr(owner, name)

        def wrapper(*args: object, **kwargs: object) -> object:
            t0 = time.time()
            try:
                return real(*args, **kwargs)
            finally:
                events.append({"what": label(args, kwargs) if callable(label) else label,
                               "host": host(args) if host else "",
                               "thread": threading.current_thread().name,
                               "t0": t0, "t1": time.time()})

        setattr(owner, name, wrapper)

    from nornir_k8sha import connection
    from nornir_k8sha.phases import etcd as etcd_phase
    from nornir_k8sha.tasks import etcd, etcd_scale, hostlock

    T = connection.SSHTransport
    on = lambda a: a[0].host  # noqa: E731
    wrap(T, "__init__", "open", host=lambda a: a[1])
    wrap(T, "run", lambda a, k: f"run {a[1][:70]}", host=on)
    wrap(T, "run_batch", lambda a, k: f"batch[{len(a[1])}] {' ; '.join(a[1])[:90]}", host=on)
    wrap(T, "put", lambda a, k: f"put {a[2]}", host=on)
    wrap(T, "get", lambda a, k: f"get {a[1]}", host=on)
    wrap(T, "stat", lambda a, k: f"stat {a[1]}", host=on)
    wrap(T, "rename", lambda a, k: f"rename {a[2]}", host=on)
    wrap(T, "remove", lambda a, k: f"remove {a[1]}", host=on)
    wrap(etcd_scale, "observe", "etcd observe (HTTP)")
    wrap(etcd, "wait_for_quorum", "wait_for_quorum (HTTP)")
    wrap(etcd_phase.EtcdPhase, "run", "phase etcd")
    for name in dir(hostlock):
        if name in ("acquire", "release", "take", "hold", "cluster_lock"):
            wrap(hostlock, name, f"hostlock.{name}")
    wrap(group, "run_stages", "run_stages")
    real_lock = group.one_operation
    import contextlib

    @contextlib.contextmanager
    def lock(*args: object, **kwargs: object):  # type: ignore[no-untyped-def]
        t0 = time.time()
        with real_lock(*args, **kwargs):
            events.append({"what": "lock taken", "t0": t0, "t1": time.time()})
            yield
            t1 = time.time()
        events.append({"what": "lock released", "t0": t1, "t1": time.time()})

    group.one_operation = lock  # type: ignore[attr-defined]
    try:
        commands.main()
    finally:
        now = time.time()
        events.append({"what": "main returned", "t0": now, "t1": now})


def run_once(argv: list[str], tree: Path = REPO) -> dict:
    """The command once, from checkout `tree` (its `nornir_k8sha` is the one imported)."""
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        out = f.name
    started = time.time()
    proc = subprocess.run([sys.executable, __file__, "--child", out, str(started), "--", *argv],
                          cwd=tree, capture_output=True, text=True)
    gone = time.time()
    data = json.loads(Path(out).read_text())
    os.unlink(out)
    data["gone"] = gone - started
    data["exit"] = proc.returncode
    try:
        doc = json.loads(proc.stdout)
        data["changed"] = doc.get("changed")
        data["resources"] = doc.get("resources")
    except ValueError:
        data["stdout"] = proc.stdout[-3000:] + proc.stderr[-3000:]
    return data


def show(data: dict) -> dict[str, float]:
    """Print one run's timeline; return its marks (seconds from the process start)."""
    t0 = data["started"]
    marks: dict[str, float] = {}
    for e in sorted(data["events"], key=lambda e: e["t0"]):
        a, b = e["t0"] - t0, e["t1"] - t0
        host = e.get("host", "")
        print(f"  {a:6.3f} {b:6.3f} {b - a:6.3f}  {host:6} {e['what']}")
        if not host:
            marks.setdefault(f"{e['what']} starts", a)
            marks.setdefault(f"{e['what']} ends", b)
    marks["process gone"] = data["gone"]
    print(f"  process gone {data['gone']:.3f} s, exit {data['exit']}, changed "
          f"{data.get('changed')}, resources {data.get('resources')}")
    if "stdout" in data:
        print(data["stdout"])
    return marks


#: etcd's log lines that say how the first election went
RAFT_WORDS = ("became", "elected", "campaign", "vote", "advance", "ready", "published",
              "peer", "starting etcd", "added member", "notif")


def journal(spec) -> None:  # noqa: ANN001
    """Each member's etcd log, its raft and start-up lines only (the lab's ssh_config)."""
    from nornir_k8sha import constants as C

    config = REPO / spec.state_dir / "ssh" / "ssh_config"
    if subprocess.run(["ip", "link", "show", "k8sha-lab0"], capture_output=True).returncode:
        print("  (no lab bridge: no journal)")
        return
    for h in spec.role(C.ROLE_ETCD):
        out = subprocess.run(["ssh", "-F", str(config), "-o", "ConnectTimeout=3", h.name,
                              "journalctl -u etcd -o short-precise --no-pager"],
                             capture_output=True, text=True, timeout=20).stdout
        for line in out.splitlines():
            if any(w in line for w in RAFT_WORDS):
                print(f"  [{h.name}] {line[:230]}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("-i", "--inventory", default="inventory/lab")
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    ap.add_argument("--no-fresh-lab", action="store_true",
                    help="time the command on the lab as it is (a no-op after a deploy)")
    ap.add_argument("--journal", action="store_true",
                    help="after each run, print etcd's raft lines from each member's journal")
    ap.add_argument("--trees", nargs="+", type=Path, default=[REPO],
                    help="checkouts to alternate (e.g. the code before a change exported with "
                         "`git archive`, its .k8sha a link to this one's); default: this one")
    ap.add_argument("argv", nargs="*")
    args = ap.parse_args()
    if args.child:
        _child(args.argv, args.child[0], float(args.child[1]))
        return
    sys.path.insert(0, str(REPO / "bench"))
    sys.path.insert(0, str(REPO / "bench" / "ansible"))
    import runner  # noqa: PLC0415  (bench/ansible/runner.py)
    from ansible_bench import no_masters  # noqa: PLC0415

    from nornir_k8sha.pki import ClusterPKI
    from nornir_k8sha.topology import load_cluster_spec

    spec = load_cluster_spec(Path(args.inventory))
    ClusterPKI(spec, REPO / spec.state_dir).ensure()
    argv = args.argv or ["deploy", "-i", args.inventory, "--json", "--phase", "etcd"]
    rows: dict[Path, dict[str, list[float]]] = {t: {} for t in args.trees}
    loads: dict[Path, list[float]] = {t: [] for t in args.trees}
    for n in range(args.runs):
        for tree in args.trees:
            if not args.no_fresh_lab:
                runner.fresh_lab(args.inventory)
                left = no_masters(spec)
            else:
                left = -1
            load = os.getloadavg()[0]
            loads[tree].append(load)
            data = run_once(argv, tree)
            print(f"run {n + 1} ({tree}): load {load:.2f}, masters before {left}")
            for k, v in show(data).items():
                rows[tree].setdefault(k, []).append(v)
            if args.journal:
                journal(spec)
    for tree in args.trees:
        print(f"\n{tree}: `{' '.join(argv)}`, {args.runs} runs; load at each start "
              f"{' '.join(f'{x:.1f}' for x in loads[tree])}")
        print(f"{'mark (s from process start)':40} {'median':>7} {'min':>7} {'max':>7}  each")
        for name in sorted(rows[tree], key=lambda k: statistics.median(rows[tree][k])):
            v = rows[tree][name]
            print(f"{name:40} {statistics.median(v):7.3f} {min(v):7.3f} {max(v):7.3f}  "
                  f"{' '.join(f'{x:.2f}' for x in v)}")


if __name__ == "__main__":
    main()
