"""The join flow without the lab: the control-plane and workers phases (and preflight's clock
check) on the fake fleet, with kubeadm simulated per host and the apiserver behind
`httpx.MockTransport`.

What a user relies on: `kubeadm init` runs once, on the first master; the other masters join
one at a time; workers join all at once; every join carries join material freshly minted on an
initialised master; a failed join fails that host with kubeadm's stderr and nothing else.
"""

from __future__ import annotations

import functools
import secrets
import string
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from nornir_k8sha import constants as C
from nornir_k8sha.deploy import DeployContext, run_stages
from nornir_k8sha.inventory import open_nornir
from nornir_k8sha.phases.control_plane import ControlPlane
from nornir_k8sha.phases.preflight import Preflight
from nornir_k8sha.phases.workers import Workers
from nornir_k8sha.pki import ClusterPKI
from nornir_k8sha.report import RunReport
from nornir_k8sha.tasks import kubeadm as K
from nornir_k8sha.testing import FakeFleet, FakeHost, FakeUnit, install_fake
from nornir_k8sha.topology import ClusterSpec, load_cluster_spec

from .conftest import LAB_INVENTORY, InventoryFactory

#: How long a concurrency probe waits for the other joins before it gives up (never asserted).
BARRIER_TIMEOUT_S = 10.0
#: How long a control-plane join waits to see whether another join starts beside it.
OVERLAP_PROBE_S = 0.3

UNITS = ("containerd", "kubelet")
TOKEN_ALPHABET = string.ascii_lowercase + string.digits


def _token() -> str:
    return ("".join(secrets.choice(TOKEN_ALPHABET) for _ in range(6)) + "."
            + "".join(secrets.choice(TOKEN_ALPHABET) for _ in range(16)))


class SimulatedKubeadm:
    """kubeadm's observable behaviour on fake hosts, shared by the whole fake cluster.

    `init` writes admin.conf and kubelet.conf; `token create --print-join-command` and
    `init phase upload-certs` mint fresh material (only on an initialised master, as the real
    one needs a running control plane); `join --config` reads its config file, refuses material
    never minted, and writes kubelet.conf (and admin.conf for a control-plane join). Every step is
    recorded in `events` in the order it happened. `fail[host] = stderr` fails that host's
    init/join; `join_hook(host)` runs inside a join (for concurrency probes).
    """

    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []
        self.tokens: dict[str, str] = {}  # token -> minting host
        self.keys: dict[str, str] = {}  # certificate key -> minting host
        self.joined_with: dict[str, dict[str, Any]] = {}  # host -> its JoinConfiguration
        self.fail: dict[str, str] = {}
        self.fail_mint: set[str] = set()
        self.join_hook: Callable[[str], None] | None = None
        self.lock = threading.Lock()

    def install(self, fleet: FakeFleet, hosts: list[str]) -> None:
        for name in hosts:
            fleet.host(name).on(r"^kubeadm (init|join|token)", self)
            fleet.host(name).on(r"^rm -f ", _remove)

    def _record(self, event: str, host: str) -> None:
        with self.lock:
            self.events.append((event, host))

    def __call__(self, host: FakeHost, command: str, stdin: bytes | None) -> Any:
        words = command.split()
        if words[:2] == ["kubeadm", "init"] and "phase" not in words:
            return self._init(host)
        if words[:3] == ["kubeadm", "token", "create"]:
            return self._mint_token(host)
        if words[:4] == ["kubeadm", "init", "phase", "upload-certs"]:
            return self._mint_key(host)
        if words[:2] == ["kubeadm", "join"]:
            try:
                return self._join(host)
            finally:  # `kubeadm join ...; rc=$?; rm -f CONFIG; exit $rc`: the shell's rm
                _, remove = K.join_commands()
                if remove in command:
                    host.files.pop(K.JOIN_CONFIG_TMP, None)  # in the join's own round trip
        return None

    def _init(self, host: FakeHost) -> Any:
        self._record("init", host.name)
        if host.name in self.fail:
            return (1, "", self.fail[host.name])
        host.write(C.ADMIN_KUBECONFIG, f"server: https://{host.name}:6443\n", 0o600)
        host.write(C.KUBELET_KUBECONFIG, "kubelet\n", 0o600)
        return "Your Kubernetes control-plane has initialized successfully!\n"

    def _require_control_plane(self, host: FakeHost) -> Any:
        if host.name in self.fail_mint or host.files.get(C.ADMIN_KUBECONFIG) is None:
            return (1, "", "couldn't create a Kubernetes client: admin.conf: no such file\n")
        return None

    def _mint_token(self, host: FakeHost) -> Any:
        refused = self._require_control_plane(host)
        if refused:
            return refused
        token = _token()
        with self.lock:
            self.tokens[token] = host.name
        self._record("mint-token", host.name)
        return (f"kubeadm join 10.88.0.100:6443 --token {token} "
                f"--discovery-token-ca-cert-hash sha256:{'0' * 64} \n")

    def _mint_key(self, host: FakeHost) -> Any:
        refused = self._require_control_plane(host)
        if refused:
            return refused
        key = secrets.token_hex(32)
        with self.lock:
            self.keys[key] = host.name
        self._record("mint-key", host.name)
        return ('[upload-certs] Storing the certificates in Secret "kubeadm-certs" in the '
                f'"kube-system" Namespace\n[upload-certs] Using certificate key:\n{key}\n')

    def _join(self, host: FakeHost) -> Any:
        config = yaml.safe_load(host.files[K.JOIN_CONFIG_TMP])
        self._record("join-start", host.name)
        try:
            if self.join_hook is not None:
                self.join_hook(host.name)
            if host.name in self.fail:
                return (1, "", self.fail[host.name])
            token = config["discovery"]["bootstrapToken"]["token"]
            if token not in self.tokens:
                return (1, "", f'couldn\'t validate the identity of the API Server: token id '
                               f'"{token[:6]}" is invalid for this cluster or it has expired\n')
            with self.lock:
                self.joined_with[host.name] = config
            host.write(C.KUBELET_KUBECONFIG, "kubelet\n", 0o600)
            if "controlPlane" in config:
                host.write(C.ADMIN_KUBECONFIG, f"server: https://{host.name}:6443\n", 0o600)
            return "This node has joined the cluster\n"
        finally:
            self._record("join-end", host.name)


