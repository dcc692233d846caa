"""Component tasks and deploy phases on simulated Debian hosts: what changes, what restarts, and
that a second run changes nothing — without SSH or root."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import httpx
import pytest
import yaml

from nornir_k8sha import constants as C
from nornir_k8sha.deploy import DeployContext, run_stages
from nornir_k8sha.inventory import open_nornir
from nornir_k8sha.phases.lb import LoadBalancers
from nornir_k8sha.phases.registry import Registry
from nornir_k8sha.pki import ClusterPKI
from nornir_k8sha.report import RunReport
from nornir_k8sha.tasks import keepalived
from nornir_k8sha.tasks import kubeadm as K
from nornir_k8sha.testing import FakeFleet, FakeRegistry, FakeUnit, install_fake
from nornir_k8sha.topology import load_cluster_spec

from .conftest import LAB_INVENTORY


def deploy(inventory: Path, fleet: FakeFleet, phases: list, state_dir: Path,
           dry_run: bool = False) -> RunReport:
    spec = load_cluster_spec(inventory)
    ClusterPKI(spec, state_dir).ensure()  # the pki phase's work: lb and registry upload from it
    nr = open_nornir(inventory)
    install_fake(nr, fleet)
    ctx = DeployContext(spec, nr, RunReport("deploy", spec.name), dry_run=dry_run,
                        state_dir=state_dir, http=registry_v2())
    return run_stages(ctx, [phases])


#: The registry's v2 API for the registry phase's probe-image push (one for the module, so a
#: second deploy finds what the first pushed).
REGISTRY = FakeRegistry()


def registry_v2() -> httpx.MockTransport:
    return REGISTRY.transport


#: The units the lab's hosts have (installed but stopped, as the lab rootfs ships them).
UNITS = ("haproxy", "keepalived", C.REALSERVER_SERVICE, "frr", "etcd", "docker-registry",
         "containerd", "kubelet")


@pytest.fixture
def fleet() -> FakeFleet:
    fleet = FakeFleet(debian=True)
    for name in load_cluster_spec(LAB_INVENTORY).hosts:
        units = fleet.host(name.name).debian.units
        for unit in UNITS:
            units[unit] = FakeUnit()
    return fleet


def test_lb_phase_configures_then_changes_nothing(fleet: FakeFleet, tmp_path: Path) -> None:
    first = deploy(LAB_INVENTORY, fleet, [LoadBalancers()], tmp_path)
    assert first.exit_code == 0, first.failed_hosts
    assert {h for h, o in first.phase("lb").hosts.items() if o.status == "changed"} == {
        "lvs1", "lvs2", "haproxy1", "haproxy2"}
    h1 = fleet.host("haproxy1")
    cfg = h1.read(C.HAPROXY_CFG)
    assert cfg is not None and "10.88.0.100:6443" in cfg
    assert any(c.startswith("haproxy -c -f") for c in h1.commands())  # validated before the swap
    assert h1.debian.unit("haproxy").active and h1.debian.unit("haproxy").enabled
    assert "arp_ignore" in (h1.read(C.REALSERVER_SYSCTL) or "")
    # the CA the health checks verify apiservers with is there before `haproxy -c` opens it
    ca = ClusterPKI(load_cluster_spec(LAB_INVENTORY), tmp_path).kubernetes_ca.cert
    assert h1.files[C.HAPROXY_KUBERNETES_CA] == ca.read_bytes()
    calls = [(c.op, c.path or c.command) for c in h1.calls]
    assert calls.index(("put", C.HAPROXY_KUBERNETES_CA)) < next(
        i for i, (op, what) in enumerate(calls) if op == "run" and what.startswith("haproxy -c"))
    lvs = fleet.host("lvs1")
    assert "lb_kind DR" in (lvs.read(C.KEEPALIVED_CONF) or "")
    assert any(c.startswith("keepalived -t -f") for c in lvs.commands())

    second = deploy(LAB_INVENTORY, fleet, [LoadBalancers()], tmp_path)
    assert second.changed == 0, [(h, o.changes) for h, o in second.phase("lb").hosts.items()]
    assert h1.debian.unit("haproxy").restarts == 0


def test_directors_reschedule_new_connections_away_from_a_drained_node(
        fleet: FakeFleet, tmp_path: Path) -> None:
    # IPVS in DR mode keeps a closed connection's entry (FIN_WAIT) for 120 s and, by default,
    # sends a new connection from the same client port to that entry's HAProxy even at weight
    # 0: a drained node then still gets new connections (docs/runbooks.md, "Draining")
    deploy(LAB_INVENTORY, fleet, [LoadBalancers()], tmp_path)
    for name in ("lvs1", "lvs2"):
        lvs = fleet.host(name)
        assert lvs.debian.sysctls["net.ipv4.vs.expire_nodest_conn"] == "1"  # applied now
        assert lvs.debian.sysctls["net.ipv4.vs.expire_quiescent_template"] == "1"
        assert "net.ipv4.vs.expire_nodest_conn = 1" in (lvs.read(C.LVS_IPVS_SYSCTL) or "")
        assert (lvs.read(C.LVS_IPVS_MODULES) or "").split() == ["ip_vs"]  # and at boot
    assert fleet.host("haproxy1").read(C.LVS_IPVS_SYSCTL) is None
    fleet.host("lvs1").debian.sysctls["net.ipv4.vs.expire_nodest_conn"] = "0"  # set back by hand
    again = deploy(LAB_INVENTORY, fleet, [LoadBalancers()], tmp_path)
    assert {h for h, o in again.phase("lb").hosts.items() if o.status == "changed"} == {"lvs1"}
    assert fleet.host("lvs1").debian.sysctls["net.ipv4.vs.expire_nodest_conn"] == "1"


def test_a_new_cluster_ca_reaches_haproxy_with_a_reload(fleet: FakeFleet, tmp_path: Path
                                                        ) -> None:
    deploy(LAB_INVENTORY, fleet, [LoadBalancers()], tmp_path)
    h1 = fleet.host("haproxy1")
    reloads = h1.debian.unit("haproxy").reloads
    h1.write(C.HAPROXY_KUBERNETES_CA, "an older CA\n")  # the CA was renewed since
    report = deploy(LAB_INVENTORY, fleet, [LoadBalancers()], tmp_path)
    assert report.phase("lb").hosts["haproxy1"].status == "changed"
    assert h1.read(C.HAPROXY_KUBERNETES_CA) != "an older CA\n"
    assert h1.debian.unit("haproxy").reloads == reloads + 1
    assert report.phase("lb").hosts["haproxy2"].status == "ok"


def test_dry_run_after_a_timing_change_shows_diff_and_reload_and_writes_nothing(
        fleet: FakeFleet, tmp_path: Path) -> None:
    deploy(LAB_INVENTORY, fleet, [LoadBalancers()], tmp_path / "state")
    inv = tmp_path / "inv"
    shutil.copytree(LAB_INVENTORY, inv)
    defaults = yaml.safe_load((inv / "defaults.yaml").read_text())
    defaults["data"]["haproxy"]["check_inter_ms"] = 700
    (inv / "defaults.yaml").write_text(yaml.safe_dump(defaults))
    h1 = fleet.host("haproxy1")
    before = h1.read(C.HAPROXY_CFG)
    reloads = h1.debian.unit("haproxy").reloads
    report = deploy(inv, fleet, [LoadBalancers()], tmp_path / "state", dry_run=True)
    outcome = report.phase("lb").hosts["haproxy1"]
    assert outcome.status == "changed"
    assert "-" in outcome.diff and "inter 700" in outcome.diff
    assert "would run: systemctl reload-or-restart haproxy" in outcome.diff
    assert h1.read(C.HAPROXY_CFG) == before
    assert h1.debian.unit("haproxy").reloads == reloads
    assert report.phase("lb").hosts["lvs1"].status == "ok"  # keepalived does not depend on it


def test_a_failed_validator_leaves_the_running_config(fleet: FakeFleet, tmp_path: Path) -> None:
    deploy(LAB_INVENTORY, fleet, [LoadBalancers()], tmp_path / "state")
    h1 = fleet.host("haproxy1")
    before = h1.read(C.HAPROXY_CFG)
    h1.on("haproxy -c -f *", exit_code=1, stderr="[ALERT] parsing error\n")
    inv = tmp_path / "inv"
    shutil.copytree(LAB_INVENTORY, inv)
    defaults = yaml.safe_load((inv / "defaults.yaml").read_text())
    defaults["data"]["haproxy"]["check_fall"] = 3
    (inv / "defaults.yaml").write_text(yaml.safe_dump(defaults))
    report = deploy(inv, fleet, [LoadBalancers()], tmp_path / "state")
    failed = report.phase("lb").hosts["haproxy1"]
    assert failed.status == "failed" and "parsing error" in failed.message
    assert h1.read(C.HAPROXY_CFG) == before
    assert report.phase("lb").hosts["lvs1"].status != "failed"


def test_registry_phase_uploads_tls_owned_by_the_service(fleet: FakeFleet, tmp_path: Path
                                                         ) -> None:
    spec = load_cluster_spec(LAB_INVENTORY)
    ClusterPKI(spec, tmp_path).ensure()
    report = deploy(LAB_INVENTORY, fleet, [Registry()], tmp_path)
    assert report.exit_code == 0, report.phase("registry").hosts["harbor1"].message
    harbor = fleet.host("harbor1")
    key = harbor.stat(f"{C.REGISTRY_PKI_DIR}/server.key")
    assert key is not None and key.mode == 0o600 and key.owner == C.REGISTRY_USER
    assert harbor.debian.unit("docker-registry").active
    again = deploy(LAB_INVENTORY, fleet, [Registry()], tmp_path)
    assert again.changed == 0


# --- kubeadm helpers ------------------------------------------------------------------------

INIT_TAIL = """Your Kubernetes control-plane has initialized successfully!
  kubeadm join 10.88.0.100:6443 --token abcdef.0123456789abcdef \\
	--discovery-token-ca-cert-hash sha256:{h} \\
	--control-plane --certificate-key {k}
