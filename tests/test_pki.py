"""The cluster PKI: real chains (openssl verify), SANs, usages, modes, idempotence, renewal, CLI."""

from __future__ import annotations

import json
import socket
import ssl
import stat
import subprocess
import threading
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from typer.testing import CliRunner

from nornir_k8sha import constants as C
from nornir_k8sha.cli import app
from nornir_k8sha.exceptions import PKIError
from nornir_k8sha.pki import (
    RENEW_BEFORE_DAYS,
    CertPaths,
    ClusterPKI,
    bundle_for_host,
    expiry_report,
)
from nornir_k8sha.topology import ClusterSpec, load_cluster_spec
from tests.conftest import LAB_INVENTORY

ETCD = ("etcd1", "etcd2", "etcd3")


@pytest.fixture
def spec() -> ClusterSpec:
    return load_cluster_spec(LAB_INVENTORY)


@pytest.fixture
def pki(spec: ClusterSpec, tmp_path: Path) -> ClusterPKI:
    p = ClusterPKI(spec, tmp_path / "state")
    p.ensure()
    return p


def cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def sans(path: Path) -> set[str]:
    ext = cert(path).extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return {f"DNS:{d}" for d in ext.get_values_for_type(x509.DNSName)} | {
        f"IP:{i}" for i in ext.get_values_for_type(x509.IPAddress)}


def ekus(path: Path) -> set:
    return set(cert(path).extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)


def openssl_verify(ca: Path, leaf: Path, purpose: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["openssl", "verify", "-CAfile", str(ca), "-purpose", purpose,
                           str(leaf)], capture_output=True, text=True)


def snapshot(root: Path) -> dict[Path, tuple[bytes, int]]:
    return {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in root.rglob("*") if p.is_file()}


def leaves(p: ClusterPKI) -> list[tuple[CertPaths, CertPaths, str]]:
    """(leaf, its CA, openssl purpose) for every leaf certificate."""
    out = []
    for h in ETCD:
        out += [(p.etcd_server(h), p.etcd_ca, "sslserver"), (p.etcd_server(h), p.etcd_ca,
                                                               "sslclient"),
                (p.etcd_peer(h), p.etcd_ca, "sslserver"), (p.etcd_peer(h), p.etcd_ca,
                                                           "sslclient")]
    return out + [
        (p.apiserver_etcd_client, p.etcd_ca, "sslclient"),
        (p.healthcheck_client, p.etcd_ca, "sslclient"),
        (p.admin_client, p.kubernetes_ca, "sslclient"),
        (p.registry_server, p.registry_ca, "sslserver"),
    ]


# --- chains, names, usages ---------------------------------------------------------------------


def test_every_leaf_chains_to_its_ca_with_openssl(pki: ClusterPKI) -> None:
    for leaf, ca, purpose in leaves(pki):
        done = openssl_verify(ca.cert, leaf.cert, purpose)
        assert done.returncode == 0, (leaf.cert, purpose, done.stdout, done.stderr)
        assert done.stdout.strip().endswith(": OK")


def test_a_leaf_does_not_verify_against_another_ca(pki: ClusterPKI) -> None:
    done = openssl_verify(pki.kubernetes_ca.cert, pki.etcd_server("etcd1").cert, "sslserver")
    assert done.returncode != 0


def test_client_certificates_are_refused_as_servers(pki: ClusterPKI) -> None:
    for client in (pki.apiserver_etcd_client, pki.healthcheck_client, pki.admin_client):
        ca = pki.kubernetes_ca if client == pki.admin_client else pki.etcd_ca
        assert openssl_verify(ca.cert, client.cert, "sslserver").returncode != 0
    assert openssl_verify(pki.registry_ca.cert, pki.registry_server.cert,
                          "sslclient").returncode != 0


def test_sans_per_member_and_registry(pki: ClusterPKI, spec: ClusterSpec) -> None:
    for h in spec.role(C.ROLE_ETCD):
        assert sans(pki.etcd_server(h).cert) == {f"DNS:{h.name}", "DNS:localhost",
                                                 f"IP:{h.address}", "IP:127.0.0.1", "IP:::1"}
        assert sans(pki.etcd_peer(h).cert) == {f"DNS:{h.name}", f"IP:{h.address}"}
    assert sans(pki.registry_server.cert) == {"DNS:harbor.k8sha.lab", "DNS:harbor1",
                                              "IP:10.88.0.61"}


