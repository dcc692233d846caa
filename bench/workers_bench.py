"""Scale on real hosts (issue 12.4): the lab with N extra workers, the workers' node
preparation by this tool and by the Ansible playbook, and the lab's memory; prints the curves.

    sudo .venv/bin/python bench/workers_bench.py --workers 10,30,60 [--rounds 2] [--ours-only]
    sudo .venv/bin/python bench/workers_bench.py --show          # the curves measured so far

For each N: a copy of inventory/lab with N extra workers (`wx01`.. at 10.88.0.101..; the lab
builds one nspawn container per inventory host, so nothing in nornir_k8sha/lab changes); a new
lab (`lab down` + `lab up -i` the copy); its memory (PSS and RSS of every host's processes,
and how much more memory the machine uses than before `lab up`) once settled, and again once
the workers are prepared (containerd running on each); this tool's preparation of all N+2 workers
(bench/ansible/prepare_workers.py: the first step of the `workers` phase) fresh, then
`--rounds` no-ops; a new lab; the generated workers playbook (bench/ansible/playbook.py) fresh
and no-op. Each N is saved to `--results` (JSON) as it finishes, so the sizes can be measured
in separate lab-lock acquisitions; the table shows every N saved. Goals: from 10 to 60 workers
our time grows < 1.5x; the 60-worker lab's memory < 4 GB.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from ipaddress import IPv4Address
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent / "ansible"))

import playbook as gen  # noqa: E402  (bench/ansible/playbook.py)
import runner  # noqa: E402  (bench/ansible/runner.py)

from nornir_k8sha import constants as C  # noqa: E402
from nornir_k8sha.lab import procs  # noqa: E402
from nornir_k8sha.lab.lab import Lab  # noqa: E402
from nornir_k8sha.pki import ClusterPKI  # noqa: E402
from nornir_k8sha.topology import load_cluster_spec  # noqa: E402

REPO = runner.REPO
BASE_INVENTORY = REPO / "inventory" / "lab"
FIRST_EXTRA = IPv4Address("10.88.0.101")
GROWTH_GOAL = 1.5
MEMORY_GOAL_MIB = 4096.0
PREPARE = str(REPO / "bench" / "ansible" / "prepare_workers.py")


def write_inventory(out: Path, extra: int) -> Path:
    """inventory/lab plus `extra` workers, spread over the lab's three machines."""
    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(BASE_INVENTORY, out)
    hosts = yaml.safe_load((out / "hosts.yaml").read_text())
    taken = {str(h["hostname"]) for h in hosts.values()}
    for i in range(extra):
        address = str(FIRST_EXTRA + i)
        if address in taken:
            raise SystemExit(f"{address} is already a host of {BASE_INVENTORY}")
        hosts[f"wx{i + 1:02d}"] = {"hostname": address, "groups": [C.ROLE_WORKERS],
                                   "data": {"physical_host": f"pm{i % 3 + 1}"}}
    (out / "hosts.yaml").write_text("# inventory/lab + extra workers (bench/workers_bench.py)\n"
                                    + yaml.safe_dump(hosts, sort_keys=False))
    return out


def _rss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def machine_used_mib() -> float:
    """MemTotal - MemAvailable of this machine (what every process and cache holds)."""
    info = {line.split(":")[0]: int(line.split()[1])
            for line in Path("/proc/meminfo").read_text().splitlines()}
    return (info["MemTotal"] - info["MemAvailable"]) / 1024


def lab_memory(inventory: Path) -> tuple[float, float]:
    """(PSS of every host's processes, the sum of their RSS), MiB. PSS shares the pages the
    hosts have in common (one rootfs) among them; the RSS sum counts each shared page once per
    process: an upper bound. (The machine's memory cgroup controller is v1 and the lab places
    its hosts in the v2/name=systemd hierarchies only, so there is no cgroup memory figure.)"""
    lab = Lab.from_inventory(inventory, base=REPO)
    pss = sum(s.pss_kib for s in lab.status()) / 1024
    rss = sum(_rss_kib(pid) for host in lab.spec.hosts
              for pid in procs.cgroup_pids(procs.host_cgroups(lab.spec.name, host.name)))
    return pss, rss / 1024


def _kept(run: runner.Run) -> dict:
    """A run as saved: its output only when it failed."""
    return {**vars(run), "log": "" if run.ok else run.log}


