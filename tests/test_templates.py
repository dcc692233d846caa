"""Template tests: render the lab and example inventories and check every file the way its own
program would — the real `haproxy -c`, `keepalived -t`, `vtysh -C`, `systemd-analyze verify`
where installed — and parse every YAML/TOML file against the schema its consumer accepts."""

from __future__ import annotations

import http.server
import re
import shutil
import socket
import ssl
import subprocess
import threading
import time
import tomllib
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

import pytest
import yaml

from nornir_k8sha import constants as C
from nornir_k8sha.pki import ClusterPKI, bundle_for_host
from nornir_k8sha.render import (
    COMPONENTS,
    UNRENDERED_SECRET,
    RenderedFile,
    files_for_component,
    files_for_host,
    render_all,
    render_tree,
)
from nornir_k8sha.tasks.kubeadm import TOKEN_PATTERN
from nornir_k8sha.topology import ClusterSpec, load_cluster_spec
from tests.conftest import EXAMPLE_INVENTORY, LAB_INVENTORY, REPO, is_root

INVENTORIES = {"lab": LAB_INVENTORY, "example": EXAMPLE_INVENTORY}
#: How long a real HAProxy may take to check its backends a few times (a bound, not a measure).
HAPROXY_SETTLE_S = 20


@pytest.fixture(scope="module", params=sorted(INVENTORIES))
def rendered(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
             ) -> tuple[ClusterSpec, dict[str, list[RenderedFile]], Path]:
    """(spec, files per host, tree dir) for the lab and for the example inventory."""
    spec = load_cluster_spec(INVENTORIES[request.param])
    out = tmp_path_factory.mktemp(f"render-{request.param}")
    return spec, render_tree(spec, out), out


def _files(rendered_: tuple, component: str) -> list[tuple[str, RenderedFile, Path]]:
    """(host, file, path in the tree) of one component, over all hosts."""
    _, files, out = rendered_
    found = [(h, f, out / h / f.path.lstrip("/")) for h, fs in files.items() for f in fs
             if f.component == component]
    assert found, f"no {component} file rendered"
    return found


def _one(spec: ClusterSpec, host: str, path: str) -> RenderedFile:
    matches = [f for f in files_for_host(spec, host) if f.path == path]
    assert len(matches) == 1, f"{host}: {path} rendered {len(matches)} times"
    return matches[0]


def _need(binary: str) -> str:
    path = shutil.which(binary)
    if path is None:
        pytest.skip(f"`{binary}` is not installed (scripts/setup.sh installs it)")
    return path


def _run(cmd: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60)


# --- which host gets what ---------------------------------------------------------------------


def test_every_host_gets_the_files_of_its_roles(rendered: tuple) -> None:
    spec, files, _ = rendered
    paths = {h: {f.path for f in fs} for h, fs in files.items()}
    first = spec.first_master.name
    for h in spec.hosts:
        got = paths[h.name]
        if h.has_role(C.ROLE_LVS):
            assert {C.KEEPALIVED_CONF, C.FRR_CONF, C.FRR_DAEMONS} <= got
        if h.has_role(C.ROLE_HAPROXY):
            assert {C.HAPROXY_CFG, C.REALSERVER_SYSCTL, C.REALSERVER_UNIT} <= got
        if h.has_role(C.ROLE_ETCD):
            assert {C.ETCD_CONF, C.ETCD_UNIT} <= got
        if h.has_role(C.ROLE_MASTERS) or h.has_role(C.ROLE_WORKERS):
            assert C.CONTAINERD_CONFIG in got
            assert any(p.endswith("/hosts.toml") for p in got)
        if h.name == first:
            assert C.KUBEADM_CONFIG in got and C.KUBEADM_JOIN_CONTROL_PLANE not in got
        elif h.has_role(C.ROLE_MASTERS):
            assert C.KUBEADM_JOIN_CONTROL_PLANE in got and C.KUBEADM_CONFIG not in got
        elif h.has_role(C.ROLE_WORKERS):
            assert C.KUBEADM_JOIN_WORKER in got
        if h.has_role(C.ROLE_HARBOR):
            assert {C.REGISTRY_CONFIG, C.HARBOR_YML} <= got
        if h.has_role(C.ROLE_SWITCHES):
            assert got == {C.SWITCH_BGP_CONFIG}
        if not h.has_role(C.ROLE_SWITCHES):
            assert all(p.startswith("/") for p in got), got


def test_tree_holds_every_file_with_its_mode(rendered: tuple) -> None:
    spec, files, out = rendered
    for host, fs in files.items():
        for f in fs:
            on_disk = out / host / f.path.lstrip("/")
            assert on_disk.read_text() == f.content
            assert on_disk.stat().st_mode & 0o777 == f.mode, f"{host}:{f.path}"
    assert _one(spec, spec.first_master.name, C.KUBEADM_CONFIG).mode == 0o600


def test_rendering_is_deterministic(rendered: tuple) -> None:
    """A second deploy must see identical files, or it would report changes."""
    spec, files, _ = rendered
    again = render_all(spec)
    assert {h: [(f.path, f.content) for f in fs] for h, fs in again.items()} == {
        h: [(f.path, f.content) for f in fs] for h, fs in files.items()}


def test_component_api() -> None:
    spec = load_cluster_spec(LAB_INVENTORY)
    assert files_for_component(spec, "etcd1", "haproxy") == []
    got = files_for_component(spec, spec.host("haproxy1"), "haproxy")
    assert [f.path for f in got] == [C.HAPROXY_CFG]
    assert got[0].service == "haproxy"
    assert got[0].validate_command("/tmp/x.cfg") == "haproxy -c -f /tmp/x.cfg"
    assert got[0].validate_command() == f"haproxy -c -f {C.HAPROXY_CFG}"
    with pytest.raises(ValueError, match="unknown component 'haproxyy'"):
        files_for_component(spec, "haproxy1", "haproxyy")
    assert len(COMPONENTS) == len(set(COMPONENTS))


# --- HAProxy ----------------------------------------------------------------------------------


def _with_bundle(spec: ClusterSpec, host: str, text: str, under: str, state: Path, base: Path
                 ) -> str:
    """`text` (a rendered config) with the files it references under the on-host dir `under`
    placed in `base/pki/` from the host's PKI bundle (PKI in `state`), paths rewritten."""
    (base / "pki").mkdir(parents=True, exist_ok=True)
    for f in bundle_for_host(spec, host, state):
        if str(f.remote).startswith(under + "/"):
            shutil.copy(f.local, base / "pki" / Path(str(f.remote)).name)
    return text.replace(under + "/", f"{base}/pki/")


def _haproxy_check(spec: ClusterSpec, host: str, cfg: str, base: Path
                   ) -> subprocess.CompletedProcess[str]:
    """`haproxy -c` of `cfg` as it would run on `host`: its CA file placed from its bundle."""
    binary = _need("haproxy")
    ClusterPKI(spec, base / "state").ensure()
    path = base / "haproxy.cfg"
    path.write_text(_with_bundle(spec, host, cfg, C.HAPROXY_PKI_DIR, base / "state", base))
    return _run([binary, "-c", "-f", str(path)])


