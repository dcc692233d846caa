"""A no-op re-run costs as few round trips as it can (issue 12.3): a node's preparation asks
its probes (swap, kubeadm version, the containerd and kubelet units, the live sysctls) and loads
its modules in one exec channel, and trusts what it read while nothing has changed; the network
phase reads the directors' BGP while the hosts are configured, and again only when something
changed or a session was not up — counted on the fake fleet, never timed. Behaviour stays the
same: a drifted host is still put right, a session down is still waited for.

A fresh node costs few round trips too: commands of one step share an exec channel (the lists'
refresh, the install, the hold and the unit's state; a start and its is-active; a join and the
removal of its config), and nothing is read twice (the live sysctls, the units, /etc/hosts,
kubelet.conf) — while a failing step still names its command and leaves no token behind."""

from __future__ import annotations

import os
import shlex
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from nornir.core import Nornir

from nornir_k8sha import constants as C
from nornir_k8sha.checkresult import CheckResult
from nornir_k8sha.deploy import DeployContext, LocalPhase, NornirPhase, run_stages
from nornir_k8sha.exceptions import CommandFailed
from nornir_k8sha.inventory import open_nornir
from nornir_k8sha.phases.control_plane import wait_until_joinable
from nornir_k8sha.phases.etcd import EtcdPhase
from nornir_k8sha.phases.lb import LoadBalancers
from nornir_k8sha.phases.network import Network
from nornir_k8sha.pki import ClusterPKI
from nornir_k8sha.render import files_for_component
from nornir_k8sha.report import HostOutcome, RunReport
from nornir_k8sha.tasks import frr
from nornir_k8sha.tasks import kubeadm as K
from nornir_k8sha.tasks.harbor import HOSTS_MARK, trust_registry
from nornir_k8sha.testing import FakeFleet, FakeHost, FakeUnit, install_fake
from nornir_k8sha.topology import ClusterSpec, load_cluster_spec
from nornir_k8sha.transport import CommandTimeout

from .conftest import LAB_INVENTORY

NODE = "worker1"


@pytest.fixture
def spec() -> ClusterSpec:
    return load_cluster_spec(LAB_INVENTORY)


@pytest.fixture
def node(spec: ClusterSpec, tmp_path: Path) -> tuple[Nornir, FakeHost]:
    """worker1 as a fresh Debian host whose kubeadm answers once its package is in."""
    ClusterPKI(spec, tmp_path).ensure()
    nr = open_nornir(LAB_INVENTORY).filter(name=NODE)
    host = install_fake(nr, FakeFleet(debian=True)).host(NODE)
    for unit in ("containerd", "kubelet"):
        host.debian.units[unit] = FakeUnit()
    version = spec.settings.kubernetes.version
    host.on(r"^kubeadm version", lambda h, c, s: f"v{version}\n"
            if "kubeadm" in h.debian.packages else (127, "", "kubeadm: not found\n"))
    host.on(r"gpg --dearmor", lambda h, c, s: h.write(K.KUBERNETES_KEYRING, b"key") or "")
    return nr, host


def prepare(nr: Nornir, spec: ClusterSpec) -> bool:
    result = nr.run(task=K.prepare_node, spec=spec)[NODE]
    assert not result.failed, result[0].exception
    return bool(result[0].changed)


def test_a_prepared_node_costs_one_exec_channel_and_its_file_reads(
        node: tuple[Nornir, FakeHost], spec: ClusterSpec) -> None:
    nr, host = node
    assert prepare(nr, spec)
    before, commands = host.round_trips, len(host.commands())
    assert not prepare(nr, spec)
    files = 2 + len(files_for_component(spec, spec.host(NODE), "containerd"))  # + modules, sysctl
    # a get and a stat per managed file; one batch for everything the node is asked
    assert host.round_trips - before == 2 * files + 1
    again = host.commands()[commands:]
    assert not any(c.startswith(("systemctl start", "systemctl restart", "apt-get"))
                   or "systemctl enable" in c for c in again)
    assert sum(c.startswith("systemctl show") for c in again) == 2  # inside the probe batch
    assert sum(c.startswith("sysctl -n") for c in again) == 3
    unit = host.debian.units["containerd"]
    assert unit.active and unit.starts == 1 and unit.restarts == 0