def test_subjects_and_key_usages(pki: ClusterPKI) -> None:
    server, client = ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH
    assert ekus(pki.etcd_server("etcd2").cert) == {server, client}
    assert ekus(pki.etcd_peer("etcd2").cert) == {server, client}
    assert ekus(pki.registry_server.cert) == {server}
    for c in (pki.apiserver_etcd_client, pki.healthcheck_client, pki.admin_client):
        assert ekus(c.cert) == {client}
    cn = cert(pki.apiserver_etcd_client.cert).subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    assert cn[0].value == "kube-apiserver-etcd-client"
    admin = cert(pki.admin_client.cert).subject
    assert admin.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == "system:masters"
    for ca in (pki.etcd_ca, pki.kubernetes_ca, pki.front_proxy_ca, pki.registry_ca):
        assert cert(ca.cert).extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    for leaf, _, _ in leaves(pki):
        assert not cert(leaf.cert).extensions.get_extension_for_class(
            x509.BasicConstraints).value.ca


def test_service_account_pair_matches(pki: ClusterPKI) -> None:
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_pem_private_key(pki.sa.key.read_bytes(), None)
    pub = serialization.load_pem_public_key(pki.sa.cert.read_bytes())
    assert key.public_key() == pub


def test_mtls_handshake_with_etcd_server_and_healthcheck_client(pki: ClusterPKI) -> None:
    """The files work for what they are for: a real TLS handshake, both sides verified."""
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(pki.etcd_server("etcd1").cert, pki.etcd_server("etcd1").key)
    server_ctx.load_verify_locations(pki.etcd_ca.cert)
    server_ctx.verify_mode = ssl.CERT_REQUIRED
    client_ctx = ssl.create_default_context(cafile=str(pki.etcd_ca.cert))
    client_ctx.load_cert_chain(pki.healthcheck_client.cert, pki.healthcheck_client.key)
    seen: dict[str, object] = {}
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]

        def serve() -> None:
            conn, _ = listener.accept()
            with server_ctx.wrap_socket(conn, server_side=True) as tls:
                seen["client"] = tls.getpeercert()
                tls.sendall(b"ok")

        t = threading.Thread(target=serve)
        t.start()
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
                client_ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            assert tls.recv(2) == b"ok"
        t.join(5)
    subject = dict(x[0] for x in seen["client"]["subject"])  # type: ignore[index]
    assert subject["commonName"] == "kube-etcd-healthcheck-client"


# --- files -------------------------------------------------------------------------------------


def test_modes_keys_0600_certs_0644_dirs_0700(pki: ClusterPKI) -> None:
    state = pki.state_dir
    paths = [state, *state.rglob("*")]
    assert len([p for p in paths if p.suffix == ".key"]) == 15
    assert len([p for p in paths if p.suffix == ".crt"]) == 14
    for p in paths:
        mode = stat.S_IMODE(p.stat().st_mode)
        if p.is_dir():
            assert mode == 0o700, p
        elif p.suffix == ".key" or p.name == ".lock":
            assert mode == 0o600, p
        else:
            assert mode == 0o644, p


def test_a_loosened_key_mode_is_tightened(pki: ClusterPKI) -> None:
    pki.healthcheck_client.key.chmod(0o644)
    statuses = pki.ensure()
    assert {s.action for s in statuses} == {"reused"}
    assert stat.S_IMODE(pki.healthcheck_client.key.stat().st_mode) == 0o600


# --- idempotence and change --------------------------------------------------------------------


def test_second_ensure_reuses_everything_byte_for_byte(pki: ClusterPKI) -> None:
    before = snapshot(pki.state_dir)
    statuses = ClusterPKI(pki.spec, pki.state_dir).ensure()
    assert len(statuses) == 15
    assert {s.action for s in statuses} == {"reused"}
    assert snapshot(pki.state_dir) == before


