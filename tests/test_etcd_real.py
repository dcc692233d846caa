"""The backup and restore commands against REAL etcd 3.4 on loopback: three TLS members on
127.0.0.1-3 (the cluster PKI's own certificates), each a FakeHost whose commands run here with
the member's paths mapped into a tmp dir and `systemctl stop|start etcd` mapped to the process.

Proves what the fake fleet cannot: `etcdctl snapshot save` over the member's client TLS,
`snapshot status` accepting the file, `snapshot restore` with the new token making a cluster
that forms a quorum (wait_for_quorum over mTLS, for real) and serves the keys written before the
backup — and not the one written after it.
"""

from __future__ import annotations

import ipaddress
import json
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from nornir_k8sha import constants as C
from nornir_k8sha.exceptions import SnapshotError
from nornir_k8sha.inventory import open_nornir
from nornir_k8sha.pki import ClusterPKI
from nornir_k8sha.render import files_for_host
from nornir_k8sha.tasks import etcd, etcd_backup, etcd_replace, etcd_restore
from nornir_k8sha.testing import FakeFleet, FakeHost, install_fake
from nornir_k8sha.topology import ClusterSpec, HostSpec, load_cluster_spec

from .conftest import InventoryFactory

ETCD = shutil.which("etcd") or "/usr/bin/etcd"
ETCDCTL = shutil.which("etcdctl") or "/usr/bin/etcdctl"

pytestmark = pytest.mark.skipif(not (Path(ETCD).exists() and Path(ETCDCTL).exists()),
                                reason="needs etcd and etcdctl 3.4")