"""


def test_join_material_is_parsed_and_never_shown(tmp_path: Path) -> None:
    key = "a" * 64
    out = INIT_TAIL.format(h="b" * 64, k=key)
    assert K.parse_token(out) == "abcdef.0123456789abcdef"
    assert K.parse_certificate_key(out) == key
    assert K.parse_certificate_key("[upload-certs] Using certificate key:\n" + key + "\n") == key
    with pytest.raises(ValueError):
        K.parse_token("no token here")
    material = K.JoinMaterial("abcdef.0123456789abcdef", "sha256:" + "c" * 64, key)
    assert "abcdef" not in repr(material) and key not in repr(material)
    filled = K.fill_join_config(
        f"token: {C.PLACEHOLDER_TOKEN}\nhash: {C.PLACEHOLDER_CA_CERT_HASH}\n"
        f"key: {C.PLACEHOLDER_CERTIFICATE_KEY}\n", material)
    assert "${" not in filled and key in filled


def test_discovery_hash_matches_openssl(tmp_path: Path) -> None:
    import subprocess

    spec = load_cluster_spec(LAB_INVENTORY)
    pki = ClusterPKI(spec, tmp_path)
    pki.ensure()
    ca = pki.kubernetes_ca.cert
    der = subprocess.run(
        f"openssl x509 -pubkey -in {ca} | openssl pkey -pubin -outform der | "
        "openssl dgst -sha256 -hex", shell=True, capture_output=True, text=True, check=True)
    assert K.ca_cert_hash(ca.read_bytes()) == "sha256:" + der.stdout.split()[-1]


# --- read-only check tasks and reset ---------------------------------------------------------


def test_haproxy_and_etcd_check_tasks_read_and_never_change(fleet: FakeFleet) -> None:
    """HTTP checks read from here: no SSH command, nothing `changed`."""
    import httpx

    from nornir_k8sha.tasks import etcd, haproxy

    from .test_checks import STATS_CSV

    spec = load_cluster_spec(LAB_INVENTORY)
    nr = open_nornir(LAB_INVENTORY)
    install_fake(nr, fleet)

    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/stats;csv":
            return httpx.Response(200, text=STATS_CSV)
        return httpx.Response(200, json={"health": "true", "leader": "7", "dbSize": "1024",
                                         "header": {"member_id": "7"}, "members": []})

    t = httpx.MockTransport(answer)
    r = nr.filter(name="haproxy1").run(task=haproxy.check, spec=spec, transport=t)["haproxy1"][0]
    assert not r.changed and r.result.values["down"] == ["master2"]
    r = nr.filter(name="etcd1").run(task=etcd.check, spec=spec, transport=t)["etcd1"][0]
    assert not r.changed and r.result.values["is_leader"] and r.result.values["db_size"] == 1024
    assert fleet.host("haproxy1").commands() == [] and fleet.host("etcd1").commands() == []


def test_reset_cli_needs_yes_and_resets_workers_then_masters(fleet: FakeFleet,
                                                            monkeypatch: pytest.MonkeyPatch,
                                                            tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from nornir_k8sha.cli import app

    runner = CliRunner()
    refused = runner.invoke(app, ["reset", "-i", str(LAB_INVENTORY)])
    assert refused.exit_code == 2 and "--yes" in refused.output
    order: list[str] = []
    for name in ("master1", "master2", "worker1"):
        fleet.host(name).write(C.KUBELET_KUBECONFIG, "kubeconfig")
        fleet.host(name).on(r"^kubeadm reset -f", lambda h, *_: order.append(h.name) or "")

    from nornir_k8sha.cli import deploy as cli_deploy

    def opener(directory: Path, **kw: object) -> object:
        nr = open_nornir(directory, **kw)
        install_fake(nr, fleet)
        return nr

    monkeypatch.setattr(cli_deploy, "open_nornir", opener)
    monkeypatch.chdir(tmp_path)
    done = runner.invoke(app, ["reset", "-i", str(LAB_INVENTORY), "--yes", "--json"])
    assert done.exit_code == 0, done.output
    assert order.index("worker1") < order.index("master1")
    assert "master3" not in order  # never joined: left alone


def test_kubernetes_packages_follow_the_install_guide_and_pin_the_version(
        fleet: FakeFleet) -> None:
    spec = load_cluster_spec(LAB_INVENTORY)
    nr = open_nornir(LAB_INVENTORY).filter(name="worker1")
    install_fake(nr, fleet)
    host = fleet.host("worker1")
    version = spec.settings.kubernetes.version
    dry = nr.run(task=K.kubernetes_packages, spec=spec, dry_run=True)["worker1"][0]
    assert dry.changed and "Release.key" in dry.result
    assert not any("curl" in c or "apt-get" in c for c in host.commands())
    first = nr.run(task=K.kubernetes_packages, spec=spec)["worker1"][0]
    assert first.changed, first.exception
    commands = host.commands()
    minor = ".".join(version.split(".")[:2])
    assert any(f"pkgs.k8s.io/core:/stable:/v{minor}/deb/Release.key" in c and "gpg --dearmor" in c
               for c in commands)
    assert any(f"kubeadm={version}-*" in c and "apt-get install" in c for c in commands)
    assert any(c.startswith("apt-mark hold") for c in commands)
    assert f"Pin: version {version}-*" in (host.read(K.KUBERNETES_APT_PIN) or "")
    host.write(K.KUBERNETES_KEYRING, b"keyring")  # what the gpg pipeline wrote on a real host
    second = nr.run(task=K.kubernetes_packages, spec=spec)["worker1"][0]
    assert not second.changed, second.result


@pytest.mark.parametrize(("present", "loads", "ok", "modprobes"), [
    (True, False, True, 0),    # in the kernel (a module, or built in): no process at all
    (False, True, True, 1),    # loaded now
    (False, False, False, 1),  # cannot be loaded: the director's configure fails on it
])
def test_the_ipvs_load_runs_modprobe_only_when_the_kernel_has_no_ipvs(
        tmp_path: Path, present: bool, loads: bool, ok: bool, modprobes: int) -> None:
    """keepalived.IP_VS run by a real /bin/sh, /proc/net/ip_vs played by a file here and
    modprobe by a stand-in that creates it when the module `loads`."""
    table, log = tmp_path / "ip_vs", tmp_path / "modprobe.log"
    if present:
        table.write_text("")
    (tmp_path / "modprobe").write_text(
        f'#!/bin/sh\necho "$*" >> {log}\n' + (f": > {table}\n" if loads else "exit 1\n"))
    (tmp_path / "modprobe").chmod(0o755)
    command = keepalived.IP_VS.replace(C.PROC_IPVS, str(table))
    assert command != keepalived.IP_VS
    done = subprocess.run(["/bin/sh", "-c", command], env={"PATH": f"{tmp_path}:/usr/bin:/bin"},
                          capture_output=True, text=True, timeout=10)
    assert (done.returncode == 0) == ok, done
    ran = log.read_text().splitlines() if log.exists() else []
    assert ran == ["ip_vs"] * modprobes