def measure(n: int, work: Path, rounds: int, strategy: str, *, ansible: bool = True) -> dict:
    inventory = write_inventory(work / f"inventory-{n}", n)
    spec = load_cluster_spec(inventory)
    workers = spec.role(C.ROLE_WORKERS)
    state_dir = REPO / spec.state_dir
    ClusterPKI(spec, state_dir).ensure()
    tree = work / f"tree-{n}"
    rendered = subprocess.run(
        [sys.executable, "-m", "nornir_k8sha", "render", "-i", str(inventory), "-o", str(tree),
         "--json"], cwd=REPO, capture_output=True, text=True, check=True)
    nr_extras = yaml.safe_load((inventory / "defaults.yaml").read_text())[
        "connection_options"]["k8sha_ssh"]["extras"]
    books = gen.write_bench_dir(work / f"ansible-{n}", spec, json.loads(rendered.stdout), tree,
                                state_dir, key_file=REPO / nr_extras["key_file"],
                                known_hosts=REPO / nr_extras["known_hosts"],
                                control_path_dir=work / "cp", tiers=["workers"])
    playbook_bin, version = runner.ensure_ansible()
    row: dict = {"extra": n, "workers": len(workers), "hosts": len(spec.hosts),
                 "ansible": version, "strategy": strategy,
                 "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                 "load": os.getloadavg()[0]}

    runner.run_cli(["lab", "down", "-i", str(inventory)], timeout=600)
    before = machine_used_mib()
    row["lab_up_s"] = runner.fresh_lab(inventory)
    time.sleep(5)  # let the guests settle before reading memory
    row["pss_mib"], row["rss_mib"] = lab_memory(inventory)
    row["machine_delta_mib"] = machine_used_mib() - before
    args = ["-i", str(inventory), "--json"]
    runs = [runner.run_cli(args, script=PREPARE) for _ in range(rounds + 1)]
    row["ours_fresh"], row["ours_noop"] = _kept(runs[0]), [_kept(r) for r in runs[1:]]
    row["pss_prepared_mib"], row["rss_prepared_mib"] = lab_memory(inventory)
    row["machine_prepared_delta_mib"] = machine_used_mib() - before
    print(f"N={n}: lab up {row['lab_up_s']:.1f} s, {row['pss_mib']:.0f} MiB PSS; ours fresh "
          f"{runs[0].seconds:.2f} s ({runs[0].handshakes} handshakes for {len(workers)} "
          f"workers), no-op {[round(r.seconds, 2) for r in runs[1:]]} "
          f"({[r.handshakes for r in runs[1:]]} handshakes)", flush=True)

    if not ansible:
        runner.run_cli(["lab", "down", "-i", str(inventory)], timeout=600)
        return row
    runner.fresh_lab(inventory)
    control = work / f"cp-{n}-{int(time.time())}"
    aruns = [runner.run_playbook(playbook_bin, books["workers"], strategy=strategy,
                                 timeout=900, log_dir=work / "logs", label=f"workers-{n}-{i}",
                                 control_dir=control)
             for i in range(rounds + 1)]
    runner.close_control_masters(control)
    row["ansible_fresh"], row["ansible_noop"] = _kept(aruns[0]), [_kept(r) for r in aruns[1:]]
    print(f"N={n}: ansible fresh {aruns[0].seconds:.2f} s, no-op "
          f"{[round(r.seconds, 2) for r in aruns[1:]]}", flush=True)
    runner.run_cli(["lab", "down", "-i", str(inventory)], timeout=600)
    return row


def _noop(row: dict, side: str) -> float:
    return statistics.median(r["seconds"] for r in row[f"{side}_noop"])


def _cell(run: dict | float) -> str:
    if isinstance(run, float):
        return f"{run:.2f}"
    return f"{run['seconds']:.2f}" + ("" if run["ok"] else " FAILED")


def _cpu(run: dict) -> str:
    """The controller's CPU seconds (the command, its children and the detached SSH masters),
    the lab hosts' CPU seconds and the machine's busy share during a run."""
    ours = run.get("cpu_s", 0) + run.get("master_cpu_s", 0)
    return (f"{ours:.1f}, {run.get('hosts_cpu_s', 0):.1f}, "
            f"{100 * run.get('machine_busy', 0):.0f}%")


def _shakes(row: dict) -> str:
    """Our handshakes: fresh / the most in one no-op ("-" when the report had none)."""
    fresh = row["ours_fresh"].get("handshakes")
    noop = [r.get("handshakes") for r in row["ours_noop"]]
    if fresh is None or None in noop:
        return "-"
    return f"{fresh} / {max(noop)}"


def show(results: dict[str, dict]) -> None:
    rows = [results[k] for k in sorted(results, key=int) if "rss_mib" in results[k]]
    if not rows:
        print("no results yet")
        return
    head = ["extra", "workers", "lab hosts", "lab up s", "PSS MiB", "RSS sum MiB",
            "machine +MiB", "prepared: PSS", "RSS sum", "machine +", "ours fresh s",
            "(CPU s, hosts s, busy)", "ours no-op s", "(CPU s, hosts s, busy)", "handshakes",
            "ansible fresh s", "(CPU s, hosts s, busy)", "ansible no-op s",
            "ratio fresh", "ratio no-op"]
    table = [head]
    for r in rows:
        if "ansible_fresh" not in r:  # measured with --ours-only
            ansible = ["-"] * 5
        else:
            ansible = [_cell(r["ansible_fresh"]), _cpu(r["ansible_fresh"]),
                       _cell(_noop(r, "ansible")),
                       f"{r['ansible_fresh']['seconds'] / r['ours_fresh']['seconds']:.1f}x",
                       f"{_noop(r, 'ansible') / _noop(r, 'ours'):.1f}x"]
        table.append([str(r["extra"]), str(r["workers"]), str(r["hosts"]), f"{r['lab_up_s']:.1f}",
                      f"{r['pss_mib']:.0f}", f"{r['rss_mib']:.0f}",
                      f"{r['machine_delta_mib']:.0f}", f"{r['pss_prepared_mib']:.0f}",
                      f"{r['rss_prepared_mib']:.0f}", f"{r['machine_prepared_delta_mib']:.0f}",
                      _cell(r["ours_fresh"]), _cpu(r["ours_fresh"]), _cell(_noop(r, "ours")),
                      _cpu(r["ours_noop"][-1]), _shakes(r), *ansible])
    widths = [max(len(t[i]) for t in table) for i in range(len(head))]
    print(f"\nworkers' node preparation at scale — {rows[0]['ansible']} ({rows[0]['strategy']}); "
          f"{os.cpu_count()} cores")
    for t in table:
        print("  ".join(c.ljust(w) for c, w in zip(t, widths, strict=True)))
    small, big = rows[0], rows[-1]
    if len(rows) > 1:
        for side in ("ours", "ansible"):
            if f"{side}_fresh" not in small or f"{side}_fresh" not in big:
                continue
            fresh = big[f"{side}_fresh"]["seconds"] / small[f"{side}_fresh"]["seconds"]
            noop = _noop(big, side) / _noop(small, side)
            print(f"{side}: {small['extra']} -> {big['extra']} extra workers: fresh x{fresh:.2f}, "
                  f"no-op x{noop:.2f}" + (f" (goal < {GROWTH_GOAL}x)" if side == "ours" else ""))
    print(f"memory of the {big['extra']}-extra-worker lab: {big['pss_mib']:.0f} MiB PSS booted, "
          f"{big['pss_prepared_mib']:.0f} MiB with containerd running on every worker "
          f"(goal < {MEMORY_GOAL_MIB:.0f} MiB)")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", default="10,30,60", help="extra workers per lab, comma-separated")
    ap.add_argument("--rounds", type=int, default=2, help="no-op runs per side")
    ap.add_argument("--strategy", default="linear", help="Ansible strategy")
    ap.add_argument("--work", type=Path, default=REPO / ".k8sha" / "bench-workers")
    ap.add_argument("--results", type=Path, default=None,
                    help="JSON of the sizes measured (default: WORK/results.json)")
    ap.add_argument("--show", action="store_true", help="print the saved curves only")
    ap.add_argument("--ours-only", action="store_true",
                    help="leave the Ansible side out (half the lab time at 60 workers)")
    args = ap.parse_args()
    results_file = args.results or args.work / "results.json"
    results = json.loads(results_file.read_text()) if results_file.is_file() else {}
    if not args.show:
        if os.geteuid() != 0:
            print("workers_bench: needs root (it builds labs)", file=sys.stderr)
            return 2
        args.work.mkdir(parents=True, exist_ok=True)
        for n in [int(x) for x in args.workers.split(",") if x]:
            results[str(n)] = measure(n, args.work, args.rounds, args.strategy,
                                      ansible=not args.ours_only)
            results_file.write_text(json.dumps(results, indent=1))
    show(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