def _remove(host: FakeHost, command: str, stdin: bytes | None) -> str:
    host.remove(command.split()[-1])
    return ""


class FakeApiserver:
    """The cluster's API behind the VIP, as `httpx.MockTransport` serves it: /readyz answers
    once a master is initialised, /api/v1/nodes lists the hosts with a kubelet.conf as Ready
    (except `not_ready`)."""

    def __init__(self, fleet: FakeFleet, spec: ClusterSpec) -> None:
        self.fleet = fleet
        self.spec = spec
        self.not_ready: set[str] = set()
        self.urls: list[str] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.urls.append(str(request.url))
        masters = [self.fleet.host(h.name) for h in self.spec.role(C.ROLE_MASTERS)]
        if request.url.path == "/readyz":
            up = any(m.files.get(C.ADMIN_KUBECONFIG) for m in masters)
            return httpx.Response(200 if up else 503, text="ok" if up else "not ready")
        if request.url.path == "/api/v1/nodes":
            items = [{"metadata": {"name": name}, "status": {"conditions": [
                {"type": "Ready", "status": "False" if name in self.not_ready else "True"}]}}
                for name, h in sorted(self.fleet.hosts.items())
                if h.files.get(C.KUBELET_KUBECONFIG)]
            return httpx.Response(200, json={"kind": "NodeList", "items": items})
        return httpx.Response(404)


class Cluster:
    """One fake cluster: inventory, fleet, PKI in a state dir, kubeadm and the API."""

    def __init__(self, inventory: Path, state_dir: Path, monkeypatch: pytest.MonkeyPatch
                 ) -> None:
        self.inventory = inventory
        self.spec = load_cluster_spec(inventory)
        self.state_dir = state_dir
        self.pki = ClusterPKI(self.spec, state_dir)
        self.pki.ensure()
        self.fleet = FakeFleet(debian=True)
        for h in self.spec.hosts:
            units = self.fleet.host(h.name).debian.units
            for unit in UNITS:
                units[unit] = FakeUnit()
        self.kubeadm = SimulatedKubeadm()
        self.kubeadm.install(self.fleet, [h.name for h in self.spec.hosts])
        self.api = FakeApiserver(self.fleet, self.spec)
        mock = httpx.MockTransport(self.api)
        # every httpx client the deploy builds (TLS with our CA) talks to the fake API instead
        monkeypatch.setattr(httpx.HTTPTransport, "handle_request",
                            lambda _self, request: mock.handle_request(request))
        # one poll, no waiting: a wait that is not satisfied at once fails at once
        monkeypatch.setattr(K, "wait_for_nodes", functools.partial(K.wait_for_nodes, timeout=0))
        monkeypatch.setattr(K, "wait_for_api", functools.partial(K.wait_for_api, timeout=0))

    def deploy(self, *stages: list, dry_run: bool = False) -> RunReport:
        nr = open_nornir(self.inventory)
        install_fake(nr, self.fleet)
        ctx = DeployContext(self.spec, nr, RunReport("deploy", self.spec.name), dry_run=dry_run,
                            state_dir=self.state_dir)
        return run_stages(ctx, [list(s) for s in stages])

    def commands(self, pattern: str) -> dict[str, list[str]]:
        """host -> its commands starting with `pattern`, for hosts that ran any."""
        found = {name: [c for c in h.commands() if c.startswith(pattern)]
                 for name, h in self.fleet.hosts.items()}
        return {name: cmds for name, cmds in found.items() if cmds}