def test_haproxy_cfg_passes_haproxy_check(rendered: tuple, tmp_path: Path) -> None:
    spec, _, _ = rendered
    for h in spec.role(C.ROLE_HAPROXY):
        res = _haproxy_check(spec, h.name, _one(spec, h.name, C.HAPROXY_CFG).content,
                             tmp_path / h.name)
        assert res.returncode == 0, f"{h.name}: {res.stdout}{res.stderr}"
        assert "WARNING" not in res.stdout + res.stderr, f"{h.name}: {res.stdout}{res.stderr}"


def test_haproxy_check_rejects_a_broken_cfg(tmp_path: Path) -> None:
    """The validator above is live: a typo fails it, and so does a CA file that is not there."""
    spec = load_cluster_spec(LAB_INVENTORY)
    cfg = _one(spec, "haproxy1", C.HAPROXY_CFG).content
    assert _haproxy_check(spec, "haproxy1", cfg, tmp_path / "good").returncode == 0
    typo = cfg.replace("balance leastconn", "balance leastconnn")
    assert _haproxy_check(spec, "haproxy1", typo, tmp_path / "typo").returncode != 0
    (tmp_path / "no-ca.cfg").write_text(cfg.replace(C.HAPROXY_KUBERNETES_CA,
                                                    str(tmp_path / "absent.crt")))
    assert _run([_need("haproxy"), "-c", "-f", str(tmp_path / "no-ca.cfg")]).returncode != 0


def test_haproxy_verifies_the_apiservers_with_the_cluster_ca(rendered: tuple, tmp_path: Path
                                                             ) -> None:
    """Every apiserver health check verifies the certificate: the cluster's Kubernetes CA (which
    signs every apiserver certificate), placed on the HAProxy node by its PKI bundle, and the
    master's own name (a SAN of each apiserver certificate: kubeadm adds the node name)."""
    spec, _, _ = rendered
    ClusterPKI(spec, tmp_path).ensure()
    for h in spec.role(C.ROLE_HAPROXY):
        cfg = _one(spec, h.name, C.HAPROXY_CFG).content
        assert "verify none" not in cfg
        servers = re.findall(r"^    server (\S+) \S+ (.*)$", cfg, re.M)
        assert servers
        for name, opts in servers:
            assert f"check-ssl verify required ca-file {C.HAPROXY_KUBERNETES_CA} " \
                   f"verifyhost {name} " in opts
        bundle = {str(f.remote): f.local for f in bundle_for_host(spec, h.name, tmp_path)}
        assert bundle[C.HAPROXY_KUBERNETES_CA] == ClusterPKI(spec, tmp_path).kubernetes_ca.cert
    for doc in ("deploy.md", "inventory.md"):  # where a user looks for what lands on the node
        assert C.HAPROXY_KUBERNETES_CA in (REPO / "docs" / doc).read_text(), doc


def _apiserver_cert(base: Path, name: str, san: str, ca: tuple[Path, Path]) -> tuple[Path, Path]:
    """A serving certificate for DNS:`san`, signed by `ca` (cert, key), with openssl."""
    key, csr, crt, ext = (base / f"{name}.{x}" for x in ("key", "csr", "crt", "ext"))
    ext.write_text(f"subjectAltName=DNS:{san},IP:127.0.0.1\nextendedKeyUsage=serverAuth\n")
    for cmd in (["openssl", "req", "-new", "-newkey", "ec", "-pkeyopt",
                 "ec_paramgen_curve:P-256", "-nodes", "-keyout", key, "-out", csr,
                 "-subj", "/CN=kube-apiserver"],
                ["openssl", "x509", "-req", "-in", csr, "-CA", ca[0], "-CAkey", ca[1],
                 "-CAcreateserial", "-days", "1", "-extfile", ext, "-out", crt]):
        assert _run([str(c) for c in cmd]).returncode == 0
    return crt, key


class _Healthz(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args: Any) -> None:
        pass


