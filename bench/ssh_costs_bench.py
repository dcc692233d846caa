"""What one SSH operation costs on the lab's hosts: the source of the simulation's latency model.

    .venv/bin/python bench/ssh_costs_bench.py [-i inventory/lab] [--hosts etcd1,lvs1] [--rounds 30]

For each host: a new connection (no master waiting: OpenSSH's handshake and authentication,
the master's start), then, riding that master, `--rounds` times each: an exec session running
`true`, a batch of 5 commands in one session, an SFTP get of a small file and an SFTP put.
Prints the median wall time of each and the controller's CPU per operation (this process and
its children). `nornir_k8sha.testing.LatencyModel` takes its defaults from this table. Needs
the lab up (`lab up`); starts and ends its own masters. Not a test.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from nornir.core.inventory import ConnectionOptions  # noqa: E402

from nornir_k8sha.inventory import open_nornir  # noqa: E402
from nornir_k8sha.sshcontrol import stop_masters  # noqa: E402
from nornir_k8sha.tasks import host as H  # noqa: E402
from nornir_k8sha.transport import CONNECTION_NAME  # noqa: E402

PROBE_FILE = "/tmp/k8sha-ssh-costs"


def _cpu() -> float:
    me, kids = (resource.getrusage(w) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def _measure(op: Callable[[], object], rounds: int) -> tuple[float, float]:
    """(median wall ms, mean controller CPU ms) of `op`."""
    walls = []
    cpu0 = _cpu()
    for _ in range(rounds):
        t0 = time.perf_counter()
        op()
        walls.append(time.perf_counter() - t0)
    return statistics.median(walls) * 1000, (_cpu() - cpu0) / rounds * 1000


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-i", "--inventory", default=str(REPO / "inventory" / "lab"))
    ap.add_argument("--hosts", default="etcd1,worker1,lvs1")
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--kex-algorithms", default=None,
                    help="the connection option kex_algorithms for this run (default: the "
                    "inventory's)")
    args = ap.parse_args()
    nr = open_nornir(args.inventory)
    print(f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, load average "
          f"{os.getloadavg()[0]:.2f}, {args.rounds} rounds, key exchange "
          f"{args.kex_algorithms or 'the inventory default'}; wall = median ms, cpu = mean ms "
          "of controller CPU")
    print(f"{'host':10} {'connect':>16} {'exec':>16} {'batch of 5':>16} {'sftp get':>16} "
          f"{'sftp put':>16}")
    for name in args.hosts.split(","):
        host = nr.inventory.hosts[name]
        if args.kex_algorithms:
            params = host.get_connection_parameters(CONNECTION_NAME)
            extras = {**(params.extras or {}), "kex_algorithms": args.kex_algorithms}
            host.connection_options[CONNECTION_NAME] = ConnectionOptions(
                hostname=params.hostname, port=params.port, username=params.username,
                password=params.password, platform=params.platform, extras=extras)
        stop_masters([host.hostname])  # a new connection: no master waiting
        cpu0, t0 = _cpu(), time.perf_counter()
        conn = H.open_connection(host, nr.config)
        conn.run("true")  # the first session opens with the connection: part of its cost
        connect = ((time.perf_counter() - t0) * 1000, (_cpu() - cpu0) * 1000)
        conn.put(b"x" * 512, PROBE_FILE)
        conn.get(PROBE_FILE)  # the SFTP session opens once per connection
        rows = [connect,
                _measure(lambda c=conn: c.run("true"), args.rounds),
                _measure(lambda c=conn: c.run_batch(["true"] * 5), args.rounds),
                _measure(lambda c=conn: c.get(PROBE_FILE), args.rounds),
                _measure(lambda c=conn: c.put(b"y" * 512, PROBE_FILE), args.rounds)]
        conn.run(f"rm -f {PROBE_FILE}")
        cells = [f"{w:6.1f} ({c:5.1f} cpu)" for w, c in rows]
        print(f"{name:10} " + " ".join(f"{c:>16}" for c in cells))
    for host in nr.inventory.hosts.values():
        for conn_name in list(host.connections):
            host.close_connection(conn_name)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