ADDRESSES = {"etcd1": "127.0.0.1", "etcd2": "127.0.0.2", "etcd3": "127.0.0.3"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def loopback_source_san(cert_path: Path, pki: ClusterPKI) -> None:
    """Re-sign a member's peer certificate with 127.0.0.1 added to its SANs: on loopback every
    connection leaves from 127.0.0.1, and etcd checks a peer's source address against its
    certificate. A test artefact: on real hosts the member's own address is the source."""
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    ca_key = serialization.load_pem_private_key(pki.etcd_ca.key.read_bytes(), None)
    ca = x509.load_pem_x509_certificate(pki.etcd_ca.cert.read_bytes())
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    builder = (x509.CertificateBuilder().subject_name(cert.subject).issuer_name(ca.subject)
               .public_key(cert.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(cert.not_valid_before_utc)
               .not_valid_after(cert.not_valid_after_utc))
    for ext in cert.extensions:
        if not isinstance(ext.value, x509.SubjectAlternativeName):
            builder = builder.add_extension(ext.value, ext.critical)
    names = [*sans, x509.IPAddress(ipaddress.IPv4Address("127.0.0.1"))]
    builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    cert_path.write_bytes(builder.sign(ca_key, hashes.SHA256()).public_bytes(
        serialization.Encoding.PEM))


class LocalMember:
    """One etcd member on this machine: its tmp root, its process, and a FakeHost handler
    that runs the member's commands here with its paths mapped."""

    def __init__(self, spec: ClusterSpec, member: HostSpec, root: Path, pki: ClusterPKI):
        self.spec, self.member, self.root = spec, member, root
        self.proc: subprocess.Popen[bytes] | None = None
        (root / "pki").mkdir(parents=True)
        (root / "var").mkdir()
        for src, name in ((pki.etcd_ca.cert, "ca.crt"),
                          (pki.etcd_server(member).cert, "server.crt"),
                          (pki.etcd_server(member).key, "server.key"),
                          (pki.etcd_peer(member).cert, "peer.crt"),
                          (pki.etcd_peer(member).key, "peer.key")):
            shutil.copy(src, root / "pki" / name)
        loopback_source_san(root / "pki" / "peer.crt", pki)
        # the one line of etcd.conf.yml `etcd replace` edits; start() honours it
        (root / "etcd.conf.yml").write_text('initial-cluster-state: "new"\n')
        port = spec.settings.etcd.client_port
        self.mapping = {
            C.ETCD_CONF: str(root / "etcd.conf.yml"),
            C.ETCD_PKI_DIR: str(root / "pki"),
            "/var/tmp/": f"{root}/var/",
            spec.settings.etcd.data_dir: str(root / "data"),
            C.ETCD_BACKUP_DIR: str(root / "backups"),
            f"https://127.0.0.1:{port}": f"https://{member.address}:{port}",
        }
        self.synced = (C.ETCD_SNAPSHOT_TMP, C.ETCD_RESTORE_TMP)

    def local(self, text: str) -> str:
        for remote, here in self.mapping.items():
            text = text.replace(remote, here)
        return text

    def start(self, token: str = "k8sha-etcd") -> None:
        s, m, pki = self.spec.settings.etcd, self.member, self.root / "pki"
        conf = (self.root / "etcd.conf.yml").read_text()
        state = "existing" if 'initial-cluster-state: "existing"' in conf else "new"
        client = f"https://{m.address}:{s.client_port}"
        peer = f"https://{m.address}:{s.peer_port}"
        log = (self.root / "etcd.log").open("ab")
        self.proc = subprocess.Popen([
            ETCD, "--name", m.name, "--data-dir", str(self.root / "data"),
            "--listen-client-urls", client, "--advertise-client-urls", client,
            "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
            "--initial-cluster", self.spec.etcd_initial_cluster(),
            "--initial-cluster-state", state, "--initial-cluster-token", token,
            "--cert-file", f"{pki}/server.crt", "--key-file", f"{pki}/server.key",
            "--trusted-ca-file", f"{pki}/ca.crt", "--client-cert-auth",
            "--peer-cert-file", f"{pki}/peer.crt", "--peer-key-file", f"{pki}/peer.key",
            "--peer-trusted-ca-file", f"{pki}/ca.crt", "--peer-client-cert-auth",
            "--heartbeat-interval", "50", "--election-timeout", "500",
        ], stdout=log, stderr=log)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()  # our own child, by its PID
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def etcdctl(self, *args: str) -> str:
        s, pki = self.spec.settings.etcd, self.root / "pki"
        return subprocess.run(
            [ETCDCTL, "--endpoints", f"https://{self.member.address}:{s.client_port}",
             "--cacert", f"{pki}/ca.crt", "--cert", f"{pki}/server.crt",
             "--key", f"{pki}/server.key", *args],
            env={"ETCDCTL_API": "3", "PATH": "/usr/bin:/bin"}, capture_output=True, text=True,
            check=True, timeout=30).stdout

    def __call__(self, host: FakeHost, command: str, stdin: bytes | None) -> Any:
        if command == "systemctl stop etcd":
            self.stop()
            return 0, "", ""
        if command == "systemctl start --no-block etcd":
            self.start()
            return 0, "", ""
        for path in self.synced:  # what was put on the "host" lands here first
            if path in host.files:
                Path(self.local(path)).write_bytes(host.files[path])
        res = subprocess.run(["bash", "-c", self.local(command)], capture_output=True,
                             timeout=120, env={"PATH": "/usr/bin:/bin"})
        for path in self.synced:  # and what the command made or removed goes back
            here = Path(self.local(path))
            if here.exists():
                host.files[path] = here.read_bytes()
            else:
                host.files.pop(path, None)
        return res.returncode, res.stdout.decode(), res.stderr.decode()


def until_serving(member: LocalMember, timeout: float = 30.0) -> None:
    """Poll until the member answers a linearizable read (quorum needed only a majority)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            member.etcdctl("endpoint", "health")
            return
        except subprocess.CalledProcessError as exc:
            if time.monotonic() > deadline:
                raise AssertionError(f"{member.member.name} never served: {exc.stderr}"
                                     ) from None
            time.sleep(0.3)


@pytest.fixture
def cluster(make_inventory: InventoryFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
            ) -> Any:
    client, peer = free_port(), free_port()

    def edit(hosts: dict, groups: dict, defaults: dict) -> None:
        for name, address in ADDRESSES.items():
            hosts[name]["hostname"] = address
        defaults["data"]["etcd"] = {"client_port": client, "peer_port": peer,
                                    "backup_keep_on_host": 2}

    inventory = make_inventory(edit)
    monkeypatch.chdir(tmp_path)
    spec = load_cluster_spec(inventory)
    ClusterPKI(spec, spec.state_dir).ensure()
    pki = ClusterPKI(spec, spec.state_dir)
    members = {m.name: LocalMember(spec, m, tmp_path / "hosts" / m.name, pki)
               for m in spec.role(C.ROLE_ETCD)}
    fleet = FakeFleet()
    for name, member in members.items():
        fleet.hosts[name] = FakeHost(name, handler=member)
    nr = open_nornir(inventory)
    install_fake(nr, fleet)
    try:
        for member in members.values():
            member.start()
        etcd.wait_for_quorum(spec, spec.state_dir, timeout=30)
        yield spec, nr, members
    finally:  # tmp data only: killed (by PID), not shut down gracefully one leader at a time
        for member in members.values():
            if member.proc is not None and member.proc.poll() is None:
                member.proc.kill()
        for member in members.values():
            member.stop()


def test_backup_then_restore_with_the_real_tools_brings_the_keys_back(cluster: Any) -> None:
    spec, nr, members = cluster
    first = members["etcd1"]
    first.etcdctl("put", "/marker/before", "kept")
    backup, pruned = etcd_backup.take_backup(nr, spec, spec.state_dir)
    assert pruned == [] and backup.total_keys >= 1 and backup.revision >= 2
    assert backup.path.stat().st_mode & 0o777 == 0o600
    verified, data = etcd_backup.verify_local(backup.path)  # sha256 against the sidecar
    assert verified == backup
    first.etcdctl("put", "/marker/after", "lost on restore")
    # quorum lost: two members gone and their data removed
    for name in ("etcd2", "etcd3"):
        members[name].stop()
        shutil.rmtree(members[name].root / "data")
    said: list[str] = []
    done = etcd_restore.restore(nr, spec, spec.state_dir, backup, data, say=said.append,
                                quorum_timeout=30)
    assert any("stop etcd" in line for line in said)
    for m in members.values():
        assert (m.root / "data" / "member").is_dir()
        assert m.proc is not None and m.proc.poll() is None
    assert (first.root / f"data.before-restore-{done.token.rsplit('-', 1)[-1]}").is_dir()
    for m in members.values():
        until_serving(m)
        assert m.etcdctl("get", "/marker/before", "--print-value-only").strip() == "kept"
        assert m.etcdctl("get", "/marker/after", "--print-value-only").strip() == ""
    listed = first.etcdctl("member", "list")
    assert sorted(line.split(", ")[2] for line in listed.splitlines()) == sorted(members)


def test_real_snapshot_status_rejects_a_file_that_is_not_a_snapshot(tmp_path: Path) -> None:
    """The check `etcd backup` and `etcd restore` trust, on a file that is no snapshot."""
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"not a snapshot" * 100)
    command = etcd_backup.status_command(str(junk))
    res = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=30,
                         env={"PATH": "/usr/bin:/bin"})
    assert res.returncode != 0
    with pytest.raises(SnapshotError, match="junk.db"):
        etcd_backup.parse_status(res.stdout, str(junk))


def test_the_timer_script_snapshots_checks_and_keeps_the_newest(cluster: Any) -> None:
    """The script the members' timer runs, rendered for etcd2 and run three times against the
    real member: each snapshot passes `snapshot status` and its sha256; two are kept."""
    spec, _, members = cluster
    member = members["etcd2"]
    (script,) = [f.content for f in files_for_host(spec, "etcd2")
                 if f.path == C.ETCD_BACKUP_SCRIPT]
    host = FakeHost("etcd2", handler=member)
    runs = [member(host, script, None) for _ in range(3)]
    assert [code for code, _, _ in runs] == [0, 0, 0], runs
    assert "deleted" in runs[-1][1] and "(keeping 2)" in runs[-1][1]
    backups = member.root / "backups"
    kept = sorted(backups.glob("etcd-*-etcd2.db"))
    assert len(kept) == 2 and oct(backups.stat().st_mode & 0o777) == "0o700"
    for path in kept:
        etcd_backup.parse_status(subprocess.run(
            ["bash", "-c", etcd_backup.status_command(str(path))], capture_output=True,
            text=True, check=True, env={"PATH": "/usr/bin:/bin"}).stdout, str(path))
        check = subprocess.run(["sha256sum", "-c", f"{path.name}.sha256"], cwd=backups,
                               capture_output=True, text=True)
        assert check.returncode == 0, check.stdout + check.stderr
    assert not list(backups.glob(".incomplete-*"))


def test_replace_a_wiped_member_rejoins_as_a_learner_and_is_promoted(cluster: Any) -> None:
    """`etcd replace etcd3` after etcd3 died and lost its data: a new member ID, the learner
    step, promoted once in sync, the keys written before there, every member a voter."""
    spec, nr, members = cluster
    members["etcd1"].etcdctl("put", "/marker/replace", "kept")

    def listed() -> dict[str, dict]:
        doc = json.loads(members["etcd1"].etcdctl("member", "list", "-w", "json"))
        return {m.get("name", ""): m for m in doc["members"]}

    old_id = listed()["etcd3"]["ID"]
    members["etcd3"].stop()
    shutil.rmtree(members["etcd3"].root / "data")
    said: list[str] = []
    done = etcd_replace.replace(nr, spec, spec.state_dir, "etcd3", say=said.append,
                                retry_every=0.2)
    assert any("as a learner" in line for line in said), said
    assert done.old_id == format(old_id, "x") and done.new_id != done.old_id
    until_serving(members["etcd3"])
    assert members["etcd3"].etcdctl("get", "/marker/replace", "--print-value-only"
                                    ).strip() == "kept"
    now = listed()
    assert sorted(now) == ["etcd1", "etcd2", "etcd3"]
    assert format(now["etcd3"]["ID"], "x") == done.new_id
    assert not any(m.get("isLearner") for m in now.values())
    assert (members["etcd3"].root / "etcd.conf.yml").read_text() == \
        'initial-cluster-state: "new"\n'  # the rendered config again: deploy stays a no-op