def test_changed_member_ip_regenerates_only_that_members_certs(
        pki: ClusterPKI, make_inventory) -> None:
    before = snapshot(pki.state_dir)

    def move_etcd2(hosts: dict, groups: dict, defaults: dict) -> None:
        hosts["etcd2"]["hostname"] = "10.88.0.39"

    spec2 = load_cluster_spec(make_inventory(move_etcd2))
    statuses = ClusterPKI(spec2, pki.state_dir).ensure()
    changed = {s.name: s for s in statuses if s.action != "reused"}
    assert set(changed) == {"etcd/members/etcd2/server", "etcd/members/etcd2/peer"}
    assert all(s.action == "regenerated" for s in changed.values())
    assert "+IP:10.88.0.39" in changed["etcd/members/etcd2/server"].reason
    assert "-IP:10.88.0.32" in changed["etcd/members/etcd2/server"].reason
    after = snapshot(pki.state_dir)
    rewritten = {p for p in after if after[p] != before.get(p)}
    assert {p.relative_to(pki.root).as_posix() for p in rewritten} == {
        "etcd/members/etcd2/server.crt", "etcd/members/etcd2/server.key",
        "etcd/members/etcd2/peer.crt", "etcd/members/etcd2/peer.key"}
    assert "IP:10.88.0.39" in sans(pki.etcd_peer("etcd2").cert)
    assert openssl_verify(pki.etcd_ca.cert, pki.etcd_peer("etcd2").cert,
                          "sslserver").returncode == 0


def test_removed_member_certificates_are_deleted(pki: ClusterPKI, make_inventory) -> None:
    def fourth_then_drop_third(hosts: dict, groups: dict, defaults: dict) -> None:
        hosts["etcd4"] = {**hosts["etcd3"], "hostname": "10.88.0.34"}
        del hosts["etcd3"]

    spec2 = load_cluster_spec(make_inventory(fourth_then_drop_third))
    statuses = ClusterPKI(spec2, pki.state_dir).ensure()
    changed = {s.name: s.action for s in statuses if s.action != "reused"}
    assert changed == {"etcd/members/etcd4/server": "created",
                       "etcd/members/etcd4/peer": "created",
                       "etcd/members/etcd3/peer": "removed",
                       "etcd/members/etcd3/server": "removed"}
    assert not (pki.root / "etcd" / "members" / "etcd3").exists()
    assert "etcd/members/etcd3/server" not in {e.name for e in expiry_report(pki.state_dir)}


def test_changed_registry_name_regenerates_only_the_registry_server(
        pki: ClusterPKI, make_inventory) -> None:
    def rename(hosts: dict, groups: dict, defaults: dict) -> None:
        defaults["data"]["registry"]["name"] = "registry.example.org"

    spec2 = load_cluster_spec(make_inventory(rename))
    changed = [s.name for s in ClusterPKI(spec2, pki.state_dir).ensure() if s.action != "reused"]
    assert changed == ["registry/server"]
    assert "DNS:registry.example.org" in sans(pki.registry_server.cert)


def test_missing_key_regenerates_its_certificate_only(pki: ClusterPKI) -> None:
    old = pki.etcd_peer("etcd3").cert.read_bytes()
    pki.etcd_peer("etcd3").key.unlink()
    statuses = pki.ensure()
    changed = [(s.name, s.action, s.reason) for s in statuses if s.action != "reused"]
    assert changed == [("etcd/members/etcd3/peer", "regenerated", "key missing")]
    assert pki.etcd_peer("etcd3").cert.read_bytes() != old
    assert openssl_verify(pki.etcd_ca.cert, pki.etcd_peer("etcd3").cert,
                          "sslserver").returncode == 0


def test_near_expiry_leaves_are_renewed_cas_kept(spec: ClusterSpec, tmp_path: Path) -> None:
    short = ClusterPKI(spec, tmp_path, leaf_days=RENEW_BEFORE_DAYS - 1).ensure()
    assert all(s.days_left is None or s.days_left < RENEW_BEFORE_DAYS
               for s in short if not s.is_ca)
    cas = {p: p.read_bytes() for p in tmp_path.rglob("ca.*")}
    statuses = ClusterPKI(spec, tmp_path).ensure()
    by_action: dict[str, set[str]] = {}
    for s in statuses:
        by_action.setdefault(s.action, set()).add(s.name)
    assert by_action["renewed"] == {s.name for s in short if not s.is_ca and s.not_after}
    assert {p: p.read_bytes() for p in tmp_path.rglob("ca.*")} == cas
    assert all(s.days_left >= 360 for s in statuses if s.action == "renewed")
    assert {s.action for s in ClusterPKI(spec, tmp_path).ensure()} == {"reused"}


