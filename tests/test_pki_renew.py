"""`pki renew`: what is re-issued (same names, new keys, same CA), and the rollout order on the
fake fleet: one etcd member at a time with the leader last after a hand-over, one apiserver at
a time, each healthy before the next; refusals and a host that does not come back."""

from __future__ import annotations

import ipaddress
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from nornir.core.task import Result, Task
from typer.testing import CliRunner

from nornir_k8sha import constants as C
from nornir_k8sha.cli import app
from nornir_k8sha.cli import pki as cli_pki
from nornir_k8sha.exceptions import PKIError
from nornir_k8sha.inventory import open_nornir
from nornir_k8sha.pki import ClusterPKI, reissue
from nornir_k8sha.tasks import pki_renew
from nornir_k8sha.tasks.certificates import check as cert_check
from nornir_k8sha.testing import FakeFleet, FakeHost, SimulatedDebian, install_fake
from nornir_k8sha.topology import load_cluster_spec

from .conftest import LAB_INVENTORY

SPEC = load_cluster_spec(LAB_INVENTORY)
MEMBERS = [m.name for m in SPEC.role(C.ROLE_ETCD)]
MASTERS = [m.name for m in SPEC.role(C.ROLE_MASTERS)]
IDS = {name: str(0xA0 + i) for i, name in enumerate(MEMBERS)}
LEAVES = sorted([f"etcd/members/{m}/{k}" for m in MEMBERS for k in ("server", "peer")]
                + ["etcd/apiserver-etcd-client", "etcd/healthcheck-client", "kubernetes/admin",
                   "registry/server"])
MANIFEST = f"{C.K8S_MANIFESTS_DIR}/kube-apiserver.yaml"
runner = CliRunner()


def short_lived_pki(state_dir: Path, days: int = 10) -> ClusterPKI:
    ClusterPKI(SPEC, state_dir, leaf_days=days).ensure()
    return ClusterPKI(SPEC, state_dir)


def cert_of(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


# --- the local part ---------------------------------------------------------------------------


def test_renew_reissues_only_what_expires_within_the_window_like_for_like(
        tmp_path: Path) -> None:
    pki = short_lived_pki(tmp_path)
    assert pki.renew(5) == []  # 9 days left: outside a 5-day window, nothing touched
    before = {p: cert_of(p.cert) for p in (pki.etcd_server("etcd1"), pki.registry_server)}
    ca_before = pki.etcd_ca.cert.read_bytes()
    renewed = pki.renew(30)
    assert sorted(s.name for s in renewed) == LEAVES
    assert all(s.action == "renewed" and s.reason == "expires in 9 days"
               for s in renewed)
    assert pki.etcd_ca.cert.read_bytes() == ca_before  # CAs never change
    for paths, old in before.items():
        new = cert_of(paths.cert)
        assert new.subject == old.subject and new.extensions.get_extension_for_class(
            x509.SubjectAlternativeName) == old.extensions.get_extension_for_class(
            x509.SubjectAlternativeName)
        assert new.public_key().public_numbers() != old.public_key().public_numbers()
        assert (new.not_valid_after_utc - datetime.now(UTC)).days >= 363
    new = cert_of(pki.etcd_server("etcd1").cert)
    new.verify_directly_issued_by(cert_of(pki.etcd_ca.cert))
    assert pki.etcd_server("etcd1").key.stat().st_mode & 0o777 == 0o600
    assert [s.action for s in ClusterPKI(SPEC, tmp_path).ensure()
            if not s.is_ca].count("reused") == len(LEAVES) + 1  # + the SA pair: all reused


def test_renew_without_a_pki_says_run_pki_first(tmp_path: Path) -> None:
    with pytest.raises(PKIError, match="missing; run `pki` or `deploy` first"):
        ClusterPKI(SPEC, tmp_path).renew(30)


def kubeadm_apiserver_cert(pki: ClusterPKI, days: int) -> bytes:
    """What kubeadm's apiserver.crt looks like: CN kube-apiserver, serverAuth, many SANs."""
    cert, _ = reissue(_template(pki), pki.kubernetes_ca, days=days)
    return cert


def _template(pki: ClusterPKI) -> bytes:
    ca_cert = cert_of(pki.kubernetes_ca.cert)
    ca_key = serialization.load_pem_private_key(pki.kubernetes_ca.key.read_bytes(), None)
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kube-apiserver")]))
            .issuer_name(ca_cert.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now).not_valid_after(now + timedelta(days=3))
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False)
            .add_extension(x509.SubjectAlternativeName(
                [x509.DNSName("master1"), x509.DNSName("kubernetes.default"),
                 x509.IPAddress(ipaddress.ip_address("10.88.0.100"))]), False)
            .sign(ca_key, hashes.SHA256()))  # type: ignore[arg-type]
    return cert.public_bytes(serialization.Encoding.PEM)