@pytest.fixture
def cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Cluster:
    return Cluster(LAB_INVENTORY, tmp_path / "state", monkeypatch)


def _statuses(report: RunReport, phase: str) -> dict[str, str]:
    return {h: o.status for h, o in report.phase(phase).hosts.items()}


def _token_of(config: dict[str, Any]) -> str:
    return config["discovery"]["bootstrapToken"]["token"]


# --- control plane ------------------------------------------------------------------------------


def test_init_runs_once_on_the_first_master_and_the_others_join_as_control_plane(
        cluster: Cluster) -> None:
    report = cluster.deploy([ControlPlane()])
    assert _statuses(report, "control-plane") == {
        "master1": "changed", "master2": "changed", "master3": "changed"}
    first = cluster.spec.first_master.name
    assert cluster.commands("kubeadm init --config") == {
        first: [f"kubeadm init --config {C.KUBEADM_CONFIG} --upload-certs"]}
    assert sorted(cluster.kubeadm.joined_with) == ["master2", "master3"]
    for config in cluster.kubeadm.joined_with.values():
        assert config["controlPlane"]["certificateKey"] in cluster.kubeadm.keys
        assert config["discovery"]["bootstrapToken"]["caCertHashes"] == [
            K.ca_cert_hash(cluster.pki.kubernetes_ca.cert.read_bytes())]
    # the secrets went in a file that is gone after the join, never on a command line
    for name in ("master2", "master3"):
        assert cluster.fleet.host(name).read(K.JOIN_CONFIG_TMP) is None
    for token in cluster.kubeadm.tokens:
        assert not any(token in c for h in cluster.fleet.hosts.values() for c in h.commands())
    # the admin kubeconfig came home, pointing at the VIP
    admin = (cluster.state_dir / C.STATE_ADMIN_KUBECONFIG).read_text()
    assert f"server: https://{cluster.spec.api_endpoint}" in admin

    again = cluster.deploy([ControlPlane()])
    assert again.exit_code == 0
    assert len(cluster.commands("kubeadm init --config")[first]) == 1  # never a second init
    assert [e for e in cluster.kubeadm.events if e[0] == "join-start"] == [
        ("join-start", "master2"), ("join-start", "master3")]  # joined masters left alone


def test_control_plane_joins_run_one_at_a_time_each_with_fresh_material(
        cluster: Cluster) -> None:
    overlaps: list[tuple[str, str]] = []
    inside: set[str] = set()
    arrivals = threading.Condition()

    def probe(host: str) -> None:
        """Stay inside the join until another join arrives (an overlap) or the probe ends."""
        with arrivals:
            overlaps.extend((host, other) for other in inside)
            inside.add(host)
            arrivals.notify_all()
            arrivals.wait_for(lambda: len(inside) > 1, timeout=OVERLAP_PROBE_S)
            inside.discard(host)

    cluster.kubeadm.join_hook = probe
    report = cluster.deploy([ControlPlane()])
    assert report.exit_code == 0, report.failed_hosts
    assert overlaps == []
    events = [e for e in cluster.kubeadm.events if e[0] != "mint-key"]
    # init, then for each joiner: a token minted on an initialised master, the join, its end
    assert events == [
        ("init", "master1"),
        ("mint-token", "master1"), ("join-start", "master2"), ("join-end", "master2"),
        ("mint-token", "master1"), ("join-start", "master3"), ("join-end", "master3"),
    ]
    m2, m3 = cluster.kubeadm.joined_with["master2"], cluster.kubeadm.joined_with["master3"]
    assert _token_of(m2) != _token_of(m3)
    assert m2["controlPlane"]["certificateKey"] != m3["controlPlane"]["certificateKey"]
    assert list(cluster.kubeadm.tokens) == [_token_of(m2), _token_of(m3)]
    assert list(cluster.kubeadm.keys) == [m2["controlPlane"]["certificateKey"],
                                          m3["controlPlane"]["certificateKey"]]