def test_expiring_ca_is_reported_never_rotated(spec: ClusterSpec, tmp_path: Path) -> None:
    ClusterPKI(spec, tmp_path, ca_days=10).ensure()
    before = snapshot(tmp_path)
    statuses = ClusterPKI(spec, tmp_path).ensure()
    assert {s.action for s in statuses} == {"reused"}
    assert snapshot(tmp_path) == before
    etcd_ca = next(s for s in statuses if s.name == "etcd/ca")
    assert etcd_ca.is_ca and "expires in" in etcd_ca.reason
    # leaves never outlive their CA
    assert cert(ClusterPKI(spec, tmp_path).etcd_peer("etcd1").cert).not_valid_after_utc <= \
        cert(ClusterPKI(spec, tmp_path).etcd_ca.cert).not_valid_after_utc


def test_half_present_ca_is_an_error_naming_the_file(pki: ClusterPKI) -> None:
    before = snapshot(pki.state_dir)
    pki.etcd_ca.key.unlink()
    with pytest.raises(PKIError, match=str(pki.etcd_ca.key)):
        pki.ensure()
    assert {p for p in snapshot(pki.state_dir)} == set(before) - {pki.etcd_ca.key}


def test_unreadable_ca_key_error_carries_no_key_material(pki: ClusterPKI) -> None:
    secret = pki.kubernetes_ca.key.read_text()
    pki.kubernetes_ca.key.write_text(secret[:-60] + "garbage\n-----END EC PRIVATE KEY-----\n")
    with pytest.raises(PKIError) as err:
        pki.ensure()
    message = str(err.value)
    assert str(pki.kubernetes_ca.key) in message
    assert "PRIVATE KEY" not in message
    assert not any(line in message for line in secret.splitlines()[1:-1])


def test_a_new_ca_reissues_its_leaves(pki: ClusterPKI) -> None:
    pki.registry_ca.cert.unlink()
    pki.registry_ca.key.unlink()
    statuses = {s.name: s for s in pki.ensure() if s.action != "reused"}
    assert set(statuses) == {"registry/ca", "registry/server"}
    assert statuses["registry/server"].reason == "not signed by the current CA"
    assert openssl_verify(pki.registry_ca.cert, pki.registry_server.cert,
                          "sslserver").returncode == 0


# --- expiry report and bundles -----------------------------------------------------------------


def test_expiry_report(pki: ClusterPKI, tmp_path: Path) -> None:
    report = {e.name: e for e in expiry_report(pki.state_dir)}
    assert len(report) == 14  # every certificate; the sa pair has none
    assert report["etcd/ca"].is_ca and not report["etcd/members/etcd1/server"].is_ca
    assert 3640 <= report["kubernetes/ca"].days_left <= 3650
    assert 360 <= report["registry/server"].days_left <= 365
    assert expiry_report(tmp_path / "nothing-here") == []