def test_reissue_keeps_kubeadms_names_and_refuses_a_foreign_certificate(tmp_path: Path) -> None:
    pki = short_lived_pki(tmp_path)
    old_pem = _template(pki)
    new_pem, key_pem = reissue(old_pem, pki.kubernetes_ca)
    old, new = x509.load_pem_x509_certificate(old_pem), x509.load_pem_x509_certificate(new_pem)
    assert new.subject == old.subject
    sans = x509.SubjectAlternativeName
    assert set(new.extensions.get_extension_for_class(sans).value) == set(
        old.extensions.get_extension_for_class(sans).value)
    assert list(new.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [
        ExtendedKeyUsageOID.SERVER_AUTH]
    assert b"PRIVATE KEY" in key_pem
    assert (new.not_valid_after_utc - old.not_valid_after_utc).days > 300
    with pytest.raises(PKIError, match="not signed by"):
        reissue(old_pem, pki.etcd_ca)


def test_check_names_pki_renew_for_an_expiring_leaf(tmp_path: Path) -> None:
    short_lived_pki(tmp_path)
    soon = cert_check(tmp_path)
    assert soon and all("renew it with `pki renew --within 30`" in r.message for r in soon
                        if not r.values.get("is_ca"))


# --- the rollout ------------------------------------------------------------------------------


class Cluster:
    """The fleet's running state as the rollout sees it: which apiservers are up, who leads
    etcd, which etcd members are restarting; and one ordered log of what happened."""

    def __init__(self) -> None:
        self.leader = "etcd1"
        self.down: set[str] = set()
        self.never_back: set[str] = set()
        self.log: list[tuple[str, str]] = []
        self.lock = threading.Lock()
        self.by_address = {str(h.address): h.name for h in SPEC.hosts}

    def handler(self, debian: SimulatedDebian):  # noqa: ANN201
        def answer(host: FakeHost, command: str, stdin: bytes | None):  # noqa: ANN202
            with self.lock:
                if C.HOST_LOCK_FILE not in command:
                    self.log.append((host.name, command))
                if command.startswith(f"mv {MANIFEST} "):
                    self.down.add(host.name)
                elif command.startswith("if [ -e ") and MANIFEST in command \
                        and host.name not in self.never_back:
                    self.down.discard(host.name)
                elif " move-leader " in command:
                    target = command.split()[-1]
                    self.leader = next(n for n, i in IDS.items() if format(int(i), "x") ==
                                       target)
            return debian(host, command, stdin)
        return answer

    def http(self, request: httpx.Request) -> httpx.Response:
        name = self.by_address[request.url.host]
        if name in self.down:
            raise httpx.ConnectError("connection refused", request=request)
        path = request.url.path
        if name in IDS:
            if path == "/health":
                return httpx.Response(200, json={"health": "true"})
            if path == "/v3/maintenance/status":
                return httpx.Response(200, json={"header": {"member_id": IDS[name]},
                                                 "leader": IDS[self.leader]})
            return httpx.Response(200, json={"members": [{"name": n} for n in MEMBERS]})
        if path == "/version":
            return httpx.Response(200, json={"gitVersion": "v1.30.0"})
        return httpx.Response(200, text="ok")


@pytest.fixture
def cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Cluster, FakeFleet]:
    """A deployed-looking fleet: short-lived leaves, kubeadm's apiserver certs on the masters,
    etcd and the apiservers answering; the CLI opens it; the state dir under tmp_path."""
    monkeypatch.chdir(tmp_path)
    pki = short_lived_pki(SPEC.state_dir)
    state = Cluster()
    fleet = FakeFleet()
    for h in SPEC.hosts:
        debian = SimulatedDebian()
        debian.unit("etcd").active = debian.unit("etcd").enabled = True
        fleet.hosts[h.name] = FakeHost(h.name, handler=state.handler(debian))
    for m in MASTERS:
        fleet.host(m).write(C.KUBE_APISERVER_CERT, kubeadm_apiserver_cert(pki, days=3))

    def opener(directory: Path, **kw: object) -> object:
        nr = open_nornir(directory, **kw)
        install_fake(nr, fleet)
        return nr

    monkeypatch.setattr(cli_pki, "open_nornir", opener)
    monkeypatch.setattr(cli_pki, "HTTP_TRANSPORT", httpx.MockTransport(state.http))
    monkeypatch.setattr(pki_renew, "POLL_S", 0.0)

    def registry_configured(task: Task, spec: object, state_dir: Path) -> Result:
        state.log.append((task.host.name, "configure registry"))
        return Result(host=task.host, changed=True)

    monkeypatch.setattr(pki_renew.harbor, "configure_registry", registry_configured)
    return state, fleet


def events(state: Cluster) -> list[str]:
    """The rollout's steps, in order, as `host: what`."""
    out = []
    for host, cmd in state.log:
        if cmd == "systemctl restart etcd":
            out.append(f"{host}: restart etcd")
        elif " move-leader " in cmd:
            out.append(f"{host}: move-leader")
        elif cmd.startswith(f"mv {MANIFEST} "):
            out.append(f"{host}: apiserver out")
        elif cmd.startswith("if [ -e ") and MANIFEST in cmd:
            out.append(f"{host}: apiserver back")
        elif cmd == "configure registry":
            out.append(f"{host}: registry")
    return out


