"""The deploy engine, the report and `check` against a simulated fleet of N hosts (issue 12.5).

    python bench/sim_bench.py [--hosts 1000] [--connections 100] [--no-latency]

Generates an N-host inventory (bench/gen_inventory.py; the registry is Debian's
docker-registry, as in the lab), puts a `FakeFleet(debian=True, latency=LatencyModel())` in
place of SSH (SimulatedDebian hosts: dpkg/apt, systemd, sysctl, files), puts each switch behind
a loopback SSH server as a scripted switch of its platform (tests/fakeswitch.py, reached by
netmiko's real drivers), and answers every HTTP call (etcd, the API through the VIP,
HAProxy's stats, the registry) with one `httpx.MockTransport` through the deploy's own seam
(`DeployContext.http`, `run_checks(transport=)`): a healthy, Ready cluster; the VIP's raw
TCP probe is replaced as the unit tests replace it. Nothing leaves this process (a connect
beyond loopback raises). Then, timed: a fresh deploy (every real phase), a no-op re-run,
and `check`.

The latency model spends what each call costs on the lab's hosts (`LatencyModel()`, measured
by bench/ssh_costs_bench.py: sessions riding OpenSSH masters): it sleeps the host's latency
(connect 0.14 s; an exec session 2.3 ms, +1.9 ms per further command of a batch; an SFTP
operation 0.6 ms) and burns the controller's CPU for the call: in the calling thread, holding
the GIL, 0.55 ms an exec session (+0.3 ms per further command) and 0.3 ms an SFTP
operation; outside the GIL, as the `ssh` process does, 83 ms a handshake (OpenSSH's default
post-quantum key exchange; 13.6 ms with `--kex classical`, curve25519-sha256).
`--model paramiko-era` uses the model of 2026-12-03
instead (connect 0.2 s, an exec channel 0.12 s, an SFTP operation 0.05 s, no CPU). The
engine's own cost is what the process spends on CPU (`time.process_time`), per host and in
total; `--no-latency` runs the same with no sleeps (wall = engine). Memory is the process's
peak RSS. Not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import socket
import sys
import tempfile
import threading
import time
from datetime import date
from pathlib import Path
from typing import Any

import httpx
import yaml
from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO / "bench"), str(REPO)]

from gen_inventory import write as write_inventory  # noqa: E402
from nornir.core.inventory import ConnectionOptions  # noqa: E402

from nornir_k8sha import constants as C  # noqa: E402
from nornir_k8sha.budget import peak_rss_mb  # noqa: E402
from nornir_k8sha.checkresult import CheckResult  # noqa: E402
from nornir_k8sha.checks import run_checks  # noqa: E402
from nornir_k8sha.clients import parse_haproxy_csv  # noqa: E402, F401 (the format answered)
from nornir_k8sha.deploy import DeployContext, run_stages  # noqa: E402
from nornir_k8sha.inventory import open_nornir  # noqa: E402
from nornir_k8sha.ociimage import probe_image  # noqa: E402
from nornir_k8sha.phases import default_stages  # noqa: E402
from nornir_k8sha.report import RunReport, critical_path  # noqa: E402
from nornir_k8sha.tasks import apiserver, keepalived  # noqa: E402
from nornir_k8sha.tasks.harbor import UNTRUSTED_MARK  # noqa: E402
from nornir_k8sha.tasks.kubeadm import KUBERNETES_KEYRING  # noqa: E402
from nornir_k8sha.testing import (  # noqa: E402
    CLASSICAL_KEX_CONNECT_CPU,
    PARAMIKO_ERA,
    FakeFleet,
    FakeHost,
    FakeRegistry,
    LatencyModel,
    SimulatedDebian,
    install_fake,
)
from nornir_k8sha.topology import ClusterSpec, load_cluster_spec  # noqa: E402
from tests.fakeswitch import FakeSwitch as ScriptedSwitch  # noqa: E402
from tests.sshserver import SSHTestServer  # noqa: E402
from tests.test_phases_join import FakeApiserver, SimulatedKubeadm  # noqa: E402


class AnyUnitDebian(SimulatedDebian):
    """SimulatedDebian where every unit a deploy names exists (installed by its package)."""

    def __call__(self, host: FakeHost, command: str, stdin: bytes | None) -> Any:
        if command.startswith("systemctl "):
            for word in command.split()[2:]:
                if not word.startswith("-"):
                    self.unit(word)
        return super().__call__(host, command, stdin)


class SimFleet(FakeFleet):
    def host(self, name: str) -> FakeHost:
        with self._lock:
            if name not in self.hosts:
                self.hosts[name] = FakeHost(name, handler=AnyUnitDebian(), latency=self.latency,
                                            gauge=self.gauge)
            return self.hosts[name]


class SimulatedCluster:
    """What the hosts answer beyond a plain Debian: kubeadm, the VIP on the first director,
    BGP sessions, containerd pulls; and every HTTP API the deploy and `check` ask."""

    def __init__(self, spec: ClusterSpec, fleet: FakeFleet) -> None:
        self.spec = spec
        self.fleet = fleet
        self.kubeadm = SimulatedKubeadm()
        self.api = FakeApiserver(fleet, spec)
        self.registry = FakeRegistry()
        self.lock = threading.Lock()
        nodes = [h.name for h in spec.kubernetes_nodes()]
        self.kubeadm.install(fleet, nodes)
        for name in nodes:  # `rm -f` is part of the command's own round trip, not another one
            fleet.host(name).on(r"^rm -f ", lambda h, c, s: h.files.pop(c.split()[-1], None)
                                and "")
        version = spec.settings.kubernetes.version
        vip, port = str(spec.vip), spec.settings.apiserver_port
        haproxies = [h.address for h in spec.role(C.ROLE_HAPROXY)]
        routes = "".join(f"  -> {a}:{port} Route 1 0 0\n" for a in haproxies)
        for name in nodes:
            host = fleet.host(name)
            host.on(r"^kubeadm version", lambda h, c, s, v=version: (
                f"v{v}\n" if "kubeadm" in h.debian.packages else (127, "", "not found\n")))
            host.on(r"gpg --dearmor", lambda h, c, s: h.write(KUBERNETES_KEYRING, b"k") or "")
            digest = probe_image(spec.name).digest
            host.on(r"image pull --hosts-dir /etc", stdout=f"unpacking linux/amd64 {digest}...\n"
                    f"\n{UNTRUSTED_MARK} 1\n")
        for h in spec.hosts:
            if not h.has_role(C.ROLE_SWITCHES):
                fleet.host(h.name).on(r"^date \+%s", lambda *_: f"{time.time():.9f}\n")
        for i, director in enumerate(spec.role(C.ROLE_LVS)):
            held = f"2: eth0    inet {vip}/32 scope global eth0\n" if i == 0 else ""
            fleet.host(director.name).on(
                r"^ip -o -4 addr", stdout=f"1: lo    inet 127.0.0.1/8 scope host lo\n{held}"
                f"TCP  {vip}:{port} wlc\n{routes if i == 0 else ''}")
            peers = {str(s.address): {"state": "Established", "pfxSnt": int(i == 0),
                                      "pfxRcd": 0} for s in spec.director_peers(director)}
            fleet.host(director.name).on(r"show bgp ipv4 unicast summary json", stdout=json.dumps(
                {"ipv4Unicast": {"peers": peers}}))
        self.transport = httpx.MockTransport(self.answer)

    def answer(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        port = request.url.port or {"https": 443, "http": 80}[request.url.scheme]
        if port == self.spec.settings.etcd.client_port:
            return self._etcd(request)
        if port == self.spec.settings.haproxy.stats_port:
            masters = self.spec.role(C.ROLE_MASTERS)
            rows = "".join(f"apiserver,{m.name},UP\n" for m in masters)
            return httpx.Response(200, text="# pxname,svname,status\n" + rows)
        if port == self.spec.settings.registry.port and path.startswith("/v2"):
            return self.registry._answer(request)
        if path in ("/readyz", "/api/v1/nodes"):
            return self.api(request)
        if path in apiserver.API_PATHS:
            return httpx.Response(200, json={"gitVersion": "v" + self.spec.settings.kubernetes
                                             .version} if path == "/version" else None,
                                  text=None if path == "/version" else "ok")
        if "/leases/" in path:
            holder = self.spec.first_master.name
            return httpx.Response(200, json={"spec": {"holderIdentity": holder}})
        return httpx.Response(404)

    def _etcd(self, request: httpx.Request) -> httpx.Response:
        members = self.spec.role(C.ROLE_ETCD)
        me = next((i for i, m in enumerate(members) if str(m.address) == request.url.host), 0)
        if request.url.path == "/health":
            return httpx.Response(200, json={"health": "true"})
        if request.url.path.endswith("/status"):
            return httpx.Response(200, json={"header": {"member_id": str(100 + me)},
                                             "leader": "100", "dbSize": 20480, "raftTerm": 2})
        port = self.spec.settings.etcd.client_port
        return httpx.Response(200, json={"members": [  # what the deploy's etcd_scale.observe reads
            {"ID": str(100 + i), "name": m.name, "peerURLs": [f"https://{m.address}:2380"],
             "clientURLs": [f"https://{m.address}:{port}"]} for i, m in enumerate(members)]})


def refuse_network() -> None:
    """Any connect beyond loopback fails loudly (as tests/conftest.py does for unit tests): the
    simulation must be answered by its fakes, never by a real host."""
    real = socket.socket.connect

    def connect(self: socket.socket, address: Any) -> None:
        host = str(address[0] if isinstance(address, tuple) else address)
        if self.family in (socket.AF_INET, socket.AF_INET6) and not host.startswith(
                ("127.", "::1", "localhost")):
            raise RuntimeError(f"the simulation tried to connect to {address}")
        real(self, address)

    socket.socket.connect = connect  # type: ignore[method-assign]


def install_switches(nr: Any, spec: ClusterSpec, work: Path) -> list[SSHTestServer]:
    """Every switch a scripted switch of its platform (tests/fakeswitch.py) behind an SSH
    server on loopback (tests/sshserver.py), reached by netmiko's real drivers as the unit
    tests reach them: its checkpoint, commit and BGP state as the platform's task reads them.
    The latency model is for the Linux hosts; a switch costs what a local netmiko session
    costs. The servers are the caller's to stop."""
    peers = {str(d.address): spec.settings.bgp.lvs_asn for d in spec.role(C.ROLE_LVS)}
    servers = []
    for switch in spec.role(C.ROLE_SWITCHES):
        host = nr.inventory.hosts[switch.name]
        base = (f"set system host-name {switch.name}\n" if host.platform == "juniper_junos"
                else f"hostname {switch.name}\n")
        device = ScriptedSwitch(host.platform or "cisco_ios", hostname=switch.name,
                                running_text=base, peers=dict(peers), vip=str(spec.vip))
        server = SSHTestServer(work / f"ssh-{switch.name}").start()
        server.shell = device.serve
        servers.append(server)
        host.hostname, host.port = "127.0.0.1", server.port
        host.username, host.password = "netops", server.password
        host.connection_options["netmiko"] = ConnectionOptions(
            extras={"use_keys": False, "allow_agent": False, "conn_timeout": 10})
    return servers