def test_drift_is_still_put_right_after_the_batched_probes(
        node: tuple[Nornir, FakeHost], spec: ClusterSpec) -> None:
    nr, host = node
    prepare(nr, spec)
    host.debian.units["kubelet"].enabled = False  # someone disabled it: nothing else changed
    host.debian.sysctls["net.ipv4.ip_forward"] = "0"  # and turned forwarding off at runtime
    assert prepare(nr, spec)
    assert host.debian.units["kubelet"].enabled
    assert host.debian.sysctls["net.ipv4.ip_forward"] == "1"
    config = next(f.path for f in files_for_component(spec, spec.host(NODE), "containerd")
                  if f.path.endswith("config.toml"))
    host.write(config, "# edited by hand\n")
    host.debian.units["containerd"].active = False  # and it died
    assert prepare(nr, spec)
    unit = host.debian.units["containerd"]
    assert unit.active and unit.starts == 2
    assert C.KUBERNETES_MODULES in host.files


# --- the network phase: the directors' BGP is read while the hosts are configured -------------

ESTABLISHED = ('{"ipv4Unicast":{"peers":{"10.88.0.71":{"state":"Established","pfxSnt":1,'
               '"pfxRcd":0},"10.88.0.72":{"state":"Established","pfxSnt":1,"pfxRcd":0}}}}')


def _network(spec: ClusterSpec, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
             configured: str, summary: str = ESTABLISHED,
             switch_views: list[list[CheckResult]] | None = None, settle: float = 0.0,
             ) -> tuple[list[HostOutcome], dict[str, list[bool]]]:
    """Run the network phase with every host's configure answering `configured` (ok or
    changed). Returns the outcomes and, per director, for each vtysh asked: whether the
    configure was still running then. `switch_views`: what the switches' own check says, one
    list of rows per look (the last one repeats); none: every switch settled."""
    nr = open_nornir(LAB_INVENTORY)
    fleet = install_fake(nr, FakeFleet())
    configuring = threading.Event()
    asked: dict[str, list[bool]] = {"lvs1": [], "lvs2": []}

    def vtysh(name: str):  # noqa: ANN202
        def reply(host: FakeHost, command: str, stdin: bytes | None) -> str:
            asked[name].append(configuring.is_set())
            return summary
        return reply

    for name in asked:
        fleet.host(name).on(frr.SHOW_SUMMARY, vtysh(name))

    def configure(self, ctx: DeployContext, hosts: list[str]) -> list[HostOutcome]:  # noqa: ANN001
        configuring.set()
        deadline = time.monotonic() + 5
        while not all(asked.values()) and time.monotonic() < deadline:
            time.sleep(0.01)  # a configure that lasts until the directors were asked (or 5 s)
        configuring.clear()
        return [HostOutcome(h, configured) for h in hosts]  # type: ignore[arg-type]

    views = list(switch_views or [[]])

    def switches_say(cx: object) -> list[CheckResult]:
        return views.pop(0) if len(views) > 1 else views[0]

    monkeypatch.setattr(NornirPhase, "run", configure)
    monkeypatch.setattr("nornir_k8sha.phases.network.BGP_SETTLE_TIMEOUT", settle)
    monkeypatch.setattr("nornir_k8sha.phases.network.switch_sessions", switches_say)
    ctx = DeployContext(spec, nr, RunReport("deploy", spec.name), state_dir=tmp_path)
    phase = Network()
    return phase.run(ctx, phase.hosts(ctx)), asked