def test_join_material_comes_from_any_initialised_master(cluster: Cluster) -> None:
    """When the first master cannot mint, the next initialised one does."""
    cluster.deploy([ControlPlane()])
    m3 = cluster.fleet.host("master3")
    for path in (C.KUBELET_KUBECONFIG, C.ADMIN_KUBECONFIG):
        m3.remove(path)  # master3 was reset: it joins again
    cluster.kubeadm.fail_mint.add("master1")
    report = cluster.deploy([ControlPlane()])
    assert _statuses(report, "control-plane")["master3"] == "changed"
    assert cluster.kubeadm.tokens[_token_of(cluster.kubeadm.joined_with["master3"])] == "master2"


def test_a_failed_control_plane_join_fails_that_master_only(cluster: Cluster) -> None:
    cluster.kubeadm.fail["master2"] = ("error execution phase control-plane-prepare/download-"
                                       "certs: the Secret does not include the required key\n")
    report = cluster.deploy([ControlPlane()])
    outcomes = report.phase("control-plane").hosts
    assert outcomes["master2"].status == "failed"
    assert "download-certs" in outcomes["master2"].message
    assert outcomes["master1"].status == "changed" and outcomes["master3"].status == "changed"
    assert "master2" not in cluster.kubeadm.joined_with and "master3" in cluster.kubeadm.joined_with
    # master3's material was minted after master2's failure, not reused from it
    assert len(cluster.kubeadm.tokens) == 2
    assert _token_of(cluster.kubeadm.joined_with["master3"]) == list(cluster.kubeadm.tokens)[1]


def test_a_failed_init_joins_nobody_and_skips_the_workers(cluster: Cluster) -> None:
    cluster.kubeadm.fail["master1"] = "[ERROR Port-6443]: Port 6443 is in use\n"
    report = cluster.deploy([ControlPlane()], [Workers()])
    outcomes = report.phase("control-plane").hosts
    assert outcomes["master1"].status == "failed" and "Port 6443" in outcomes["master1"].message
    for name in ("master2", "master3"):
        assert outcomes[name].status == "failed"
        assert "no initialised master" in outcomes[name].message
    assert cluster.commands("kubeadm join") == {}
    assert "control-plane" in (report.phase("workers").skipped_reason or "")
    assert set(_statuses(report, "workers").values()) == {"skipped"}


# --- workers ------------------------------------------------------------------------------------


def test_workers_join_in_parallel_with_one_fresh_token(cluster: Cluster) -> None:
    workers = [h.name for h in cluster.spec.role(C.ROLE_WORKERS)]
    cluster.deploy([ControlPlane()])
    control_plane_tokens = set(cluster.kubeadm.tokens)
    barrier = threading.Barrier(len(workers), timeout=BARRIER_TIMEOUT_S)

    def all_inside(host: str) -> None:
        """Returns only when every worker is inside its join at the same time."""
        barrier.wait()  # BrokenBarrierError (the join fails) when they come one by one

    cluster.kubeadm.join_hook = all_inside
    report = cluster.deploy([Workers()])
    assert _statuses(report, "workers") == dict.fromkeys(workers, "changed"), \
        report.phase("workers").hosts
    tokens = {_token_of(cluster.kubeadm.joined_with[w]) for w in workers}
    assert len(tokens) == 1 and not tokens & control_plane_tokens  # minted for this phase
    assert cluster.kubeadm.tokens[tokens.pop()] in ("master1", "master2", "master3")
    for w in workers:
        assert "controlPlane" not in cluster.kubeadm.joined_with[w]
        assert cluster.fleet.host(w).read(K.JOIN_CONFIG_TMP) is None
    assert any(url.endswith("/api/v1/nodes") for url in cluster.api.urls)  # waited for Ready


def test_a_failed_worker_join_fails_that_worker_with_its_stderr(cluster: Cluster) -> None:
    cluster.kubeadm.fail["worker1"] = ("[preflight] Some fatal errors occurred:\n"
                                       "[ERROR FileAvailable--etc-kubernetes-kubelet.conf]\n")
    report = cluster.deploy([ControlPlane()], [Workers()])
    outcomes = report.phase("workers").hosts
    assert outcomes["worker1"].status == "failed"
    assert "FileAvailable--etc-kubernetes-kubelet.conf" in outcomes["worker1"].message
    assert outcomes["worker2"].status == "changed", outcomes["worker2"].message
    assert "worker2" in cluster.kubeadm.joined_with
    assert cluster.fleet.host("worker1").read(K.JOIN_CONFIG_TMP) is None  # the token is gone


