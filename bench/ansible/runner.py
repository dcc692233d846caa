"""Running both sides of the side-by-side benchmarks and timing them; shared by
bench/ansible_bench.py and bench/workers_bench.py.

- `ensure_ansible()`: ansible-core in the bench's own venv (never a project dependency), made
  on first use with pip from the registry;
- `run_playbook()`: one `ansible-playbook` run, wall-timed, capped by a timeout (its process
  group is ended by its own id), its PLAY RECAP parsed;
- `close_control_masters()`: ends the ControlPersist masters of a lab about to be torn down
  (a master outliving its host would hang the next run on a new lab);
- `run_cli()`: one `python -m nornir_k8sha ...` (or a bench script) run, wall-timed.
"""

from __future__ import annotations

import json
import os
import re
import resource
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
#: Outside the repository so no work tree carries it; K8SHA_ANSIBLE_VENV overrides.
DEFAULT_VENV = Path("/var/cache/nornir-k8sha/bench-ansible-venv")
ANSIBLE_REQUIREMENT = "ansible-core"
RECAP_RE = re.compile(r"^(\S+)\s*:\s*ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+"
                      r"failed=(\d+)", re.M)


@dataclass
class Run:
    """One timed run of either side."""

    seconds: float
    ok: bool
    changed: int = 0
    failed: list[str] = field(default_factory=list)
    timed_out: bool = False
    log: str = ""
    #: CPU seconds of the command and its children (the controller's own work)
    cpu_s: float = 0.0
    #: share of this machine's CPUs busy during the run (the lab's hosts run on them too)
    machine_busy: float = 0.0
    #: CPU seconds of the persistent SSH masters to lab hosts (either side's: they are
    #: detached, so `cpu_s` misses them) — the controller's share of every command they carry
    master_cpu_s: float = 0.0
    #: CPU seconds the lab's hosts used (their cgroups' cpu.stat), all of them
    hosts_cpu_s: float = 0.0
    #: this tool only (its report's `resources`): SSH connections held open at once and how
    #: many connections needed a handshake (the others rode a persistent master); None for
    #: Ansible
    peak_open: int | None = None
    handshakes: int | None = None


class Meter:
    """Wall clock, children's CPU time, the SSH masters' and the lab hosts' CPU time and the
    machine's busy share over one run."""

    def __init__(self) -> None:
        self.masters = _masters_cpu()
        self.hosts = _hosts_cpu()
        self.wall = time.monotonic()
        self.cpu = _children_cpu()
        self.stat = _cpu_stat()

    def stop(self, run: Run) -> Run:
        run.seconds = time.monotonic() - self.wall
        run.cpu_s = _children_cpu() - self.cpu
        busy0, total0 = self.stat
        busy1, total1 = _cpu_stat()
        run.machine_busy = (busy1 - busy0) / max(total1 - total0, 1)
        masters = _masters_cpu()
        run.master_cpu_s = sum(cpu - self.masters.get(pid, 0.0) for pid, cpu in masters.items())
        hosts = _hosts_cpu()
        run.hosts_cpu_s = sum(cpu - self.hosts.get(h, 0.0) for h, cpu in hosts.items())
        return run


#: the lab's hosts' cgroups (v2); each host's cpu.stat counts every process of that host
HOST_CGROUPS = Path("/sys/fs/cgroup/unified")
LAB_ADDRESS_PREFIX = "10.88."
_TICK = os.sysconf("SC_CLK_TCK")


def _hosts_cpu() -> dict[str, float]:
    """CPU seconds of each lab host so far (usage_usec of its cgroup), by cgroup path."""
    out = {}
    for stat in HOST_CGROUPS.glob("k8sha-*/*/cpu.stat"):
        try:
            out[str(stat.parent)] = int(stat.read_text().split()[1]) / 1e6
        except (OSError, ValueError, IndexError):
            continue
    return out


def _is_lab_master(args: list[bytes]) -> bool:
    """Ours keep their argv (`ssh ... -o ControlPersist=60 -f -N -- 10.88.0.11`); Ansible's
    rename themselves `ssh: CONTROL_PATH [mux]`, their control paths under this repository."""
    if args and args[0].startswith(b"ssh: ") and args[0].rstrip().endswith(b"[mux]"):
        return str(REPO).encode() in args[0]
    return any(b"ControlPersist" in a for a in args) and any(
        a.startswith(LAB_ADDRESS_PREFIX.encode()) for a in args)


def _masters_cpu() -> dict[int, float]:
    """CPU seconds of each live persistent SSH master to a lab host (ours and Ansible's), by
    PID. Masters detach from whoever started them, so no rusage of ours ever counts them."""
    out = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if (proc / "comm").read_text().strip() != "ssh":
                continue
            if not _is_lab_master((proc / "cmdline").read_bytes().split(b"\0")):
                continue
            fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
            out[int(proc.name)] = (int(fields[11]) + int(fields[12])) / _TICK
        except (OSError, ValueError, IndexError):
            continue
    return out


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _cpu_stat() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs, from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return sum(fields) - idle, sum(fields)


def venv_path() -> Path:
    return Path(os.environ.get("K8SHA_ANSIBLE_VENV", DEFAULT_VENV))