def test_a_no_op_network_phase_reads_bgp_once_while_configuring(
        spec: ClusterSpec, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    outcomes, asked = _network(spec, tmp_path, monkeypatch, "ok")
    assert asked == {"lvs1": [True], "lvs2": [True]}  # during the configure, not after it
    assert all(o.status == "ok" for o in outcomes)


def test_after_a_change_the_network_phase_reads_bgp_again(
        spec: ClusterSpec, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    outcomes, asked = _network(spec, tmp_path, monkeypatch, "changed")
    assert asked == {"lvs1": [True, False], "lvs2": [True, False]}
    assert all(o.status == "changed" for o in outcomes)


def test_after_a_change_the_switches_route_to_the_vip_is_waited_for(
        spec: ClusterSpec, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The directors' sessions are up, but a switch has not installed the VIP /32 yet (the
    route comes a moment after the session): the phase looks again instead of leaving it to
    the post-checks; a switch that never gets it fails, naming what it lacks."""
    late = CheckResult("switch1", "failed", "VIP 10.88.0.100/32 not received")
    outcomes, _ = _network(spec, tmp_path, monkeypatch, "changed", switch_views=[[late], []],
                           settle=5.0)
    assert all(o.status == "changed" for o in outcomes)
    outcomes, _ = _network(spec, tmp_path, monkeypatch, "changed", switch_views=[[late]])
    failed = {o.host: o.message for o in outcomes if o.status == "failed"}
    assert list(failed) == ["switch1"] and "not received" in failed["switch1"]


def test_a_session_down_is_still_waited_for_and_fails_the_director(
        spec: ClusterSpec, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    down = ESTABLISHED.replace('"Established","pfxSnt":1,"pfxRcd":0}}', '"Active","pfxSnt":0,'
                               '"pfxRcd":0}}')
    outcomes, asked = _network(spec, tmp_path, monkeypatch, "ok", summary=down)
    assert asked == {"lvs1": [True, False], "lvs2": [True, False]}  # looked again after
    failed = {o.host: o.message for o in outcomes if o.status == "failed"}
    assert set(failed) == {"lvs1", "lvs2"}
    assert "switch2 (Active)" in failed["lvs1"]


# --- the engine: a phase's `prepare` runs beside the earlier stages ---------------------------


class _Step(LocalPhase):
    def __init__(self, name: str, local: Any) -> None:
        self.name, self.title, self._local = name, name, local

    def local(self, ctx: DeployContext) -> HostOutcome:
        return self._local(ctx)


def test_a_phase_prepares_while_earlier_stages_run_and_runs_after_it_is_ready(
        spec: ClusterSpec, tmp_path: Path) -> None:
    preparing, prepared = threading.Event(), threading.Event()

    def first(ctx: DeployContext) -> HostOutcome:
        assert preparing.wait(5), "the later phase's prepare did not start during stage 1"
        return HostOutcome("local", "ok")

    def second(ctx: DeployContext) -> HostOutcome:
        return HostOutcome("local", "ok" if prepared.is_set() else "failed")

    def prepare(ctx: DeployContext) -> None:
        preparing.set()
        time.sleep(0.2)  # still opening when stage 1 is done
        prepared.set()

    later = _Step("second", second)
    later.prepare = prepare  # type: ignore[attr-defined]
    ctx = DeployContext(spec, open_nornir(LAB_INVENTORY), RunReport("deploy", spec.name),
                        state_dir=tmp_path)
    report = run_stages(ctx, [[_Step("first", first)], [later]])
    assert [p.status for p in report.phases] == ["ok", "ok"]


def test_a_prepare_that_breaks_leaves_the_phase_to_run_and_report(
        spec: ClusterSpec, tmp_path: Path) -> None:
    def broken(ctx: DeployContext) -> None:
        raise ConnectionError("switch1 unreachable")

    phase = _Step("network", lambda ctx: HostOutcome("local", "ok"))
    phase.prepare = broken  # type: ignore[attr-defined]
    ctx = DeployContext(spec, open_nornir(LAB_INVENTORY), RunReport("deploy", spec.name),
                        state_dir=tmp_path)
    assert run_stages(ctx, [[phase]]).phases[0].status == "ok"


# --- the SLB tier and etcd: one exec channel for the packages, units and module load ----------


def _component_fleet(spec: ClusterSpec) -> FakeFleet:
    fleet = FakeFleet(debian=True)
    for h in spec.hosts:
        for unit in ("haproxy", "keepalived", C.REALSERVER_SERVICE, "etcd",
                     C.ETCD_BACKUP_TIMER_UNIT):
            fleet.host(h.name).debian.units[unit] = FakeUnit()
    return fleet


def _deploy(spec: ClusterSpec, fleet: FakeFleet, phase: Any, state_dir: Path) -> RunReport:
    nr = open_nornir(LAB_INVENTORY)
    install_fake(nr, fleet)
    healthy = httpx.MockTransport(lambda request: httpx.Response(200, json={"health": "true"}))
    ctx = DeployContext(spec, nr, RunReport("deploy", spec.name), state_dir=state_dir,
                        http=healthy)  # etcd's quorum wait
    return run_stages(ctx, [[phase]])


@pytest.mark.parametrize(("phase", "host", "component"), [
    (LoadBalancers(), "lvs1", "keepalived"), (LoadBalancers(), "haproxy1", "haproxy"),
    (EtcdPhase(), "etcd1", "etcd")])
def test_a_configured_component_costs_one_exec_channel_and_its_file_reads(
        spec: ClusterSpec, tmp_path: Path, phase: Any, host: str, component: str) -> None:
    ClusterPKI(spec, tmp_path).ensure()
    fleet = _component_fleet(spec)
    assert _deploy(spec, fleet, phase, tmp_path).exit_code == 0
    fake = fleet.host(host)
    before, commands = fake.round_trips, len(fake.commands())
    report = _deploy(spec, fleet, phase, tmp_path)
    assert report.changed == 0
    files = len([c for c in fake.calls[len(fake.calls) - (fake.round_trips - before):]
                 if c.op in ("get", "stat")])
    assert files and fake.round_trips - before == files + 1  # + ONE batch of probes
    again = fake.commands()[commands:]
    assert sum(c.startswith("dpkg-query") for c in again) == 1
    assert not any(c.startswith(("systemctl start", "systemctl reload", "systemctl restart",
                                 "apt-get")) for c in again)


def test_a_stopped_keepalived_is_still_started_after_the_batched_probe(
        spec: ClusterSpec, tmp_path: Path) -> None:
    ClusterPKI(spec, tmp_path).ensure()
    fleet = _component_fleet(spec)
    _deploy(spec, fleet, LoadBalancers(), tmp_path)
    unit = fleet.host("lvs1").debian.units["keepalived"]
    unit.active = False  # it died; nothing else changed
    report = _deploy(spec, fleet, LoadBalancers(), tmp_path)
    assert report.phase("lb").hosts["lvs1"].status == "changed"
    assert unit.active and unit.starts == 2


# --- a join waits until every HAProxy forwards, not only the one the VIP answered through ------

_STATS = "# pxname,svname,status\napiserver,master1,{}\napiserver,master2,DOWN\n"


def test_a_join_waits_for_every_haproxy_to_have_an_apiserver_up(
        spec: ClusterSpec, tmp_path: Path) -> None:
    h1, h2 = (str(h.address) for h in spec.role("haproxy"))
    asked = {h1: 0, h2: 0}

    def answer(request: httpx.Request) -> httpx.Response:
        host = request.url.host
        if request.url.path == "/readyz":
            return httpx.Response(200, text="ok")  # the VIP answers (through haproxy1)
        asked[host] += 1
        up = host == h1 or asked[host] > 2  # haproxy2 counts its rise checks a moment later
        return httpx.Response(200, text=_STATS.format("UP" if up else "DOWN"))

    ClusterPKI(spec, tmp_path).ensure()
    ctx = DeployContext(spec, open_nornir(LAB_INVENTORY), RunReport("deploy", spec.name),
                        state_dir=tmp_path, http=httpx.MockTransport(answer))
    wait_until_joinable(ctx)
    assert asked[h2] == 3 and asked[h1] == 3


def test_a_haproxy_whose_stats_cannot_be_read_is_not_waited_for(
        spec: ClusterSpec, tmp_path: Path) -> None:
    stats: list[str] = []

    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/readyz":
            return httpx.Response(200, text="ok")
        stats.append(request.url.host)
        raise httpx.ConnectError("refused", request=request)

    ClusterPKI(spec, tmp_path).ensure()
    ctx = DeployContext(spec, open_nornir(LAB_INVENTORY), RunReport("deploy", spec.name),
                        state_dir=tmp_path, http=httpx.MockTransport(answer))
    wait_until_joinable(ctx)
    assert len(stats) == 2  # each asked once, then left to the join


# --- a fresh node: each step's commands share an exec channel where they can ------------------


def _exec_sessions(host: FakeHost) -> int:
    """The host's exec channels so far: its round trips less its SFTP operations."""
    return host.round_trips - sum(c.op != "run" for c in host.calls)


def test_a_fresh_node_is_prepared_in_seven_exec_channels(
        node: tuple[Nornir, FakeHost], spec: ClusterSpec) -> None:
    nr, host = node
    result = nr.run(task=K.prepare_node, spec=spec)[NODE][0]
    containerd = [f.path for f in files_for_component(spec, spec.host(NODE), "containerd")]
    assert result.result == ", ".join(["kernel modules", "sysctls", *containerd, "containerd",
                                       "kubernetes packages", "kubelet enabled"])
    # the probes; sysctl -p; containerd's enable, start and is-active; the keyring; the
    # package query; the lists' refresh, the install, the hold and kubelet's state; its enable
    assert _exec_sessions(host) == 7
    files = 4 + len(containerd)  # modules, sysctls, apt source and pin: a get and a put each
    assert host.round_trips == 7 + 2 * files + 1  # + the keyring's stat
    commands = host.commands()
    assert sum(c.startswith("sysctl -n") for c in commands) == 3  # once, after the modprobe
    assert sum(c.startswith("systemctl show") for c in commands) == 3  # + kubelet's, installed
    installed = commands.index(next(c for c in commands if "apt-get install" in c))
    assert commands[installed - 1] == "apt-get update -q"
    assert commands[installed + 1] == "apt-mark hold kubelet kubeadm kubectl"
    assert host.debian.units["containerd"].active and host.debian.units["kubelet"].enabled
    assert all(host.debian.sysctls[k] == "1" for k in K.KUBERNETES_SYSCTLS)


def test_a_failing_apt_get_update_fails_the_step_naming_it(
        node: tuple[Nornir, FakeHost], spec: ClusterSpec) -> None:
    nr, host = node
    host.on(r"^apt-get update", exit_code=100,
            stderr="E: The repository 'https://pkgs.k8s.io/core:/stable:/v1.31/deb  Release' "
                   "does not have a Release file.\n")
    result = nr.run(task=K.prepare_node, spec=spec)[NODE]
    assert result.failed
    error = result[0].exception
    assert isinstance(error, CommandFailed)
    assert (error.command, error.exit_code) == ("apt-get update -q", 100)
    assert "does not have a Release file" in str(error)
    assert not any("apt-get install" in c or c.startswith("apt-mark") for c in host.commands())
    assert not host.debian.units["kubelet"].enabled


def test_a_failing_install_fails_naming_the_packages_and_holds_nothing(
        node: tuple[Nornir, FakeHost], spec: ClusterSpec) -> None:
    nr, host = node
    host.debian.available = {"containerd"}
    error = nr.run(task=K.prepare_node, spec=spec)[NODE][0].exception
    assert isinstance(error, CommandFailed)
    assert error.command.startswith("apt-get install kubelet=")
    assert "Unable to locate package kubelet" in str(error)
    assert not any(c.startswith("apt-mark") for c in host.commands())


MATERIAL = K.JoinMaterial("abcdef.0123456789abcdef", "sha256:" + "0" * 64)


def _kubeadm_in_a_real_shell(tmp_path: Path, exit_code: int, stderr: str) -> Any:
    """A reply that runs the join's command line in a real /bin/sh, with a stand-in `kubeadm`
    on PATH (exiting `exit_code`, `stderr` on stderr) and the host's join config as a local
    file: what the shell makes of the command (exit code, stderr, the removal) is real; whether
    the file is still there goes back to the fake host."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    kubeadm = bin_dir / "kubeadm"
    kubeadm.write_text(f"#!/bin/sh\nprintf '%s' {shlex.quote(stderr)} >&2\nexit {exit_code}\n")
    kubeadm.chmod(0o755)
    local = tmp_path / "k8sha-join.yaml"

    def reply(host: FakeHost, command: str, stdin: bytes | None) -> tuple[int, str, str]:
        local.write_bytes(host.files[K.JOIN_CONFIG_TMP])
        done = subprocess.run(["/bin/sh", "-c", command.replace(K.JOIN_CONFIG_TMP, str(local))],
                              capture_output=True, text=True, timeout=30,
                              env={**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"})
        if not local.exists():
            host.files.pop(K.JOIN_CONFIG_TMP)
        return done.returncode, done.stdout, done.stderr
    return reply


def _join(spec: ClusterSpec, host: FakeHost, **kwargs: Any) -> Any:
    """join_node on `host` as worker1, with freshly minted material."""
    fleet = FakeFleet()
    fleet.hosts[NODE] = host
    nr = open_nornir(LAB_INVENTORY).filter(name=NODE)
    install_fake(nr, fleet)
    return nr.run(task=K.join_node, spec=spec, material=MATERIAL, control_plane=False,
                  **kwargs)[NODE]


def test_a_join_costs_its_upload_and_one_exec_channel_and_leaves_no_token(
        spec: ClusterSpec, tmp_path: Path) -> None:
    host = FakeHost(NODE)
    host.on(r"^kubeadm join", _kubeadm_in_a_real_shell(tmp_path, 0, ""))
    result = _join(spec, host, joined=False)
    assert not result.failed and result[0].result == "kubeadm join"
    assert host.round_trips == 2  # the config's upload, the join and its removal
    assert K.JOIN_CONFIG_TMP not in host.files
    host = FakeHost(NODE)
    host.write(C.KUBELET_KUBECONFIG, "kubelet\n", 0o600)
    assert _join(spec, host)[0].result == "already joined"  # asked when not told


def test_a_failing_join_shows_kubeadms_stderr_and_leaves_no_token(
        spec: ClusterSpec, tmp_path: Path) -> None:
    host = FakeHost(NODE)
    host.on(r"^kubeadm join", _kubeadm_in_a_real_shell(
        tmp_path, 1, "error execution phase preflight: couldn't validate the identity of the "
                     "API Server: token id \"abcdef\" is invalid\n"))
    result = _join(spec, host, joined=False)
    error = result[0].exception
    assert result.failed and isinstance(error, CommandFailed)
    assert error.command == f"kubeadm join --config {K.JOIN_CONFIG_TMP}"
    assert error.exit_code == 1 and 'token id "abcdef" is invalid' in error.stderr
    assert K.JOIN_CONFIG_TMP not in host.files
    assert host.round_trips == 2


def test_a_join_that_does_not_finish_has_its_config_removed_from_here(
        spec: ClusterSpec) -> None:
    host = FakeHost(NODE)

    def cut(host: FakeHost, command: str, stdin: bytes | None) -> None:
        raise CommandTimeout(NODE, command, 600)

    host.on(r"^kubeadm join", cut)
    host.on(r"^rm -f ", lambda h, c, s: h.files.pop(shlex.split(c)[-1], None) and "")
    error = _join(spec, host, joined=False)[0].exception
    assert isinstance(error, CommandTimeout)
    assert host.commands()[-1] == f"rm -f {K.JOIN_CONFIG_TMP}"
    assert K.JOIN_CONFIG_TMP not in host.files


def test_the_registry_line_in_etc_hosts_costs_one_read(spec: ClusterSpec, tmp_path: Path
                                                       ) -> None:
    ClusterPKI(spec, tmp_path).ensure()
    nr = open_nornir(LAB_INVENTORY).filter(name=NODE)
    host = install_fake(nr, FakeFleet()).host(NODE)
    host.write(C.ETC_HOSTS, f"127.0.0.1 localhost\n10.9.9.9 old.registry {HOSTS_MARK}\n")

    def hosts_calls() -> list[str]:
        return [c.op for c in host.calls if c.path == C.ETC_HOSTS]

    dry = nr.run(task=trust_registry, spec=spec, state_dir=tmp_path, dry_run=True)[NODE][0]
    assert dry.changed and "old.registry" in (host.read(C.ETC_HOSTS) or "")
    assert hosts_calls() == ["get", "stat"]
    del host.calls[:]
    assert nr.run(task=trust_registry, spec=spec, state_dir=tmp_path)[NODE][0].changed
    lines = (host.read(C.ETC_HOSTS) or "").splitlines()
    registry = spec.role(C.ROLE_HARBOR)[0]
    assert lines == ["127.0.0.1 localhost",
                     f"{registry.address} {spec.settings.registry.name} {HOSTS_MARK}"]
    assert hosts_calls() == ["get", "stat", "put"]  # read once, not once more to write it
    del host.calls[:]
    assert not nr.run(task=trust_registry, spec=spec, state_dir=tmp_path)[NODE][0].changed
    assert hosts_calls() == ["get"]