def timed_run(label: str, action: Any, fleet: FakeFleet) -> tuple[str, float, float, Any, float]:
    """(label, wall s, CPU s, report, seconds the fleet slept for the latency model)."""
    slept = sum(h.slept for h in fleet.hosts.values())
    wall, cpu = time.perf_counter(), time.process_time()
    result = action()
    return (label, time.perf_counter() - wall, time.process_time() - cpu, result,
            sum(h.slept for h in fleet.hosts.values()) - slept)


def run(hosts: int, connections: int, latency: LatencyModel | None, work: Path
        ) -> tuple[list[tuple[str, float, float, Any, float]], SimFleet, ClusterSpec]:
    inventory = write_inventory(work / "inventory", hosts)
    defaults = yaml.safe_load((inventory / "defaults.yaml").read_text())
    defaults["data"]["registry"]["engine"] = "distribution"
    defaults["data"]["ssh"] = {"max_connections": connections}
    (inventory / "defaults.yaml").write_text(yaml.safe_dump(defaults, sort_keys=False))
    spec = load_cluster_spec(inventory)
    state = work / "state"
    nr = open_nornir(inventory)
    fleet = SimFleet(latency=latency)
    install_fake(nr, fleet)
    servers = install_switches(nr, spec, work)
    cluster = SimulatedCluster(spec, fleet)
    # the VIP's TCP probe is a raw socket with no transport seam: answered here as the unit
    # tests answer it (tests/test_checks.py), from the simulated cluster
    keepalived.check_vip_tcp = lambda spec: CheckResult(  # type: ignore[assignment]
        f"VIP {spec.vip}:{spec.settings.apiserver_port}", "ok", "TCP connect ok (simulated)")

    def deploy() -> RunReport:
        ctx = DeployContext(spec, nr, RunReport("deploy", spec.name), state_dir=state,
                            http=cluster.transport)
        return run_stages(ctx, default_stages())

    try:
        rows = [timed_run("fresh deploy", deploy, fleet)]
        trips_fresh = fleet.round_trips()
        rows.append(timed_run("no-op re-run", deploy, fleet))
        trips_noop = {h: n - trips_fresh.get(h, 0) for h, n in fleet.round_trips().items()}
        rows.append(timed_run("check", lambda: run_checks(spec, nr, state_dir=state,
                                                          transport=cluster.transport), fleet))
    finally:
        nr.close_connections()
        for server in servers:
            server.stop()
    fleet.trips_fresh, fleet.trips_noop = trips_fresh, trips_noop  # type: ignore[attr-defined]
    return rows, fleet, spec


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, default=1000)
    parser.add_argument("--connections", type=int, default=100)
    parser.add_argument("--no-latency", action="store_true", help="no sleeps: engine only")
    parser.add_argument("--model", choices=("lab", "paramiko-era"), default="lab",
                        help="the latency model: the lab's measured costs (default) or the "
                        "model of 2026-12-03, before persistent masters")
    parser.add_argument("--kex", choices=("default", "classical"), default="default",
                        help="the handshake's CPU: OpenSSH's default (post-quantum) key exchange "
                        "or curve25519-sha256 (the connection option kex_algorithms)")
    args = parser.parse_args()
    latency = (None if args.no_latency else
               PARAMIKO_ERA if args.model == "paramiko-era" else
               LatencyModel(cpu_connect=CLASSICAL_KEX_CONNECT_CPU) if args.kex == "classical"
               else LatencyModel())
    refuse_network()
    work = Path(tempfile.mkdtemp(prefix="k8sha-sim-"))
    cwd = Path.cwd()
    try:
        os.chdir(work)  # the state dir and anything relative lands in the scratch dir
        rows, fleet, spec = run(args.hosts, args.connections, latency, work)
    finally:
        os.chdir(cwd)
        shutil.rmtree(work, ignore_errors=True)
    console = Console(width=140)
    n = len(spec.hosts)
    title = (f"simulated fleet: {n} hosts, ssh.max_connections {args.connections}, latency "
             f"{'off' if latency is None else latency} — {platform.node()}, {os.cpu_count()} "
             f"CPU, Python {platform.python_version()}, {date.today()}")
    table = Table(title=title)
    for col in ("run", "wall s", "latency floor s", "engine CPU s", "CPU ms/host", "changed",
                "failed", "peak conns", "open", "round trips/host"):
        table.add_column(col, justify="left" if col == "run" else "right")
    trips = {"fresh deploy": fleet.trips_fresh, "no-op re-run": fleet.trips_noop}
    for label, wall, cpu, report, slept in rows:
        c = report.counts()
        per_host = trips.get(label)
        table.add_row(label, f"{wall:.2f}", f"{slept / args.connections:.2f}", f"{cpu:.2f}",
                      f"{1000 * cpu / n:.1f}",
                      str(c["changed"]), str(c["failed"]),
                      str(int(report.resources.get("peak_connections", 0))),
                      str(int(report.resources.get("peak_open_connections", 0))),
                      f"{sum(per_host.values()) / max(1, len(per_host)):.1f}"
                      if per_host else "")
    console.print(table)
    for label, _, _, report, _ in rows:
        if label != "check":
            path = ", ".join(f"{s.phase} {s.duration:.1f}s ({s.slowest_host})"
                             for s in critical_path(report))
            console.print(f"{label} critical path: {path}")
        failed = [(p.name, h, o.message) for p in report.phases for h, o in p.hosts.items()
                  if o.status == "failed"]
        for phase, host, message in failed[:5]:
            console.print(f"  [red]{label}: {phase} {host}[/]: {message[:150]}")
    console.print(f"peak RSS of this process: {peak_rss_mb():.0f} MB. Latency floor: the seconds "
                  "slept for the latency model over all hosts / ssh.max_connections (the wall "
                  "time with perfect packing and no serial step)")


if __name__ == "__main__":
    main()