def _tls_healthz(cert: Path, key: Path) -> http.server.ThreadingHTTPServer:
    """An HTTPS /healthz answering 200 on a free loopback port, in a thread."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Healthz)
    server.handle_error = lambda *a: None  # type: ignore[method-assign]  # refused handshakes
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    server.socket = ctx.wrap_socket(server.socket, server_side=True, do_handshake_on_connect=False)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def _haproxy_states(sock: Path) -> dict[str, str]:
    """server -> "status last-check" (e.g. "UP L7OK") of backend apiserver, from the admin
    socket."""
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(str(sock))
        s.sendall(b"show stat\n")
        data = b"".join(iter(lambda: s.recv(65536), b""))
    rows = [line.split(",") for line in data.decode().splitlines()]
    return {r[1]: f"{r[17]} {r[36]}" for r in rows if r[0] == "apiserver" and r[1] != "BACKEND"}


def test_real_haproxy_marks_down_an_apiserver_it_cannot_verify(tmp_path: Path) -> None:
    """The rendered backend, run by the real HAProxy against three HTTPS /healthz stand-ins on
    loopback: a certificate of the cluster CA naming the master is UP; one of the cluster CA for
    another name, and one of a foreign CA naming the master, are DOWN although /healthz says 200."""
    binary = _need("haproxy")
    _need("openssl")
    spec = load_cluster_spec(LAB_INVENTORY)
    pki = ClusterPKI(spec, tmp_path / "state")
    pki.ensure()
    ca = (pki.kubernetes_ca.cert, pki.kubernetes_ca.key)
    foreign = (tmp_path / "foreign-ca.crt", tmp_path / "foreign-ca.key")
    assert _run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                 "-nodes", "-keyout", str(foreign[1]), "-out", str(foreign[0]), "-subj",
                 "/CN=foreign", "-days", "1"]).returncode == 0
    m1, m2, m3 = (m.name for m in spec.role(C.ROLE_MASTERS))
    servers = {m1: _tls_healthz(*_apiserver_cert(tmp_path, m1, m1, ca)),
               m2: _tls_healthz(*_apiserver_cert(tmp_path, m2, "someone-else", ca)),
               m3: _tls_healthz(*_apiserver_cert(tmp_path, m3, m3, foreign))}
    cfg = _one(spec, "haproxy1", C.HAPROXY_CFG).content
    backend = "backend apiserver" + cfg.split("\nbackend apiserver", 1)[1].split("\n\n", 1)[0]
    for m in spec.role(C.ROLE_MASTERS):
        backend = backend.replace(f" {m.address}:{spec.settings.apiserver_bind_port} ",
                                  f" 127.0.0.1:{servers[m.name].server_address[1]} ")
    sock = tmp_path / "admin.sock"
    defaults = "defaults" + cfg.split("\ndefaults", 1)[1].split("\n\n", 1)[0]
    text = f"global\n    stats socket {sock} mode 600 level admin\n\n{defaults}\n\n{backend}\n"
    path = tmp_path / "haproxy.cfg"
    path.write_text(_with_bundle(spec, "haproxy1", text, C.HAPROXY_PKI_DIR, tmp_path / "state",
                                 tmp_path))
    proc = subprocess.Popen([binary, "-f", str(path)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    states: dict[str, str] = {}

    def settled() -> bool:  # HAProxy starts servers UP: wait for a passed check on master1
        return states.get(m1) == "UP L7OK" and all(
            states.get(m, "").startswith("DOWN") for m in (m2, m3))

    try:
        deadline = time.monotonic() + HAPROXY_SETTLE_S  # bounds the wait only
        while time.monotonic() < deadline and not settled():
            time.sleep(0.2)
            if sock.exists():
                states = _haproxy_states(sock)
    finally:
        proc.kill()
        proc.wait()
        for server in servers.values():
            server.shutdown()
            server.server_close()
    assert settled(), f"{states} {proc.stderr.read() if proc.stderr else ''}"


def test_haproxy_cfg_content(rendered: tuple) -> None:
    spec, _, _ = rendered
    s = spec.settings
    for h in spec.role(C.ROLE_HAPROXY):
        cfg = _one(spec, h.name, C.HAPROXY_CFG).content
        assert f"stats socket {C.HAPROXY_STATS_SOCKET} mode 660 level admin" in cfg
        assert re.search(r"^defaults\n(    .*\n)*    mode tcp$", cfg, re.M)
        front = cfg.split("frontend apiserver", 1)[1].split("\n\n", 1)[0]
        assert f"bind {spec.vip}:{s.apiserver_port}" in front
        assert f"bind {h.address}:{s.apiserver_port}" in front
        assert "option httpchk GET /healthz" in cfg
        assert "http-check expect status 200" in cfg
        servers = re.findall(r"^    server (\S+) (\S+) (.*)$", cfg, re.M)
        assert [(n, a) for n, a, _ in servers] == [
            (m.name, f"{m.address}:{s.apiserver_bind_port}") for m in spec.role(C.ROLE_MASTERS)]
        for name, _, opts in servers:
            assert opts == (f"check check-ssl verify required ca-file {C.HAPROXY_KUBERNETES_CA} "
                            f"verifyhost {name} inter {s.haproxy.check_inter_ms} "
                            f"fall {s.haproxy.check_fall} rise {s.haproxy.check_rise} "
                            "on-marked-down shutdown-sessions")
        assert f"bind {h.address}:{s.haproxy.stats_port}" in cfg
        assert "stats uri /stats" in cfg


def test_haproxy_timing_in_inventory_changes_the_cfg(make_inventory: Any) -> None:
    def tighter(hosts: dict, groups: dict, defaults: dict) -> None:
        defaults["data"]["haproxy"]["check_inter_ms"] = 250
        defaults["data"]["haproxy"]["check_fall"] = 4

    before = _one(load_cluster_spec(make_inventory()), "haproxy1", C.HAPROXY_CFG).content
    after = _one(load_cluster_spec(make_inventory(tighter)), "haproxy1", C.HAPROXY_CFG).content
    assert before != after
    assert "inter 500 fall 2 rise 2" in before
    assert "inter 250 fall 4 rise 2" in after and "inter 500" not in after
    assert "~1000 ms" in after  # the documented time-to-down: fall x inter
    assert "on-marked-down shutdown-sessions" in before


def test_haproxy_can_keep_the_sessions_of_a_backend_marked_down(make_inventory: Any) -> None:
    def keep(hosts: dict, groups: dict, defaults: dict) -> None:
        defaults["data"]["haproxy"]["shutdown_sessions_on_down"] = False

    cfg = _one(load_cluster_spec(make_inventory(keep)), "haproxy1", C.HAPROXY_CFG).content
    assert "on-marked-down" not in cfg.split("backend apiserver", 1)[1]


# --- keepalived (LVS) -------------------------------------------------------------------------


def _keepalived_check(path: Path) -> subprocess.CompletedProcess[str]:
    """`keepalived -t -f FILE`. keepalived also checks that the interfaces exist, so as root it
    runs in a fresh network namespace holding bridges with the configured names."""
    binary = _need("keepalived")
    text = path.read_text()
    ifaces = sorted(set(re.findall(r"^\s*interface (\S+)", text, re.M))
                    | set(re.findall(r"\sdev (\S+)", text)))
    existing = set(Path("/sys/class/net").iterdir()) if Path("/sys/class/net").exists() else set()
    if all(Path("/sys/class/net", i) in existing for i in ifaces):
        return _run([binary, "-t", "-f", str(path)])
    if not is_root() or shutil.which("unshare") is None:
        pytest.skip(f"interfaces {ifaces} do not exist here and a namespace needs root")
    script = "".join(f"ip link add {i} type bridge && " for i in ifaces)
    return _run(["unshare", "--net", "sh", "-c", f"{script}{binary} -t -f {path}"])


def test_keepalived_conf_passes_keepalived_check(rendered: tuple) -> None:
    for host, _, path in _files(rendered, "keepalived"):
        res = _keepalived_check(path)
        assert res.returncode == 0, f"{host}: {res.stdout}{res.stderr}"
        assert "WARNING" not in res.stderr, f"{host}: {res.stderr}"


def test_keepalived_check_rejects_a_broken_conf(tmp_path: Path) -> None:
    spec = load_cluster_spec(LAB_INVENTORY)
    bad = tmp_path / "keepalived.conf"
    bad.write_text(_one(spec, "lvs1", C.KEEPALIVED_CONF).content.replace(
        "connect_port", "connect_prot"))
    assert _keepalived_check(bad).returncode != 0


def test_keepalived_conf_content(rendered: tuple) -> None:
    spec, _, _ = rendered
    s = spec.settings
    for h in spec.role(C.ROLE_LVS):
        conf = _one(spec, h.name, C.KEEPALIVED_CONF).content
        iface = h.data.interface or s.vrrp.interface
        assert f"router_id {h.name}\n" in conf
        assert "vrrp_garp_master_refresh" in conf
        assert f"vrrp_version {s.vrrp.version}\n" in conf
        assert "state BACKUP\n" in conf and "nopreempt\n" in conf and "state MASTER" not in conf
        assert f"priority {spec.vrrp_priorities[h.name]}\n" in conf
        assert f"virtual_router_id {s.vrrp.router_id}\n" in conf
        assert f"interface {iface}\n" in conf
        assert f"{spec.vip}/32 dev {iface}" in conf
        assert f"virtual_server {spec.vip} {s.apiserver_port} {{" in conf
        assert f"lb_algo {s.lvs.scheduler}\n" in conf and "lb_kind DR\n" in conf
        reals = re.findall(r"real_server (\S+) (\d+) \{", conf)
        assert reals == [(str(x.address), str(s.apiserver_port))
                         for x in spec.role(C.ROLE_HAPROXY)]
        assert conf.count(f"connect_port {s.apiserver_port}\n") == len(reals)
    prios = [spec.vrrp_priorities[h.name] for h in spec.role(C.ROLE_LVS)]
    assert len(set(prios)) == len(prios)


def test_keepalived_vrrp2_whole_seconds_and_auth(make_inventory: Any, tmp_path: Path) -> None:
    def v2(hosts: dict, groups: dict, defaults: dict) -> None:
        defaults["data"]["vrrp"].update(version=2, advert_int=1, auth_pass="s3cret")

    spec = load_cluster_spec(make_inventory(v2))
    conf = _one(spec, "lvs1", C.KEEPALIVED_CONF).content
    assert "advert_int 1\n" in conf and "vrrp_version 2\n" in conf
    assert "auth_type PASS" in conf
    path = tmp_path / "keepalived.conf"
    path.write_text(conf)
    res = _keepalived_check(path)
    assert res.returncode == 0, res.stderr
    # v3 carries no authentication
    v3 = _one(load_cluster_spec(LAB_INVENTORY), "lvs1", C.KEEPALIVED_CONF).content
    assert "advert_int 0.1\n" in v3 and "authentication" not in v3


# --- real servers (HAProxy nodes) -------------------------------------------------------------


def test_realserver_sysctls_and_unit(rendered: tuple) -> None:
    spec, _, _ = rendered
    for h in spec.role(C.ROLE_HAPROXY):
        iface = h.data.interface or spec.settings.vrrp.interface
        sysctl = _one(spec, h.name, C.REALSERVER_SYSCTL).content
        settings = dict(
            (k.strip(), v.strip()) for k, v in
            (ln.split("=", 1) for ln in sysctl.splitlines() if ln and not ln.startswith("#")))
        assert settings == {
            f"net.ipv4.conf.{dev}.{key}": val
            for dev in ("all", "lo", iface) for key, val in (("arp_ignore", "1"),
                                                              ("arp_announce", "2"))}
        unit = _one(spec, h.name, C.REALSERVER_UNIT)
        assert unit.service == C.REALSERVER_SERVICE
        assert C.REALSERVER_UNIT.endswith(f"/{C.REALSERVER_SERVICE}.service")
        assert f"ExecStart=/usr/sbin/ip address replace {spec.vip}/32 dev lo\n" in unit.content
        assert "Type=oneshot" in unit.content and "RemainAfterExit=yes" in unit.content
        assert "Before=network.target haproxy.service" in unit.content
        assert "WantedBy=multi-user.target" in unit.content  # persistent across reboot
        assert f"sysctl -q -p {C.REALSERVER_SYSCTL}" in unit.content


@pytest.mark.parametrize("path", [C.REALSERVER_UNIT, C.ETCD_UNIT])
def test_units_pass_systemd_analyze(path: str, tmp_path: Path) -> None:
    binary = _need("systemd-analyze")
    spec = load_cluster_spec(LAB_INVENTORY)
    host = spec.role(C.ROLE_HAPROXY if path == C.REALSERVER_UNIT else C.ROLE_ETCD)[0]
    unit = tmp_path / Path(path).name
    unit.write_text(_one(spec, host.name, path).content)
    res = _run([binary, "verify", str(unit)])
    assert res.returncode == 0 and "Unknown" not in res.stderr, res.stderr


def test_etcd_snapshot_timer_and_unit_pass_systemd_analyze(tmp_path: Path) -> None:
    """The members' snapshot timer, its oneshot unit and script, as systemd would load them
    (the script's path is mapped into tmp: systemd-analyze checks ExecStart exists)."""
    binary = _need("systemd-analyze")
    spec = load_cluster_spec(LAB_INVENTORY)
    host = spec.role(C.ROLE_ETCD)[0].name
    script = tmp_path / "k8sha-etcd-backup"
    script.write_text(_one(spec, host, C.ETCD_BACKUP_SCRIPT).content)
    script.chmod(0o755)
    assert _run(["bash", "-n", str(script)]).returncode == 0
    for path in (C.ETCD_BACKUP_UNIT, C.ETCD_BACKUP_TIMER):
        text = _one(spec, host, path).content.replace(C.ETCD_BACKUP_SCRIPT, str(script))
        (tmp_path / Path(path).name).write_text(text)
    timer = _one(spec, host, C.ETCD_BACKUP_TIMER).content
    assert "OnUnitActiveSec=30min\n" in timer and "OnActiveSec=" in timer
    res = _run([binary, "verify", *(str(tmp_path / Path(p).name)
                                    for p in (C.ETCD_BACKUP_TIMER, C.ETCD_BACKUP_UNIT))])
    assert res.returncode == 0 and "Unknown" not in res.stderr, res.stderr
    assert "Failed to parse" not in res.stderr, res.stderr


# --- etcd -------------------------------------------------------------------------------------

#: Every key etcd 3.4's config file accepts (embed.Config / configYAML yaml tags). etcd ignores
#: unknown keys silently, so a typo here would otherwise fall back to a default unnoticed.
ETCD_34_KEYS = frozenset("""
name data-dir wal-dir snapshot-count heartbeat-interval election-timeout
initial-election-tick-advance quota-backend-bytes backend-batch-interval backend-batch-limit
max-txn-ops max-request-bytes grpc-keepalive-min-time grpc-keepalive-interval
grpc-keepalive-timeout listen-peer-urls listen-client-urls advertise-client-urls
initial-advertise-peer-urls listen-metrics-urls max-snapshots max-wals cors host-whitelist
initial-cluster initial-cluster-state initial-cluster-token strict-reconfig-check
enable-v2 enable-pprof enable-grpc-gateway auto-compaction-mode auto-compaction-retention
discovery discovery-fallback discovery-proxy discovery-srv discovery-srv-name
client-transport-security peer-transport-security cipher-suites pre-vote
auth-token bcrypt-cost logger log-outputs log-level debug log-package-levels
force-new-cluster unsafe-no-fsync experimental-initial-corrupt-check
experimental-corrupt-check-time experimental-enable-lease-checkpoint
experimental-compaction-batch-limit experimental-watch-progress-notify-interval
experimental-warning-apply-duration experimental-backend-bbolt-freelist-type
""".split())
ETCD_TLS_KEYS = frozenset({"cert-file", "key-file", "client-cert-auth", "trusted-ca-file",
                           "auto-tls"})


def test_etcd_config(rendered: tuple) -> None:
    spec, _, _ = rendered
    e = spec.settings.etcd
    for h in spec.role(C.ROLE_ETCD):
        doc = yaml.safe_load(_one(spec, h.name, C.ETCD_CONF).content)
        assert set(doc) <= ETCD_34_KEYS, set(doc) - ETCD_34_KEYS
        assert doc["name"] == h.name
        assert doc["data-dir"] == e.data_dir
        assert doc["initial-cluster"] == spec.etcd_initial_cluster()
        assert doc["initial-cluster-state"] == "new"
        assert doc["initial-cluster-token"] == e.cluster_token
        assert doc["listen-peer-urls"] == doc["initial-advertise-peer-urls"] == (
            f"https://{h.address}:{e.peer_port}")
        assert f"https://{h.address}:{e.client_port}" in doc["listen-client-urls"].split(",")
        assert doc["advertise-client-urls"] == f"https://{h.address}:{e.client_port}"
        assert doc["listen-metrics-urls"].startswith("http://127.0.0.1:")
        assert (doc["heartbeat-interval"], doc["election-timeout"]) == (
            e.heartbeat_interval_ms, e.election_timeout_ms)
        assert doc["quota-backend-bytes"] == e.quota_backend_bytes
        assert doc["snapshot-count"] == e.snapshot_count
        assert doc["enable-grpc-gateway"] is True
        for section, cert, key in (("client-transport-security", C.ETCD_SERVER_CERT,
                                    C.ETCD_SERVER_KEY),
                                   ("peer-transport-security", C.ETCD_PEER_CERT,
                                    C.ETCD_PEER_KEY)):
            tls = doc[section]
            assert set(tls) <= ETCD_TLS_KEYS
            assert tls == {"cert-file": cert, "key-file": key, "client-cert-auth": True,
                           "trusted-ca-file": C.ETCD_CA_CERT, "auto-tls": False}
        unit = _one(spec, h.name, C.ETCD_UNIT).content
        assert "Type=notify" in unit and "Restart=on-failure" in unit
        assert f"ExecStart=/usr/bin/etcd --config-file {C.ETCD_CONF}\n" in unit
        assert "LimitNOFILE=" in unit


# --- kubeadm ----------------------------------------------------------------------------------

# kubeadm's v1beta4 schema (kubernetes.io/docs/reference/config-api/kubeadm-config.v1beta4/ and
# cmd/kubeadm/app/apis/kubeadm/v1beta4/types.go): allowed keys per object. A key not listed is
# a typo kubeadm would reject (strict decoding) — the test fails on it.
_ANY = None
NODE_REGISTRATION = {"name": _ANY, "criSocket": _ANY, "taints": _ANY, "kubeletExtraArgs": _ANY,
                     "ignorePreflightErrors": _ANY, "imagePullPolicy": _ANY,
                     "imagePullSerial": _ANY}
API_ENDPOINT = {"advertiseAddress": _ANY, "bindPort": _ANY}
TYPEMETA = {"apiVersion": _ANY, "kind": _ANY}
KUBEADM_SCHEMA: dict[str, dict[str, Any]] = {
    "InitConfiguration": {
        **TYPEMETA, "bootstrapTokens": _ANY, "dryRun": _ANY,
        "nodeRegistration": NODE_REGISTRATION, "localAPIEndpoint": API_ENDPOINT,
        "certificateKey": _ANY, "skipPhases": _ANY, "patches": {"directory": _ANY},
        "timeouts": _ANY,
    },
    "ClusterConfiguration": {
        **TYPEMETA,
        "etcd": {"local": _ANY, "external": {"endpoints": _ANY, "caFile": _ANY,
                                             "certFile": _ANY, "keyFile": _ANY}},
        "networking": {"serviceSubnet": _ANY, "podSubnet": _ANY, "dnsDomain": _ANY},
        "kubernetesVersion": _ANY, "controlPlaneEndpoint": _ANY,
        "apiServer": {"extraArgs": _ANY, "extraVolumes": _ANY, "extraEnvs": _ANY,
                      "certSANs": _ANY},
        "controllerManager": {"extraArgs": _ANY, "extraVolumes": _ANY, "extraEnvs": _ANY},
        "scheduler": {"extraArgs": _ANY, "extraVolumes": _ANY, "extraEnvs": _ANY},
        "dns": {"imageRepository": _ANY, "imageTag": _ANY, "disabled": _ANY},
        "proxy": {"disabled": _ANY}, "certificatesDir": _ANY, "imageRepository": _ANY,
        "featureGates": _ANY, "clusterName": _ANY, "encryptionAlgorithm": _ANY,
        "certificateValidityPeriod": _ANY, "caCertificateValidityPeriod": _ANY,
    },
    "JoinConfiguration": {
        **TYPEMETA, "dryRun": _ANY, "nodeRegistration": NODE_REGISTRATION,
        "caCertPath": _ANY,
        "discovery": {"bootstrapToken": {"token": _ANY, "apiServerEndpoint": _ANY,
                                         "caCertHashes": _ANY,
                                         "unsafeSkipCAVerification": _ANY},
                      "file": {"kubeConfigPath": _ANY}, "tlsBootstrapToken": _ANY},
        "controlPlane": {"localAPIEndpoint": API_ENDPOINT, "certificateKey": _ANY},
        "skipPhases": _ANY, "patches": {"directory": _ANY}, "timeouts": _ANY,
    },
}


def schema_errors(doc: Any, schema: dict[str, Any] | None, where: str = "") -> list[str]:
    """Keys of `doc` that `schema` does not allow, recursively (None: anything goes)."""
    if schema is None or not isinstance(doc, dict):
        return []
    errors = []
    for key, value in doc.items():
        if key not in schema:
            errors.append(f"{where}{key}")
        else:
            errors += schema_errors(value, schema[key], f"{where}{key}.")
    return errors


def _kubeadm_docs(content: str) -> dict[str, dict[str, Any]]:
    docs = [d for d in yaml.safe_load_all(content) if d]
    kinds = [d["kind"] for d in docs]
    assert len(kinds) == len(set(kinds))
    return {d["kind"]: d for d in docs}


def _check_kubeadm_doc(doc: dict[str, Any]) -> None:
    kind = doc["kind"]
    if kind == "KubeletConfiguration":
        assert doc["apiVersion"] == "kubelet.config.k8s.io/v1beta1"
        return
    assert doc["apiVersion"] == "kubeadm.k8s.io/v1beta4"
    assert schema_errors(doc, KUBEADM_SCHEMA[kind]) == [], kind
    if kind == "ClusterConfiguration":
        return
    nr = doc["nodeRegistration"]
    args = nr["kubeletExtraArgs"]
    assert isinstance(args, list) and all(set(a) == {"name", "value"} for a in args)
    assert nr["criSocket"] == C.CONTAINERD_SOCKET


def test_kubeadm_schema_check_catches_a_typo() -> None:
    doc = {"apiVersion": "kubeadm.k8s.io/v1beta4", "kind": "ClusterConfiguration",
           "etcd": {"external": {"endpoints": [], "caFlie": "x"}}, "controlPlaneEndPoint": "x"}
    assert schema_errors(doc, KUBEADM_SCHEMA["ClusterConfiguration"]) == [
        "etcd.external.caFlie", "controlPlaneEndPoint"]


def test_kubeadm_init_config(rendered: tuple) -> None:
    spec, _, _ = rendered
    s = spec.settings
    first = spec.first_master
    docs = _kubeadm_docs(_one(spec, first.name, C.KUBEADM_CONFIG).content)
    assert set(docs) == {"InitConfiguration", "ClusterConfiguration", "KubeletConfiguration"}
    for doc in docs.values():
        _check_kubeadm_doc(doc)
    init, cluster = docs["InitConfiguration"], docs["ClusterConfiguration"]
    assert init["localAPIEndpoint"] == {"advertiseAddress": str(first.address),
                                        "bindPort": s.apiserver_bind_port}
    assert init["nodeRegistration"]["name"] == first.name
    assert {"name": "node-ip", "value": str(first.address)} in (
        init["nodeRegistration"]["kubeletExtraArgs"])
    assert cluster["controlPlaneEndpoint"] == f"{spec.vip}:{s.apiserver_port}"
    assert cluster["kubernetesVersion"] == f"v{s.kubernetes.version}"
    assert cluster["clusterName"] == spec.name
    assert cluster["networking"] == {"podSubnet": str(s.kubernetes.pod_subnet),
                                     "serviceSubnet": str(s.kubernetes.service_subnet),
                                     "dnsDomain": s.kubernetes.dns_domain}
    assert cluster["etcd"]["external"] == {
        "endpoints": spec.etcd_endpoints(), "caFile": C.APISERVER_ETCD_CA_CERT,
        "certFile": C.APISERVER_ETCD_CLIENT_CERT, "keyFile": C.APISERVER_ETCD_CLIENT_KEY}
    assert all(p.startswith(C.KUBERNETES_ETCD_PKI_DIR + "/")
               for p in list(cluster["etcd"]["external"].values())[1:])
    sans = cluster["apiServer"]["certSANs"]
    assert str(spec.vip) in sans
    for h in (*spec.role(C.ROLE_MASTERS), *spec.role(C.ROLE_HAPROXY), *spec.role(C.ROLE_LVS)):
        assert h.name in sans and str(h.address) in sans
    assert docs["KubeletConfiguration"]["cgroupDriver"] == "systemd"


def test_kubeadm_join_configs(rendered: tuple) -> None:
    spec, _, _ = rendered
    s = spec.settings
    endpoint = f"{spec.vip}:{s.apiserver_port}"
    for m in spec.role(C.ROLE_MASTERS)[1:]:
        docs = _kubeadm_docs(_one(spec, m.name, C.KUBEADM_JOIN_CONTROL_PLANE).content)
        join = docs["JoinConfiguration"]
        _check_kubeadm_doc(join)
        assert join["discovery"]["bootstrapToken"] == {
            "apiServerEndpoint": endpoint, "token": C.PLACEHOLDER_TOKEN,
            "caCertHashes": [C.PLACEHOLDER_CA_CERT_HASH]}
        assert join["controlPlane"] == {
            "localAPIEndpoint": {"advertiseAddress": str(m.address),
                                 "bindPort": s.apiserver_bind_port},
            "certificateKey": C.PLACEHOLDER_CERTIFICATE_KEY}
        assert join["nodeRegistration"]["name"] == m.name
    for w in spec.role(C.ROLE_WORKERS):
        join = _kubeadm_docs(_one(spec, w.name, C.KUBEADM_JOIN_WORKER).content)[
            "JoinConfiguration"]
        _check_kubeadm_doc(join)
        assert "controlPlane" not in join
        assert join["discovery"]["bootstrapToken"]["apiServerEndpoint"] == endpoint
        assert join["discovery"]["bootstrapToken"]["token"] == C.PLACEHOLDER_TOKEN


def test_no_secret_is_rendered(rendered: tuple) -> None:
    """Run-time secrets appear only as placeholders, and only where the deploy fills them."""
    spec, files, _ = rendered
    token = re.compile(rf"\b{TOKEN_PATTERN}\b")
    for host, fs in files.items():
        for f in fs:
            assert not token.search(f.content), f"{host}:{f.path}"
            assert "BEGIN" not in f.content and "PRIVATE KEY" not in f.content
    harbor = yaml.safe_load(_one(spec, spec.role(C.ROLE_HARBOR)[0].name, C.HARBOR_YML).content)
    assert harbor["harbor_admin_password"] == UNRENDERED_SECRET
    assert harbor["database"]["password"] == UNRENDERED_SECRET


# --- containerd, registry, Harbor -------------------------------------------------------------


def test_containerd_configs(rendered: tuple) -> None:
    spec, _, _ = rendered
    reg = spec.settings.registry.name
    for h in (*spec.role(C.ROLE_MASTERS), *spec.role(C.ROLE_WORKERS)):
        cfg = tomllib.loads(_one(spec, h.name, C.CONTAINERD_CONFIG).content)
        assert cfg["version"] == 2
        cri = cfg["plugins"]["io.containerd.grpc.v1.cri"]
        runc = cri["containerd"]["runtimes"]["runc"]
        assert runc["runtime_type"] == "io.containerd.runc.v2"
        assert runc["options"]["SystemdCgroup"] is True
        assert cri["registry"]["config_path"] == C.CONTAINERD_CERTS_DIR
        hosts_path = f"{C.CONTAINERD_CERTS_DIR}/{reg}/hosts.toml"
        hosts = tomllib.loads(_one(spec, h.name, hosts_path).content)
        assert hosts["server"] == f"https://{reg}"
        assert hosts["host"][f"https://{reg}"] == {
            "capabilities": ["pull", "resolve"],
            "ca": f"{C.CONTAINERD_CERTS_DIR}/{reg}/{C.CONTAINERD_REGISTRY_CA}"}


def test_registry_on_another_port_is_named_with_it(make_inventory: Any) -> None:
    def port(hosts: dict, groups: dict, defaults: dict) -> None:
        defaults["data"]["registry"] = {"name": "reg.lab", "port": 5443}

    spec = load_cluster_spec(make_inventory(port))
    paths = [f.path for f in files_for_host(spec, "worker1")]
    assert f"{C.CONTAINERD_CERTS_DIR}/reg.lab:5443/hosts.toml" in paths
    hosts = tomllib.loads(_one(spec, "worker1",
                               f"{C.CONTAINERD_CERTS_DIR}/reg.lab:5443/hosts.toml").content)
    assert hosts["server"] == "https://reg.lab:5443"
    reg = yaml.safe_load(_one(spec, "harbor1", C.REGISTRY_CONFIG).content)
    assert reg["http"]["addr"] == ":5443"


def test_registry_and_harbor_configs(rendered: tuple) -> None:
    spec, _, _ = rendered
    s = spec.settings.registry
    for h in spec.role(C.ROLE_HARBOR):
        reg = yaml.safe_load(_one(spec, h.name, C.REGISTRY_CONFIG).content)
        assert reg["version"] == 0.1
        assert reg["storage"]["filesystem"]["rootdirectory"] == C.REGISTRY_DATA_DIR
        assert reg["http"]["addr"] == f":{s.port}"
        assert reg["http"]["tls"] == {"certificate": C.REGISTRY_CERT, "key": C.REGISTRY_KEY}
        assert all(p.startswith(C.REGISTRY_PKI_DIR + "/") for p in reg["http"]["tls"].values())
        dropin = _one(spec, h.name, C.REGISTRY_DROPIN)
        assert "AmbientCapabilities=CAP_NET_BIND_SERVICE" in dropin.content
        assert dropin.service == "docker-registry"
        harbor = yaml.safe_load(_one(spec, h.name, C.HARBOR_YML).content)
        assert harbor["hostname"] == s.name
        assert harbor["https"] == {"port": s.port, "certificate": C.REGISTRY_CERT,
                                   "private_key": C.REGISTRY_KEY}
        assert harbor["data_volume"] == C.HARBOR_DATA_VOLUME
        assert re.fullmatch(r"\d+\.\d+\.0", harbor["_version"])


# --- BGP: FRR on the directors, the switches --------------------------------------------------


def _vtysh_check(tmp_path: Path, text: str, name: str) -> subprocess.CompletedProcess[str]:
    binary = _need("vtysh")
    path = tmp_path / name
    path.write_text(text)
    return _run([binary, "-C", "-f", str(path)])


def test_frr_on_directors(rendered: tuple, tmp_path: Path) -> None:
    spec, _, _ = rendered
    b = spec.settings.bgp
    for h in spec.role(C.ROLE_LVS):
        conf = _one(spec, h.name, C.FRR_CONF).content
        assert f"router bgp {b.lvs_asn}\n" in conf
        assert f"  network {spec.vip}/32\n" in conf
        assert "bgp network import-check" in conf
        # bgpd must not hold its peers for FRR's 5 s route-map delay after each start
        assert f"\nbgp route-map delay-timer {C.FRR_ROUTE_MAP_DELAY_S}\n" in conf
        neighbors = re.findall(r"^ neighbor (\S+) remote-as (\d+)$", conf, re.M)
        assert neighbors == [(str(sw.address), str(b.switch_asn))
                             for sw in spec.role(C.ROLE_SWITCHES)]
        for sw in spec.role(C.ROLE_SWITCHES):  # the timers, per neighbour, as FRR prints them
            for line in (f"timers {b.keepalive_s} {b.hold_s}",
                         f"timers connect {b.connect_retry_s}",
                         f"advertisement-interval {b.advertisement_interval_s}"):
                assert f"\n neighbor {sw.address} {line}\n" in conf
        assert "bgpd=yes" in _one(spec, h.name, C.FRR_DAEMONS).content.splitlines()
        res = _vtysh_check(tmp_path, conf, f"{h.name}.conf")
        assert res.returncode == 0, res.stdout + res.stderr


def test_vtysh_check_rejects_a_broken_conf(tmp_path: Path) -> None:
    spec = load_cluster_spec(LAB_INVENTORY)
    conf = _one(spec, "lvs1", C.FRR_CONF).content.replace("remote-as", "remote-ass")
    assert _vtysh_check(tmp_path, conf, "bad.conf").returncode != 0


def test_no_announcement_without_switches_or_when_disabled(make_inventory: Any) -> None:
    def off(hosts: dict, groups: dict, defaults: dict) -> None:
        defaults["data"]["bgp"]["announce_vip"] = False

    def no_switches(hosts: dict, groups: dict, defaults: dict) -> None:
        for name in [n for n, h in hosts.items() if "switches" in h["groups"]]:
            del hosts[name]

    for edit in (off, no_switches):
        spec = load_cluster_spec(make_inventory(edit))
        assert files_for_component(spec, "lvs1", "frr") == []
        assert files_for_component(spec, "lvs1", "keepalived")


def _config_lines(f: RenderedFile) -> list[str]:
    return [ln for ln in f.content.splitlines()
            if ln.strip() and not ln.lstrip().startswith(("!", "#"))]


@pytest.mark.parametrize("platform", ["cisco_ios", "frr", "arista_eos", "cisco_nxos",
                                      "juniper_junos"])
def test_switch_config_per_platform(platform: str, make_inventory: Any, tmp_path: Path) -> None:
    def set_platform(hosts: dict, groups: dict, defaults: dict) -> None:
        groups["switches"]["platform"] = platform
        hosts["switch2"]["data"]["bgp_neighbors"] = ["10.88.0.12"]

    spec = load_cluster_spec(make_inventory(set_platform))
    b = spec.settings.bgp
    (sw1,) = files_for_host(spec, "switch1")
    (sw2,) = files_for_host(spec, "switch2")
    text1 = "\n".join(_config_lines(sw1))
    assert f"{spec.vip}/32" in text1
    for lvs in ("10.88.0.11", "10.88.0.12"):
        assert lvs in text1
    assert "10.88.0.11" not in "\n".join(_config_lines(sw2))  # bgp_neighbors honoured
    assert str(b.switch_asn) in text1 and str(b.lvs_asn) in text1
    if platform == "juniper_junos":
        assert all(ln.startswith("set ") for ln in _config_lines(sw1))
    else:
        assert f"router bgp {b.switch_asn}" in text1
    # the directors peer with exactly the switches that peer with them
    lvs1 = files_for_component(spec, "lvs1", "frr")[1].content
    assert "10.88.0.71" in lvs1 and "10.88.0.72" not in lvs1
    if platform in ("cisco_ios", "frr"):  # FRR's own parser: the lab's switches are FRR
        res = _vtysh_check(tmp_path, sw1.content, "switch.conf")
        assert res.returncode == 0, res.stdout + res.stderr


#: Each platform's spelling of bgp keepalive 7 / hold 21 / connect retry 5 / MRAI 2 (neighbour
#: 10.88.0.11); docs/switches.md says where a platform has no knob for one.
TIMER_LINES = {
    "frr": [" neighbor 10.88.0.11 timers 7 21", " neighbor 10.88.0.11 timers connect 5",
            " neighbor 10.88.0.11 advertisement-interval 2"],
    "cisco_ios": [" neighbor 10.88.0.11 timers 7 21",
                  " neighbor 10.88.0.11 advertisement-interval 2"],
    "cisco_nxos": ["    timers 7 21", "      advertisement-interval 2"],
    "arista_eos": ["   neighbor 10.88.0.11 timers 7 21"],
    "juniper_junos": ["set protocols bgp group K8SHA-LVS hold-time 21"],
}


@pytest.mark.parametrize("platform", sorted(TIMER_LINES))
def test_bgp_timers_reach_every_platform(platform: str, make_inventory: Any,
                                         tmp_path: Path) -> None:
    def timers(hosts: dict, groups: dict, defaults: dict) -> None:
        groups["switches"]["platform"] = platform
        defaults["data"]["bgp"].update(keepalive_s=7, hold_s=21, connect_retry_s=5,
                                       advertisement_interval_s=2)

    spec = load_cluster_spec(make_inventory(timers))
    (sw1,) = files_for_host(spec, "switch1")
    lines = sw1.content.splitlines()
    for want in TIMER_LINES[platform]:
        assert want in lines, want
    assert not [ln for ln in lines if re.search(r"\b(60|180|120)$", ln)]  # no default left
    if platform in ("cisco_ios", "frr"):
        res = _vtysh_check(tmp_path, sw1.content, "switch.conf")
        assert res.returncode == 0, res.stdout + res.stderr


# --- scale (timed in bench/scale_bench.py, not here) --------------------------------------------


def test_render_of_1000_hosts_gives_every_worker_its_files(make_inventory: Any) -> None:
    def grow(hosts: dict, groups: dict, defaults: dict) -> None:
        defaults["data"]["prefix_length"] = 16
        defaults["data"]["vip"] = "10.88.0.100"
        defaults["data"]["kubernetes"] = {"pod_subnet": "10.244.0.0/16",
                                          "service_subnet": "10.96.0.0/12"}
        for i in range(1000 - len(hosts)):
            hosts[f"w{i:04d}"] = {"hostname": str(IPv4Address("10.88.1.0") + i),
                                  "groups": ["workers"], "data": {"physical_host": "pm3"}}

    spec = load_cluster_spec(make_inventory(grow))
    assert len(spec.hosts) == 1000
    rendered_ = render_all(spec)
    assert sum(len(f) for f in rendered_.values()) > 2900  # 3 files per worker


# --- the real etcd accepts the rendered config and forms a TLS cluster ------------------------

_ETCD_PROBE = r"""
import http.client, json, os, ssl, subprocess, sys, time
job = json.loads(sys.argv[1])

def sh(*cmd):
    subprocess.run(cmd, check=True)

# One network namespace per member on a bridge, like hosts on a LAN: etcd checks that a peer
# connects from an address its certificate names, so members must not share one namespace.
sh("ip", "link", "set", "lo", "up")
sh("ip", "link", "add", "br0", "type", "bridge")
sh("ip", "addr", "add", job["probe_ip"] + "/24", "dev", "br0")
sh("ip", "link", "set", "br0", "up")
mine = os.readlink("/proc/self/ns/net")
holders, procs = [], []
try:
    for i, m in enumerate(job["members"]):
        h = subprocess.Popen(["unshare", "--net", "sleep", "300"])
        holders.append(h)
        while os.readlink(f"/proc/{h.pid}/ns/net") == mine:
            time.sleep(0.01)
        sh("ip", "link", "add", f"vh{i}", "type", "veth", "peer", "name", f"vc{i}")
        sh("ip", "link", "set", f"vc{i}", "netns", str(h.pid))
        sh("ip", "link", "set", f"vh{i}", "master", "br0", "up")
        ns = ["nsenter", "--net", "--target", str(h.pid)]
        sh(*ns, "ip", "link", "set", "lo", "up")
        sh(*ns, "ip", "link", "set", f"vc{i}", "name", "eth0")
        sh(*ns, "ip", "addr", "add", m["ip"] + "/24", "dev", "eth0")
        sh(*ns, "ip", "link", "set", "eth0", "up")
        procs.append(subprocess.Popen([*ns, job["etcd"], "--config-file", m["conf"]],
                                      stdout=open(m["log"], "w"), stderr=subprocess.STDOUT))

    def get(ip, ctx):
        c = http.client.HTTPSConnection(ip, job["port"], context=ctx, timeout=2)
        c.request("GET", "/health")
        return json.loads(c.getresponse().read())

    mtls = ssl.create_default_context(cafile=job["ca"])
    mtls.load_cert_chain(job["cert"], job["key"])
    healthy, deadline = set(), time.time() + 30
    while time.time() < deadline and len(healthy) < len(job["members"]):
        for m in job["members"]:
            try:
                if str(get(m["ip"], mtls).get("health")) == "true":
                    healthy.add(m["ip"])
            except (OSError, ValueError):
                pass
        time.sleep(0.2)
    try:
        get(job["members"][0]["ip"], ssl.create_default_context(cafile=job["ca"]))
        refused = False
    except OSError:
        refused = True
    print(json.dumps({"healthy": sorted(healthy), "refused_without_cert": refused}))
finally:
    for p in procs:
        p.kill()
        p.wait()
    for h in holders:
        h.kill()
        h.wait()
"""


def test_real_etcd_forms_a_tls_cluster_from_the_rendered_config(tmp_path: Path) -> None:
    """Three real etcd 3.4 members, each in its own network namespace with its inventory address
    and started with its rendered config (only the on-host PKI and data paths are moved into
    tmp_path), form a cluster: /health is true on every member over mTLS, and a client without
    a certificate is refused."""
    import json
    import sys

    etcd_bin = _need("etcd")
    if not is_root() or shutil.which("unshare") is None:
        pytest.skip("a private network namespace for the members' addresses needs root")
    pki_mod = pytest.importorskip("nornir_k8sha.pki")
    spec = load_cluster_spec(LAB_INVENTORY)
    pki = pki_mod.ClusterPKI(spec, tmp_path / "state")
    pki.ensure()
    members = []
    for h in spec.role(C.ROLE_ETCD):
        base = tmp_path / h.name
        conf = _with_bundle(spec, h.name, _one(spec, h.name, C.ETCD_CONF).content,
                            C.ETCD_PKI_DIR, tmp_path / "state", base).replace(
            f'data-dir: "{spec.settings.etcd.data_dir}"', f'data-dir: "{base}/data"')
        (base / "etcd.conf.yml").write_text(conf)
        members.append({"ip": str(h.address), "conf": str(base / "etcd.conf.yml"),
                        "log": str(base / "etcd.log")})
    client = pki.healthcheck_client
    job = {"etcd": etcd_bin, "members": members, "port": spec.settings.etcd.client_port,
           "probe_ip": str(spec.network.broadcast_address - 1),
           "ca": str(pki.etcd_ca.cert), "cert": str(client.cert), "key": str(client.key)}
    res = subprocess.run(["unshare", "--net", sys.executable, "-c", _ETCD_PROBE,
                          json.dumps(job)], capture_output=True, text=True, timeout=90)
    logs = "\n".join(Path(m["log"]).read_text()[-1500:] for m in members
                     if Path(m["log"]).exists())
    assert res.returncode == 0, res.stderr + logs
    outcome = json.loads(res.stdout.strip().splitlines()[-1])
    assert outcome["healthy"] == sorted(m["ip"] for m in members), logs
    assert outcome["refused_without_cert"] is True