def test_renew_rolls_out_one_host_at_a_time_leader_last_after_a_hand_over(cluster) -> None:
    state, fleet = cluster
    done = runner.invoke(app, ["pki", "renew", "-i", str(LAB_INVENTORY), "--within", "400"])
    assert done.exit_code == 0, done.output
    assert events(state) == [
        "etcd2: restart etcd", "etcd3: restart etcd",
        "etcd1: move-leader", "etcd1: restart etcd",
        "master1: apiserver out", "master1: apiserver back",
        "master2: apiserver out", "master2: apiserver back",
        "master3: apiserver out", "master3: apiserver back", "harbor1: registry"]
    assert "etcd1: etcd leadership handed over to etcd2 before the restart" in done.output
    assert "renewed 13 certificate(s)" in done.output  # 10 leaves + 3 apiservers
    # each member got ITS renewed files before its restart, owned by etcd
    pki = ClusterPKI(SPEC)
    for m in MEMBERS:
        host = fleet.host(m)
        assert host.files[C.ETCD_PEER_CERT] == pki.etcd_peer(m).cert.read_bytes()
        assert host.owners[C.ETCD_PEER_KEY] == "etcd:etcd" and host.modes[C.ETCD_PEER_KEY] == 0o600
    for m in MASTERS:
        host = fleet.host(m)
        assert host.files[C.APISERVER_ETCD_CLIENT_CERT] == \
            pki.apiserver_etcd_client.cert.read_bytes()
        new = x509.load_pem_x509_certificate(host.files[C.KUBE_APISERVER_CERT])
        assert (new.not_valid_after_utc - datetime.now(UTC)).days >= 363
        assert host.modes[C.KUBE_APISERVER_KEY] == 0o600
    assert cert_check(SPEC.state_dir, within_days=300)[0].status == "ok"


def test_a_master_that_does_not_come_back_stops_the_rollout_naming_it(
        cluster, monkeypatch: pytest.MonkeyPatch) -> None:
    state, _ = cluster
    monkeypatch.setattr(pki_renew, "APISERVER_BACK_S", 0.2)
    state.never_back.add("master1")
    done = runner.invoke(app, ["pki", "renew", "-i", str(LAB_INVENTORY), "--within", "400"])
    assert done.exit_code == 1
    assert "master1: apiserver not healthy" in done.output
    assert "the masters after it were not restarted" in done.output
    assert not any(e.startswith(("master2", "master3")) for e in events(state))


def test_an_unhealthy_etcd_member_refuses_before_any_restart(cluster) -> None:
    state, _ = cluster
    state.down.add("etcd3")
    done = runner.invoke(app, ["pki", "renew", "-i", str(LAB_INVENTORY), "--within", "400"])
    assert done.exit_code == 1 and "not healthy before the rollout: etcd3" in done.output
    assert events(state) == []


def test_dry_run_lists_and_changes_nothing_and_bad_window_exits_2(cluster) -> None:
    state, fleet = cluster
    before = ClusterPKI(SPEC).etcd_peer("etcd1").cert.read_bytes()
    dry = runner.invoke(app, ["pki", "renew", "-i", str(LAB_INVENTORY), "--within", "400",
                              "--dry-run"])
    assert dry.exit_code == 0, dry.output
    assert "would renew etcd/members/etcd1/peer" in dry.output
    assert "would renew master2: apiserver" in dry.output and "13 certificate(s)" in dry.output
    assert ClusterPKI(SPEC).etcd_peer("etcd1").cert.read_bytes() == before
    assert events(state) == [] and not any(w for h in fleet.hosts.values() for w in h.writes())
    bad = runner.invoke(app, ["pki", "renew", "-i", str(LAB_INVENTORY), "--within", "0"])
    assert bad.exit_code == 2 and "--within" in bad.output


def test_nothing_expiring_changes_nothing(cluster) -> None:
    state, _ = cluster
    done = runner.invoke(app, ["pki", "renew", "-i", str(LAB_INVENTORY), "--within", "2"])
    assert done.exit_code == 0 and "nothing expires within 2 days" in done.output
    assert events(state) == []


def test_renew_is_refused_while_another_operator_holds_the_cluster(cluster) -> None:
    state, fleet = cluster
    for m in MEMBERS:
        fleet.host(m).on(C.HOST_LOCK_FILE, exit_code=C.HOST_LOCK_HELD_EXIT, stdout=(
            '3\n{"command": "deploy", "machine": "ws2", "pid": 7, "since": 0, '
            '"token": "x", "user": "bob"}\n'))
    done = runner.invoke(app, ["pki", "renew", "-i", str(LAB_INVENTORY), "--within", "400"])
    assert done.exit_code == 1 and "locked by bob@ws2 pid 7, `deploy`" in done.output
    assert events(state) == []
