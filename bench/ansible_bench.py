"""Ansible side by side with this tool, on the same lab hosts, in one run (issue 12.1).

    sudo .venv/bin/python bench/ansible_bench.py [--rounds 3] [--uml-timeout 240]
        [--strategies linear,free] [--tiers haproxy,etcd,workers,directors] [--generate-only]

Run from the repository root, as root (it builds labs), under the shared lab lock. What it does:

1. ansible-core into the bench's own venv (bench/ansible/runner.py; not a project dependency);
   the cluster PKI made locally (what `deploy --phase pki` does); `render -o TREE --json`; the
   playbooks generated from that tree (bench/ansible/playbook.py): haproxy, directors, etcd,
   workers' node preparation; inventory from the lab inventory, the lab's key and known_hosts.
2. For each Ansible strategy: a new lab (`lab down` + `lab up`), each tier's playbook once
   (fresh), then `--rounds` times again (no-op); the UML directors' play too, each run capped
   at `--uml-timeout` s (before their tap took merged segments, docs/lab.md, a director
   received ~30 KB/s and Ansible, which sends each module over stdin, did not finish a play).
3. A new lab, then this tool on the same tiers: `deploy --phase lb --limit <haproxy nodes>`,
   `deploy --phase etcd`, the workers' preparation step (bench/ansible/prepare_workers.py:
   `deploy --phase workers` would also join, which needs a control plane), and
   `deploy --phase lb --limit <directors>`: fresh once, then `--rounds` no-ops.
4. `lab down`; a table: seconds per tier, fresh and no-op (median), changed on the no-op runs,
   and the ratio (the faster Ansible strategy / this tool). Goals: no-op >= 10x, fresh >= 5x.

Both sides keep SSH masters across runs on one lab (Ansible: ControlPersist in its own control
dir, ended before the lab is; this tool: its persistent masters, which `lab down`/`lab up` end
via `sshcontrol.stop_masters`). Before each fresh run of ours the bench ends our masters to
every lab host (the previous tier's cluster lock leaves masters to the etcd members) and prints
how many still answered (masters_before, must be 0) and the run's handshakes (its report's).
Each run also prints the controller's CPU (the command, its children and the detached SSH
masters) and the lab hosts' CPU (their cgroups).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "ansible"))

import playbook as gen  # noqa: E402  (bench/ansible/playbook.py)
import runner  # noqa: E402  (bench/ansible/runner.py)

from nornir_k8sha import constants as C  # noqa: E402
from nornir_k8sha.inventory import open_nornir  # noqa: E402
from nornir_k8sha.pki import ClusterPKI  # noqa: E402
from nornir_k8sha.sshcontrol import control_dir, stop_masters  # noqa: E402
from nornir_k8sha.topology import ClusterSpec, load_cluster_spec  # noqa: E402

REPO = runner.REPO
TIERS = ("haproxy", "etcd", "workers")
GOALS = {"no-op": 10.0, "fresh": 5.0}
PREPARE = str(REPO / "bench" / "ansible" / "prepare_workers.py")


def lab_ssh_paths(inventory: Path) -> tuple[Path, Path]:
    """The key and known_hosts `deploy` connects with (the inventory's k8sha_ssh extras)."""
    nr = open_nornir(inventory)
    extras = nr.inventory.defaults.connection_options["k8sha_ssh"].extras or {}
    return (REPO / extras["key_file"]).resolve(), (REPO / extras["known_hosts"]).resolve()


def tier_hosts(spec: ClusterSpec, tier: str) -> list:
    """The hosts a tier's playbook (and our command for it) works on."""
    return spec.role({"haproxy": C.ROLE_HAPROXY, "directors": C.ROLE_LVS,
                      "etcd": C.ROLE_ETCD}.get(tier, C.ROLE_WORKERS))


def ours_command(spec: ClusterSpec, tier: str, inventory: Path) -> tuple[list[str], str | None]:
    """This tool's command for the same work as a tier's playbook."""
    names = ",".join(h.name for h in tier_hosts(spec, tier))
    if tier in ("haproxy", "directors"):
        return ["deploy", "-i", str(inventory), "--json", "--phase", "lb", "--limit", names], None
    if tier == "etcd":
        return ["deploy", "-i", str(inventory), "--json", "--phase", "etcd"], None
    return ["-i", str(inventory), "--json"], PREPARE


def machine() -> str:
    model = "?"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    return f"{os.cpu_count()} cores ({model}), load {os.getloadavg()[0]:.2f}"


def prepare(inventory: Path, work: Path, tiers: list[str]) -> tuple[ClusterSpec, dict[str, Path]]:
    spec = load_cluster_spec(inventory)
    state_dir = REPO / spec.state_dir
    ClusterPKI(spec, state_dir).ensure()
    tree = work / "tree"
    rendered = subprocess.run(
        [sys.executable, "-m", "nornir_k8sha", "render", "-i", str(inventory), "-o", str(tree),
         "--json"], cwd=REPO, capture_output=True, text=True)
    if rendered.returncode != 0:
        sys.exit(f"render failed:\n{rendered.stdout[-2000:]}{rendered.stderr[-2000:]}")
    doc = json.loads(rendered.stdout)
    key, known = lab_ssh_paths(inventory)
    books = gen.write_bench_dir(work / "ansible", spec, doc, tree, state_dir, key_file=key,
                                known_hosts=known, control_path_dir=work / "cp", tiers=tiers)
    return spec, books


#: What one Ansible module costs on a host before it does anything: a Python start and the
#: imports of an AnsiballZ payload (zip, json, tempfile, subprocess...), against a shell.
#: What pipelining does with each module: its AnsiballZ payload (~176 KB for ping) on stdin.
STDIN_PROBE = "176 KB on stdin (cat > /dev/null)"
PROBES = {
    "sh -c true": "sh -c true",
    "python3 -c pass": "python3 -c pass",
    "python3 + AnsiballZ-like imports": "python3 -c 'import json, zipfile, tempfile, subprocess, "
                                        "shutil, base64, locale, selectors, shlex, pwd, grp'",
    STDIN_PROBE: "cat > /dev/null",
}
#: The stdin of each probe (what Ansible sends a host per task; none for the others).
PROBE_STDIN = {STDIN_PROBE: b"\0" * 176 * 1024}


def probe_hosts(spec: ClusterSpec, key: Path, known: Path, rounds: int = 3) -> None:
    """Print the median wall time of each PROBES command over SSH (connection reused) on the
    first director and the first HAProxy node: what a task of Ansible's costs on each."""
    hosts = [spec.role(C.ROLE_LVS)[0], spec.role(C.ROLE_HAPROXY)[0]]
    control = Path(f"/tmp/k8sha-probe-{os.getpid()}")
    base = ["ssh", "-i", str(key), "-o", f"UserKnownHostsFile={known}", "-o",
            "StrictHostKeyChecking=yes", "-o", "BatchMode=yes", "-o", "ControlMaster=auto",
            "-o", f"ControlPath={control}-%h", "-o", "ControlPersist=60"]
    print(f"{'command on the host (median of ' + str(rounds) + ', SSH reused)':44}"
          + "".join(f"{h.name + ' s':>14}" for h in hosts))
    for label, cmd in PROBES.items():
        cells = []
        for h in hosts:
            subprocess.run([*base, f"root@{h.address}", "true"], capture_output=True,
                                  timeout=120)
            times = []
            for _ in range(rounds):
                start = time.monotonic()
                subprocess.run([*base, f"root@{h.address}", cmd], capture_output=True,
                               input=PROBE_STDIN.get(label, b""), timeout=300)
                times.append(time.monotonic() - start)
            cells.append(statistics.median(times))
        print(f"{label:44}" + "".join(f"{c:14.2f}" for c in cells), flush=True)
    for h in hosts:
        subprocess.run([*base, "-O", "exit", f"root@{h.address}"], capture_output=True,
                              timeout=10)


def reached(spec: ClusterSpec, tier: str) -> set[str]:
    """The hosts our command for a tier connects to: the tier's, and the etcd members where
    its cluster lock is taken (`deploy`; the workers' preparation script takes no lock)."""
    hosts = {h.name for h in tier_hosts(spec, tier)}
    if tier != "workers":
        hosts |= {h.name for h in spec.role(C.ROLE_ETCD)}
    return hosts


def shakes(run: runner.Run, hosts: int | None = None) -> str:
    """ " handshakes=H/N" of one of our runs (its report's, which counts the cluster lock's
    connections to the etcd members too; N: the hosts the command reaches, `reached`), ""
    for Ansible's."""
    if run.handshakes is None:
        return ""
    return f" handshakes={run.handshakes}" + (f"/{hosts}" if hosts is not None else "")


def no_masters(spec: ClusterSpec) -> int:
    """End our persistent masters to every lab host, so that a fresh run of ours opens its
    connections as Ansible's fresh run of the tier does (a tier's `deploy` takes the cluster
    lock on the etcd members, and the masters it leaves would carry the next tier's first
    commands); returns how many control sockets still answer afterwards (must be 0)."""
    addresses = [str(h.address) for h in spec.hosts]
    stop_masters(addresses)
    directory = control_dir()
    left = [s for s in (directory.iterdir() if directory else ())
            if s.is_socket() and s.name.split("~")[0] in addresses]
    return len(left)


def cpu(run: runner.Run) -> str:
    """The controller's CPU (the command, its children and the SSH masters) and the hosts'."""
    return (f" cpu={run.cpu_s + run.master_cpu_s:.2f}s (masters {run.master_cpu_s:.2f}s)"
            f" hosts_cpu={run.hosts_cpu_s:.2f}s")


def fmt(run: runner.Run | None, cap: float | None = None) -> str:
    if run is None:
        return "-"
    if run.timed_out:
        return f"> {cap:.0f} s" if cap else "timeout"
    return f"{run.seconds:.2f}" + ("" if run.ok else " FAILED")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-i", "--inventory", type=Path, default=Path("inventory/lab"))
    ap.add_argument("--rounds", type=int, default=3, help="no-op runs per tier and side")
    ap.add_argument("--strategies", default="linear,free",
                    help="Ansible strategies; '' runs this tool's side alone")
    ap.add_argument("--uml-timeout", type=float, default=240.0,
                    help="cap on Ansible's directors play, seconds")
    ap.add_argument("--tiers", default="haproxy,etcd,workers,directors",
                    help="which tiers (the directors' run can take --uml-timeout: measure them "
                         "in a lab-lock acquisition of their own with --tiers directors)")
    ap.add_argument("--work", type=Path, default=REPO / ".k8sha" / "bench-ansible")
    ap.add_argument("--json-out", type=Path, default=None)
    ap.add_argument("--generate-only", action="store_true",
                    help="write the playbooks and syntax-check them; no lab")
    args = ap.parse_args()
    if args.generate_only:
        playbook_bin, version = runner.ensure_ansible()
        _, books = prepare(args.inventory, args.work, [*TIERS, "directors"])
        return runner.syntax_check(playbook_bin, books)
    if os.geteuid() != 0:
        print("ansible_bench: needs root (it builds labs)", file=sys.stderr)
        return 2
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    playbook_bin, version = runner.ensure_ansible()
    strategies = [s for s in args.strategies.split(",") if s]
    tiers = [t for t in args.tiers.split(",") if t]
    unknown = set(tiers) - {*TIERS, "directors"}
    if unknown:
        print(f"ansible_bench: unknown tier(s) {', '.join(sorted(unknown))}", file=sys.stderr)
        return 2
    spec, books = prepare(args.inventory, args.work, tiers)
    logs = args.work / "logs"
    # (side, tier) -> {"fresh": Run, "no-op": [Run]}
    res: dict[tuple[str, str], dict[str, object]] = {}
    print(f"{version}; {machine()}; {started}", flush=True)

    for n, strategy in enumerate(strategies):
        side = f"ansible {strategy}"
        runner.fresh_lab(args.inventory)
        if n == 0 and "directors" in tiers:
            probe_hosts(spec, *lab_ssh_paths(args.inventory))
        control = args.work / f"cp-{strategy}-{int(time.time())}"
        for tier in tiers:
            cap = args.uml_timeout if tier == "directors" else 600.0
            fresh = runner.run_playbook(playbook_bin, books[tier], strategy=strategy,
                                        timeout=cap, log_dir=logs, label=f"{strategy}-{tier}-0",
                                        control_dir=control)
            print(f"{side:16} {tier:10} fresh  {fmt(fresh, cap)} changed={fresh.changed}"
                  f"{cpu(fresh)}", flush=True)
            res[(side, tier)] = {"fresh": fresh, "no-op": []}
            if tier == "directors" and fresh.timed_out:
                continue
            for r in range(args.rounds):
                again = runner.run_playbook(playbook_bin, books[tier], strategy=strategy,
                                            timeout=cap, log_dir=logs,
                                            label=f"{strategy}-{tier}-{r + 1}",
                                            control_dir=control)
                res[(side, tier)]["no-op"].append(again)  # type: ignore[union-attr]
                print(f"{side:16} {tier:10} no-op  {fmt(again, cap)} changed={again.changed}"
                      f"{cpu(again)}", flush=True)
        if gen.COMBINED in books:
            res[(side, gen.COMBINED)] = {"fresh": None, "no-op": []}
            for r in range(args.rounds):
                again = runner.run_playbook(playbook_bin, books[gen.COMBINED], strategy=strategy,
                                            timeout=600, log_dir=logs,
                                            label=f"{strategy}-combined-{r + 1}",
                                            control_dir=control)
                res[(side, gen.COMBINED)]["no-op"].append(again)  # type: ignore[union-attr]
                print(f"{side:16} {gen.COMBINED:10} no-op  {fmt(again)} "
                      f"changed={again.changed}{cpu(again)}", flush=True)
        runner.close_control_masters(control)

    runner.fresh_lab(args.inventory)
    for tier in tiers:
        cmd, script = ours_command(spec, tier, args.inventory)
        left = no_masters(spec)
        fresh = runner.run_cli(cmd, script=script)
        print(f"{'nornir-k8sha':16} {tier:10} fresh  {fmt(fresh)} changed={fresh.changed}"
              f"{shakes(fresh, len(reached(spec, tier)))} masters_before={left}{cpu(fresh)}",
              flush=True)
        res[("nornir-k8sha", tier)] = {"fresh": fresh, "no-op": []}
        for _ in range(args.rounds):
            again = runner.run_cli(cmd, script=script)
            res[("nornir-k8sha", tier)]["no-op"].append(again)  # type: ignore[union-attr]
            print(f"{'nornir-k8sha':16} {tier:10} no-op  {fmt(again)} changed={again.changed}"
                  f"{shakes(again)}{cpu(again)}", flush=True)
    if gen.COMBINED in books:
        names = ",".join(h.name for h in (*spec.role(C.ROLE_HAPROXY), *spec.role(C.ROLE_ETCD)))
        cmd = ["deploy", "-i", str(args.inventory), "--json", "--phase", "lb", "--phase", "etcd",
               "--limit", names]
        res[("nornir-k8sha", gen.COMBINED)] = {"fresh": None, "no-op": []}
        runner.run_cli(cmd)  # warm-up: the masters to these hosts, as Ansible's are by now
        for _ in range(args.rounds):
            again = runner.run_cli(cmd)
            res[("nornir-k8sha", gen.COMBINED)]["no-op"].append(again)  # type: ignore[union-attr]
            print(f"{'nornir-k8sha':16} {gen.COMBINED:10} no-op  {fmt(again)} "
                  f"changed={again.changed}{shakes(again)}{cpu(again)}", flush=True)
        tiers = [*tiers, gen.COMBINED]
    runner.run_cli(["lab", "down", "-i", str(args.inventory)], timeout=300)
    print_table(res, strategies, tiers, args.uml_timeout, version, started)
    if args.json_out:
        args.json_out.write_text(json.dumps(
            {f"{s}|{t}": {"fresh": v["fresh"] and vars(v["fresh"]),
                          "no-op": [vars(x) for x in v["no-op"]]}
             for (s, t), v in res.items()}, indent=1))
    return 0


def _median(runs: list[runner.Run]) -> runner.Run | None:
    if not runs:
        return None
    secs = statistics.median(r.seconds for r in runs)
    return runner.Run(secs, all(r.ok for r in runs), max(r.changed for r in runs),
                      timed_out=any(r.timed_out for r in runs))


def _runs(res: dict, sides: list[str], tier: str, kind: str) -> list[runner.Run]:
    out = []
    for side in sides:
        entry = res.get((side, tier))
        if entry is not None:
            out.extend([entry["fresh"]] if kind == "fresh" else entry["no-op"])
    return [r for r in out if r is not None]


def print_table(res: dict, strategies: list[str], tiers: list[str], cap: float,  # noqa: ANN001
                version: str, started: str) -> None:
    sides = [f"ansible {s}" for s in strategies]
    head = ["tier", "run", *sides, "nornir-k8sha", "ratio", "goal"]
    rows = []
    for tier in tiers:
        for kind in ("fresh", "no-op") if tier != gen.COMBINED else ("no-op",):
            cells, best = [], None
            for side in [*sides, "nornir-k8sha"]:
                entry = res.get((side, tier))
                run = None if entry is None else (
                    entry["fresh"] if kind == "fresh" else _median(entry["no-op"]))
                cell = fmt(run, cap if tier == "directors" else None)
                if run is not None and kind == "no-op":
                    cell += f" ({run.changed} ch)"
                if side == "nornir-k8sha" and entry is not None:
                    hs = [r.handshakes for r in ([entry["fresh"]] if kind == "fresh"
                                                 else entry["no-op"]) if r is not None]
                    if hs and None not in hs:
                        cell += f" [{max(hs)} hs]"
                cells.append(cell)
                if side != "nornir-k8sha" and run is not None:
                    secs = cap if run.timed_out else run.seconds
                    best = secs if best is None else min(best, secs)
            ours = res.get(("nornir-k8sha", tier))
            ours_run = None if ours is None else (
                ours["fresh"] if kind == "fresh" else _median(ours["no-op"]))
            ratio = "-"
            failed = any(not r.ok and not r.timed_out for r in _runs(res, sides, tier, kind))
            if failed or (ours_run is not None and not ours_run.ok):
                ratio = "n/a (a run failed)"
            elif best is not None and ours_run is not None and ours_run.seconds > 0:
                timed = any((res.get((s, tier)) or {}).get("fresh") is not None
                            and res[(s, tier)]["fresh"].timed_out for s in sides)
                ratio = f"{'> ' if timed and kind == 'fresh' else ''}{best / ours_run.seconds:.1f}x"
            rows.append([tier, kind, *cells, ratio, f">= {GOALS[kind]:.0f}x"])
    widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(len(head))]
    print(f"\nAnsible side by side — {version}; {machine()}; {started}")
    for row in [head, *rows]:
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)))
    print("fresh: one run on a new lab; no-op: median of the re-runs, (N ch) = most tasks/hosts "
          "reported changed in one re-run; [N hs] = most SSH handshakes of ours in one run "
          "(the others rode a persistent master); ratio: the faster Ansible strategy / "
          "nornir-k8sha")


if __name__ == "__main__":
    sys.exit(main())