def test_bundles_by_role(pki: ClusterPKI, spec: ClusterSpec) -> None:
    def remote(host: str) -> dict[str, tuple[Path, int]]:
        return {b.remote: (b.local, b.mode) for b in bundle_for_host(spec, host, pki.state_dir)}

    etcd1 = remote("etcd1")
    assert set(etcd1) == {C.ETCD_CA_CERT, C.ETCD_SERVER_CERT, C.ETCD_SERVER_KEY,
                          C.ETCD_PEER_CERT, C.ETCD_PEER_KEY}
    assert etcd1[C.ETCD_SERVER_KEY] == (pki.etcd_server("etcd1").key, 0o600)
    assert etcd1[C.ETCD_PEER_CERT] == (pki.etcd_peer("etcd1").cert, 0o644)
    master = remote("master2")
    k8s = C.KUBERNETES_PKI_DIR
    assert set(master) == {
        C.APISERVER_ETCD_CA_CERT, C.APISERVER_ETCD_CLIENT_CERT, C.APISERVER_ETCD_CLIENT_KEY,
        f"{k8s}/ca.crt", f"{k8s}/ca.key", f"{k8s}/front-proxy-ca.crt",
        f"{k8s}/front-proxy-ca.key", f"{k8s}/sa.key", f"{k8s}/sa.pub",
        f"{C.CONTAINERD_CERTS_DIR}/harbor.k8sha.lab/ca.crt"}
    assert master[f"{k8s}/sa.key"][1] == 0o600 and master[f"{k8s}/ca.key"][1] == 0o600
    assert master[C.APISERVER_ETCD_CA_CERT][0] == pki.etcd_ca.cert
    assert remote("worker1") == {f"{C.CONTAINERD_CERTS_DIR}/harbor.k8sha.lab/ca.crt":
                                 (pki.registry_ca.cert, 0o644)}
    assert set(remote("harbor1")) == {C.REGISTRY_CERT, C.REGISTRY_KEY}
    assert remote("lvs1") == {} and remote("switch1") == {}
    for host in spec.hosts:
        for b in bundle_for_host(spec, host, pki.state_dir):
            assert b.mode == (0o600 if b.remote.endswith(".key") else 0o644)


def test_bundle_without_pki_names_the_missing_file(spec: ClusterSpec, tmp_path: Path) -> None:
    with pytest.raises(PKIError, match="etcd/ca.crt: missing; run"):
        bundle_for_host(spec, "etcd1", tmp_path)
    with pytest.raises(PKIError, match="not in the inventory"):
        bundle_for_host(spec, "nohost", tmp_path)


# --- CLI ---------------------------------------------------------------------------------------


def test_cli_json_is_pure_and_second_run_reuses(tmp_path: Path) -> None:
    state = tmp_path / "state"
    args = ["pki", "-i", str(LAB_INVENTORY), "--state-dir", str(state), "--json"]
    first = CliRunner().invoke(app, args)
    assert first.exit_code == 0, first.output
    doc = json.loads(first.stdout)
    assert doc["ok"] and doc["cluster"] == "lab"
    assert {c["action"] for c in doc["certificates"]} == {"created"}
    server = next(c for c in doc["certificates"] if c["name"] == "etcd/members/etcd1/server")
    assert "IP:10.88.0.31" in server["sans"]
    second = CliRunner().invoke(app, args)
    assert second.exit_code == 0
    assert {c["action"] for c in json.loads(second.stdout)["certificates"]} == {"reused"}
    assert "PRIVATE KEY" not in first.output + second.output


def test_cli_table(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["pki", "-i", str(LAB_INVENTORY), "--state-dir",
                                      str(tmp_path / "s")], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "etcd/members/etcd2/peer" in result.stdout
    assert "IP:10.88.0.32" in result.stdout
    assert "15 certificates and keys: 15 created" in result.stdout


def test_cli_invalid_inventory_exits_2_and_writes_nothing(
        tmp_path: Path, make_inventory) -> None:
    def two_etcd(hosts: dict, groups: dict, defaults: dict) -> None:
        del hosts["etcd3"]
        hosts["etcd2"]["groups"] = ["workers"]

    state = tmp_path / "state"
    inv = make_inventory(two_etcd)
    result = CliRunner().invoke(app, ["pki", "-i", str(inv), "--state-dir", str(state),
                                      "--json"])
    assert result.exit_code == 2
    doc = json.loads(result.stdout)
    assert doc["valid"] is False and doc["inventory"] == str(inv)
    assert doc["errors"] and all(e["severity"] == "error" for e in doc["errors"])
    assert not state.exists()
    plain = CliRunner().invoke(app, ["pki", "-i", str(inv), "--state-dir", str(state)])
    assert plain.exit_code == 2 and "etcd" in plain.stderr


def test_cli_pki_error_exits_1(pki: ClusterPKI) -> None:
    pki.front_proxy_ca.cert.unlink()
    result = CliRunner().invoke(app, ["pki", "-i", str(LAB_INVENTORY), "--state-dir",
                                      str(pki.state_dir), "--json"])
    assert result.exit_code == 1
    assert json.loads(result.stdout)["ok"] is False
    assert "front-proxy-ca.key" in result.stderr