def ensure_ansible(log=print) -> tuple[Path, str]:  # noqa: ANN001
    """ansible-playbook of the bench's venv and its version; installs ansible-core first if
    the venv has none (pip picks the newest release that supports this Python)."""
    venv = venv_path()
    playbook = venv / "bin" / "ansible-playbook"
    if not playbook.exists():
        log(f"installing {ANSIBLE_REQUIREMENT} into {venv} (the bench's own venv)")
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
        subprocess.run([str(venv / "bin" / "pip"), "install", "-q", ANSIBLE_REQUIREMENT],
                       check=True)
    out = subprocess.run([str(playbook), "--version"], capture_output=True, text=True,
                         check=True).stdout
    version = out.splitlines()[0].strip() if out else "?"
    return playbook, version


def parse_recap(text: str) -> tuple[int, list[str], bool]:
    """(changed tasks over all hosts, hosts failed or unreachable, any recap at all)."""
    changed, failed, seen = 0, [], False
    for host, _ok, ch, unreachable, fail in RECAP_RE.findall(text):
        seen = True
        changed += int(ch)
        if int(unreachable) or int(fail):
            failed.append(host)
    return changed, failed, seen


def run_playbook(playbook: Path, book: Path, *, strategy: str, timeout: float,
                 log_dir: Path, label: str, control_dir: Path | None = None) -> Run:
    """`ansible-playbook book` from the book's dir (its ansible.cfg), with `strategy`;
    `control_dir`: the ControlPersist sockets of this lab (one dir per lab, so a master left
    from an earlier lab on the same addresses is never reused)."""
    env = {**os.environ, "ANSIBLE_CONFIG": str(book.parent / "ansible.cfg"),
           "ANSIBLE_STRATEGY": strategy, "ANSIBLE_NOCOLOR": "1",
           "ANSIBLE_LOCALHOST_WARNING": "0"}
    if control_dir is not None:
        control_dir.mkdir(parents=True, exist_ok=True)
        env["ANSIBLE_SSH_CONTROL_PATH_DIR"] = str(control_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    log = log_dir / f"{label}.log"
    meter = Meter()
    with log.open("w") as out:
        proc = subprocess.Popen([str(playbook), str(book)], cwd=book.parent, env=env,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        timed_out = False
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            _end_group(proc)
    run = meter.stop(Run(0.0, False, timed_out=timed_out, log=str(log)))
    run.changed, run.failed, seen = parse_recap(log.read_text())
    run.ok = not timed_out and proc.returncode == 0 and seen and not run.failed
    return run


def syntax_check(playbook: Path, books: dict[str, Path]) -> int:
    """`ansible-playbook --syntax-check` of each book; prints where they are; exit code."""
    worst = 0
    for name, book in books.items():
        env = {**os.environ, "ANSIBLE_CONFIG": str(book.parent / "ansible.cfg")}
        proc = subprocess.run([str(playbook), "--syntax-check", str(book)], cwd=book.parent,
                              env=env, capture_output=True, text=True)
        print(f"{name:10} {book}: {'ok' if proc.returncode == 0 else proc.stderr.strip()}")
        worst = max(worst, proc.returncode)
    return worst


def _end_group(proc: subprocess.Popen) -> None:
    """End the run we started and its workers (its own process group), TERM then KILL."""
    for sig, grace in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=grace)
            return
        except subprocess.TimeoutExpired:
            continue


def close_control_masters(control_dir: Path) -> int:
    """End every ControlPersist master whose socket is in `control_dir`: its PID from
    `ssh -O check`, then SIGTERM to that PID (they run in a session of their own, so ending
    ansible-playbook's group leaves them). Returns how many were ended."""
    closed = 0
    if not control_dir.is_dir():
        return 0
    for sock in control_dir.iterdir():
        try:
            proc = subprocess.run(["ssh", "-o", f"ControlPath={sock}", "-O", "check",
                                   "k8sha-bench"], capture_output=True, text=True, timeout=5)
        except subprocess.TimeoutExpired:
            continue
        match = re.search(r"pid=(\d+)", proc.stderr + proc.stdout)
        if match:
            try:
                os.kill(int(match.group(1)), signal.SIGTERM)
                closed += 1
            except ProcessLookupError:
                pass
        sock.unlink(missing_ok=True)
    return closed


def run_cli(args: list[str], *, timeout: float = 600.0, script: str | None = None) -> Run:
    """`python -m nornir_k8sha ARGS` (or `python SCRIPT ARGS`) from the repo root; with
    `--json` in ARGS the report's changed count and failed hosts are read."""
    cmd = [sys.executable, script] if script else [sys.executable, "-m", "nornir_k8sha"]
    meter = Meter()
    try:
        proc = subprocess.run([*cmd, *args], cwd=REPO, capture_output=True, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        return meter.stop(Run(0.0, False, timed_out=True, log=str(exc.stderr)[-2000:]))
    run = meter.stop(Run(0.0, proc.returncode == 0, log=(proc.stderr or proc.stdout)[-2000:]))
    if "--json" in args:
        try:
            doc = json.loads(proc.stdout)
            run.changed, run.failed = int(doc.get("changed", 0)), list(doc.get("failed_hosts", []))
            used = doc.get("resources") or {}
            if "handshakes" in used:
                run.handshakes = int(used["handshakes"])
                run.peak_open = int(used.get("peak_open_connections", 0))
        except ValueError:
            pass
    return run


def fresh_lab(inventory: Path | str, log=print) -> float:  # noqa: ANN001
    """`lab down` then `lab up -i inventory`: a new lab from the cached rootfs; seconds of up."""
    down = run_cli(["lab", "down", "-i", str(inventory)], timeout=300)
    if not down.ok:
        log(f"lab down: {down.log}")
    up = run_cli(["lab", "up", "-i", str(inventory)], timeout=600)
    if not up.ok:
        raise RuntimeError(f"lab up failed:\n{up.log}")
    return up.seconds