def test_a_worker_is_asked_once_whether_it_has_joined(cluster: Cluster) -> None:
    """The phase asks every worker before it mints join material; the join trusts that answer
    (kubelet.conf read once per deploy), and removes its config in its own exec channel."""
    workers = [h.name for h in cluster.spec.role(C.ROLE_WORKERS)]
    for run in (1, 2):
        report = cluster.deploy([ControlPlane()], [Workers()])
        assert report.exit_code == 0, report.failed_hosts
        for w in workers:
            host = cluster.fleet.host(w)
            assert [c.op for c in host.calls if c.path == C.KUBELET_KUBECONFIG] == ["get"] * run
            assert len([c for c in host.commands() if c.startswith("kubeadm join")]) == 1
            assert not [c for c in host.commands() if c.startswith("rm -f")]
            assert host.read(K.JOIN_CONFIG_TMP) is None


def test_a_worker_not_ready_fails_that_worker_and_no_other_by_name_prefix(
        make_inventory: InventoryFactory, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    def add_worker10(hosts: dict, groups: dict, defaults: dict) -> None:
        hosts["worker10"] = {**hosts["worker1"], "hostname": "10.88.0.60"}

    cluster = Cluster(make_inventory(add_worker10), tmp_path / "state", monkeypatch)
    cluster.api.not_ready.add("worker10")
    report = cluster.deploy([ControlPlane()], [Workers()])
    outcomes = report.phase("workers").hosts
    assert outcomes["worker10"].status == "failed"
    assert "worker10" in outcomes["worker10"].message
    assert outcomes["worker1"].status == "changed", outcomes["worker1"].message
    assert outcomes["worker2"].status == "changed"


# --- preflight's clock check --------------------------------------------------------------------


def test_preflight_names_a_host_whose_clock_cannot_be_read(cluster: Cluster) -> None:
    for name in cluster.fleet.hosts:
        cluster.fleet.host(name).on(r"^date \+%s", lambda *_: f"{time.time():.9f}\n")
    cluster.fleet.host("etcd2").on(r"^date \+%s", exit_code=127,
                                   stderr="sh: 1: date: not found\n")
    report = cluster.deploy([Preflight()])
    outcomes = report.phase("preflight").hosts
    assert outcomes["etcd2"].status == "failed"
    assert "clock" in outcomes["etcd2"].message and "date: not found" in outcomes[
        "etcd2"].message
    assert "TypeError" not in outcomes["etcd2"].message
    assert {h for h, o in outcomes.items() if o.status == "failed"} == {"etcd2"}


def test_preflight_does_not_blame_a_clock_for_a_slow_round_trip(cluster: Cluster) -> None:
    """The host read its clock somewhere inside the round trip: a skew at the midpoint that
    half the round trip explains is not proven, and fails no host; a fast round trip still
    fails the same skew."""
    skew = cluster.spec.settings.ntp_max_skew_s + 0.5
    for name in cluster.fleet.hosts:
        cluster.fleet.host(name).on(r"^date \+%s", lambda *_: f"{time.time():.9f}\n")

    def read_then_slow(*_: object) -> str:  # a right clock, read at the start of a 3 s trip
        now = time.time()
        time.sleep(3.0)
        return f"{now:.9f}\n"

    cluster.fleet.host("master2").on(r"^date \+%s", read_then_slow)
    cluster.fleet.host("master3").on(r"^date \+%s", lambda *_: f"{time.time() + skew:.9f}\n")
    report = cluster.deploy([Preflight()])
    outcomes = report.phase("preflight").hosts
    assert {h for h, o in outcomes.items() if o.status == "failed"} == {"master3"}
    assert "clock skew 1.5s > 1.0s" in outcomes["master3"].message


def test_preflight_fails_a_host_whose_clock_is_off(cluster: Cluster) -> None:
    skew = cluster.spec.settings.ntp_max_skew_s + 60
    for name in cluster.fleet.hosts:
        cluster.fleet.host(name).on(r"^date \+%s", lambda *_: f"{time.time():.9f}\n")
    cluster.fleet.host("master2").on(r"^date \+%s", lambda *_: f"{time.time() + skew:.9f}\n")
    report = cluster.deploy([Preflight()])
    outcomes = report.phase("preflight").hosts
    assert {h for h, o in outcomes.items() if o.status == "failed"} == {"master2"}
    assert "clock skew" in outcomes["master2"].message
