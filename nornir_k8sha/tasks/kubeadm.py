"""kubeadm on the masters and workers — the real command line, as a production cluster needs it.

- `prepare_node`: swap off, br_netfilter/overlay, sysctls, containerd (systemd cgroups), kubelet,
  kubeadm and kubectl at the inventory's version (skipped where already at that version);
- `place_control_plane_pki`: the external-etcd client certificates, the cluster CA, front-proxy CA
  and service-account keys, explicitly (`upload-certs` does not carry the etcd client certs);
- `init_first_master`: `kubeadm init --config ... --upload-certs`, once per cluster;
- `mint_join_material`: on ANY initialised master, a fresh token and certificate key — no "first
  master is special" trap, and an expired token is simply replaced;
- `join_node`: `kubeadm join --config` with the secrets filled in on the host (file 0600, removed
  afterwards); idempotent by state on the host (kubelet.conf exists → left alone);
- `fetch_admin_kubeconfig`: admin.conf into the state dir, pointing at the VIP;
- `reset_node`: `kubeadm reset -f`.

Secrets (token, certificate key) travel on stdin or in 0600 files, never in argv or reports.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from nornir.core.task import Result, Task

from nornir_k8sha import constants as C
from nornir_k8sha.clients import api_client, node_readiness
from nornir_k8sha.exceptions import CommandFailed, NodesNotReady
from nornir_k8sha.polling import poll_until
from nornir_k8sha.render import files_for_component
from nornir_k8sha.statefiles import write_private
from nornir_k8sha.tasks import host as H
from nornir_k8sha.tasks.component import upload_pki
from nornir_k8sha.topology import ClusterSpec

#: A bootstrap token and a certificate key as kubeadm prints them (the one statement of each).
TOKEN_PATTERN = r"[a-z0-9]{6}\.[a-z0-9]{16}"
CERT_KEY_PATTERN = r"[0-9a-f]{64}"
TOKEN_RE = re.compile(rf"--token\s+({TOKEN_PATTERN})")
CERT_KEY_RE = re.compile(rf"(?:--certificate-key\s+|certificate key:\s*\n?\s*)({CERT_KEY_PATTERN})")
JOIN_CONFIG_TMP = "/etc/kubernetes/k8sha-join.yaml"

KUBERNETES_SYSCTLS = {
    "net.bridge.bridge-nf-call-iptables": "1",
    "net.bridge.bridge-nf-call-ip6tables": "1",
    "net.ipv4.ip_forward": "1",
}
KUBERNETES_MODULES = ("overlay", "br_netfilter")
KUBERNETES_PACKAGES = ("kubelet", "kubeadm", "kubectl")
KUBERNETES_KEYRING = "/etc/apt/keyrings/kubernetes-apt-keyring.gpg"
KUBERNETES_APT_SOURCE = "/etc/apt/sources.list.d/kubernetes.list"
KUBERNETES_APT_PIN = "/etc/apt/preferences.d/kubernetes"


@dataclass(frozen=True)
class JoinMaterial:
    """What a node needs to join. `repr` hides the secrets."""

    token: str
    ca_cert_hash: str
    certificate_key: str | None = None

    def __repr__(self) -> str:
        return "JoinMaterial(<hidden>)"


def ca_cert_hash(ca_pem: bytes) -> str:
    """`sha256:<hex>` of the CA's SubjectPublicKeyInfo, as kubeadm's discovery expects."""
    cert = x509.load_pem_x509_certificate(ca_pem)
    spki = cert.public_key().public_bytes(serialization.Encoding.DER,
                                          serialization.PublicFormat.SubjectPublicKeyInfo)
    return "sha256:" + hashlib.sha256(spki).hexdigest()


def parse_token(output: str) -> str:
    match = TOKEN_RE.search(output)
    if not match:
        raise ValueError("no bootstrap token in kubeadm output")
    return match.group(1)


def parse_certificate_key(output: str) -> str:
    match = CERT_KEY_RE.search(output)
    if not match:
        raise ValueError("no certificate key in kubeadm output")
    return match.group(1)



def _version(spec: ClusterSpec) -> str:
    return spec.settings.kubernetes.version


#: What a node is asked before anything changes, in one exec channel (a process start on the
#: host is the cost of a step: DESIGN.md 5): its swap devices, its kubeadm version.
_SWAPS = "swapon --noheadings --show=NAME"
_KUBEADM_VERSION = "kubeadm version -o short"
#: Loads the modules now (the modules-load.d file does it at boot); harmless when loaded.
_NODE_UNITS = ("containerd", "kubelet")
_MODPROBE = ("for m in " + " ".join(KUBERNETES_MODULES) + "; do modprobe $m 2>/dev/null || "
             "true; done")


def installed_kubeadm_version(task: Task) -> str | None:
    res = H.connect(task).run(_KUBEADM_VERSION, check=False)
    return res.stdout.strip() if res.exit_code == 0 else None


def prepare_node(task: Task, spec: ClusterSpec, *, dry_run: bool | None = None) -> Result:
    """Everything a Kubernetes node needs before kubeadm: idempotent, dry-run aware."""
    H.honour_dry_run(task, dry_run)
    changed: list[str] = []
    diffs: list[str] = []

    def step(result: Result, label: str) -> None:
        if result.changed:
            changed.append(label)
        if result.diff:
            diffs.append(result.diff)

    conn = H.connect(task)
    # one round trip for the probes, the module load (not in a dry run) and then the live
    # sysctls (br_netfilter's keys exist once it is loaded). What was read stays true through
    # the steps that cannot change it: the live sysctls through swap off and the modules-load.d
    # file (read at boot); the units' state until something reaches systemd (a unit file, a
    # package, a systemctl action: `systemd_touched`), not through config files, which
    # `restart_if_changed` answers for
    units = [H.UNIT_PROBE.format(unit=u) for u in _NODE_UNITS]
    sysctls = H.sysctl_probes(KUBERNETES_SYSCTLS)
    probed = conn.run_batch([_SWAPS, _KUBEADM_VERSION, *units,
                             *([] if task.is_dry_run() else [_MODPROBE]), *sysctls],
                            stop_on_error=False, check=False)
    swapon, version = probed[0], probed[1]
    unit_states = {u: H.parse_unit(r.stdout)
                   for u, r in zip(_NODE_UNITS, probed[2:2 + len(units)], strict=True)}
    live_sysctls = probed[len(probed) - len(sysctls):]

    systemd_touched = False

    def known(unit: str) -> dict[str, str] | None:
        return None if systemd_touched else unit_states.get(unit)

    swaps = swapon.stdout.split()
    if swaps:
        if not task.is_dry_run():
            conn.run("swapoff -a && sed -ri '/\\sswap\\s/s/^#?/#/' /etc/fstab")
        changed.append("swap off")
    step(H.file(task, path=C.KUBERNETES_MODULES,
                content="".join(f"{m}\n" for m in KUBERNETES_MODULES)), "kernel modules")
    step(H.sysctl(task, settings=KUBERNETES_SYSCTLS, path=C.KUBERNETES_SYSCTL,
                  known=live_sysctls), "sysctls")

    config_changed = False
    for f in files_for_component(spec, spec.host(task.host.name), "containerd"):
        r = H.file(task, path=f.path, content=f.content, mode=f.mode, secret=f.secret or None)
        step(r, f.path)
        config_changed |= bool(r.changed)
        systemd_touched |= bool(r.changed) and f.path.startswith(C.SYSTEMD_UNIT_DIRS)
    containerd = H.service(task, name="containerd", restart_if_changed=config_changed,
                           known=known("containerd"))
    step(containerd, "containerd")
    systemd_touched |= bool(containerd.changed)
    want = f"v{_version(spec)}"
    kubelet = known("kubelet")
    if (version.stdout.strip() if version.exit_code == 0 else None) != want:
        installed = kubernetes_packages(task, spec, probe_units=("kubelet",))
        step(installed, "kubernetes packages")
        kubelet = installed.units.get("kubelet", kubelet)  # read after the install, if one ran
    step(H.service(task, name="kubelet", enabled=True, state=None, known=kubelet),
         "kubelet enabled")
    return Result(host=task.host, changed=bool(changed), diff="\n".join(diffs),
                  result=", ".join(changed) or "ready")


def kubernetes_packages(task: Task, spec: ClusterSpec, *, probe_units: Sequence[str] = (),
                        dry_run: bool | None = None) -> Result:
    """kubelet/kubeadm/kubectl from the Kubernetes apt repository (pkgs.k8s.io), as kubeadm's
    install guide does it: the repository's signing key in a keyring, the source, an apt pin
    to the inventory's version, the packages at that version, then `apt-mark hold`.
    `probe_units`: as `host.packages` (the Result's `units`: read right after an install)."""
    H.honour_dry_run(task, dry_run)
    version = _version(spec)
    minor = ".".join(version.split(".")[:2])
    repo = spec.settings.kubernetes.package_repo.format(minor=minor)
    conn = H.connect(task)
    changes = []
    if conn.stat(KUBERNETES_KEYRING) is None:
        changes.append(f"fetch {repo}Release.key into {KUBERNETES_KEYRING}")
        if not task.is_dry_run():
            conn.run(f"install -d -m 0755 {shlex.quote(str(Path(KUBERNETES_KEYRING).parent))} "
                     f"&& curl -fsSL {shlex.quote(repo + 'Release.key')} | "
                     f"gpg --dearmor --batch --yes -o {shlex.quote(KUBERNETES_KEYRING)}")
    source = f"deb [signed-by={KUBERNETES_KEYRING}] {repo} /\n"
    pin = "".join(f"Package: {p}\nPin: version {version}-*\nPin-Priority: 1001\n\n"
                  for p in KUBERNETES_PACKAGES)
    listed = H.file(task, path=KUBERNETES_APT_SOURCE, content=source)
    pinned = H.file(task, path=KUBERNETES_APT_PIN, content=pin)
    installed = H.packages(task, names=[f"{p}={version}-*" for p in KUBERNETES_PACKAGES],
                           update_cache=bool(changes or listed.changed), hold=True,
                           probe_units=probe_units)
    for label, r in (("source", listed), ("pin", pinned), ("packages", installed)):
        if r.changed:
            changes.append(label)
    diff = "\n".join(d for d in (listed.diff, pinned.diff, installed.diff) if d)
    return Result(host=task.host, changed=bool(changes), diff=diff,
                  result=", ".join(changes) or f"v{version} installed", units=installed.units)


def place_control_plane_pki(
    task: Task, spec: ClusterSpec, state_dir: Path, *, dry_run: bool | None = None
) -> Result:
    """This master's part of our PKI under /etc/kubernetes/pki: the external-etcd client
    certificate and CA, the cluster and front-proxy CAs, the service-account keys (keys 0600).
    The registry CA comes with `harbor.trust_registry`."""
    H.honour_dry_run(task, dry_run)

    changed = upload_pki(task, spec, state_dir, under=C.KUBERNETES_PKI_DIR)
    return Result(host=task.host, changed=bool(changed), result=f"{len(changed)} file(s)")


def is_control_plane_initialised(task: Task) -> bool:
    return H.connect(task).get(C.ADMIN_KUBECONFIG) is not None


def is_joined(task: Task) -> bool:
    return H.connect(task).get(C.KUBELET_KUBECONFIG) is not None


def init_first_master(task: Task, spec: ClusterSpec, *, dry_run: bool | None = None) -> Result:
    """`kubeadm init --config --upload-certs` on this master; left alone when initialised."""
    H.honour_dry_run(task, dry_run)
    if is_control_plane_initialised(task):
        return Result(host=task.host, result="already initialised")

    config = next((f for f in files_for_component(spec, spec.host(task.host.name), "kubeadm")
                   if f.path == C.KUBEADM_CONFIG), None)
    if config is None:
        raise RuntimeError(f"{task.host.name}: the kubeadm InitConfiguration is rendered for the "
                           f"first master ({spec.first_master.name}) only")
    r = H.file(task, path=config.path, content=config.content, mode=0o600)
    if task.is_dry_run():
        return Result(host=task.host, changed=True, diff=r.diff,
                      result="would run kubeadm init --upload-certs")
    H.connect(task).run(f"kubeadm init --config {C.KUBEADM_CONFIG} --upload-certs",
                    timeout=600)
    return Result(host=task.host, changed=True, result="kubeadm init")


def mint_join_material(
    task: Task, spec: ClusterSpec, *, control_plane: bool, dry_run: bool | None = None
) -> Result:
    """A fresh token (and certificate key) from this initialised master."""
    H.honour_dry_run(task, dry_run)
    conn = H.connect(task)
    token = parse_token(conn.run("kubeadm token create --print-join-command").stdout)
    key = None
    if control_plane:
        key = parse_certificate_key(
            conn.run("kubeadm init phase upload-certs --upload-certs").stdout)
    ca = conn.get(f"{C.KUBERNETES_PKI_DIR}/ca.crt")
    if ca is None:
        raise RuntimeError(f"{task.host.name}: {C.KUBERNETES_PKI_DIR}/ca.crt missing")
    return Result(host=task.host, result=JoinMaterial(token, ca_cert_hash(ca), key))


def fill_join_config(template: str, material: JoinMaterial) -> str:
    """Put the run-time secrets into a rendered JoinConfiguration (on the way to a 0600 file)."""
    filled = (template.replace(C.PLACEHOLDER_TOKEN, material.token)
              .replace(C.PLACEHOLDER_CA_CERT_HASH, material.ca_cert_hash))
    if material.certificate_key:
        filled = filled.replace(C.PLACEHOLDER_CERTIFICATE_KEY, material.certificate_key)
    return filled


def join_commands() -> tuple[str, str]:
    """`kubeadm join` with the config at `JOIN_CONFIG_TMP`, and the removal of that file."""
    config = shlex.quote(JOIN_CONFIG_TMP)
    return f"kubeadm join --config {config}", f"rm -f {config}"


def join_node(task: Task, spec: ClusterSpec, material: JoinMaterial | None,
              control_plane: bool, *, joined: bool | None = None) -> Result:
    """`kubeadm join --config` unless this node has joined already. `joined`: what `is_joined`
    said moments ago (the workers phase asks every worker before it mints join material);
    None: ask now."""
    if joined is None:
        joined = is_joined(task)
    if joined:
        return Result(host=task.host, result="already joined")
    if task.is_dry_run() or material is None:
        return Result(host=task.host, changed=True, result="would run kubeadm join"
                      + (" --control-plane" if control_plane else ""))

    path = C.KUBEADM_JOIN_CONTROL_PLANE if control_plane else C.KUBEADM_JOIN_WORKER
    template = next((f for f in files_for_component(spec, spec.host(task.host.name), "kubeadm")
                     if f.path == path), None)
    if template is None:
        raise RuntimeError(f"{task.host.name}: no rendered {path} for this host")
    conn = H.connect(task)
    conn.put(fill_join_config(template.content, material).encode(), JOIN_CONFIG_TMP, 0o600)
    join, remove = join_commands()
    try:
        # the config holds the token: removed in the join's own exec channel whatever the
        # join's exit, which (and its stderr) is what the command answers
        r = conn.run(f"{join}; rc=$?; {remove}; exit $rc", timeout=600, check=False)
    except BaseException:
        # it did not finish (timed out, cut): its rm may not have run; the join's own error
        # is the one to see, not a second failure of a connection that is gone
        with contextlib.suppress(Exception):
            conn.run(remove, check=False)
        raise
    if not r.ok:
        raise CommandFailed(task.host.name, join, r.exit_code, r.stderr)
    return Result(host=task.host, changed=True,
                  result="kubeadm join" + (" --control-plane" if control_plane else ""))


def wait_for_api(spec: ClusterSpec, state_dir: Path, timeout: float = 90.0, *,
                 transport: httpx.BaseTransport | None = None) -> None:
    """Poll /readyz through the VIP (TLS with our cluster CA) until an apiserver answers 200:
    joins go through the VIP, and HAProxy needs `rise` good checks before it sends traffic.
    Asks at least once, however short the timeout. `transport` is the test seam."""
    url = f"https://{spec.api_endpoint}/readyz"
    with api_client(spec, state_dir, transport) as client:
        def readyz() -> str:
            """Empty when ready, else what was seen instead."""
            try:
                resp = client.get(url)
            except httpx.HTTPError as exc:
                return str(exc) or type(exc).__name__
            return "" if resp.status_code == 200 else f"HTTP {resp.status_code}"

        poll_until(readyz, lambda seen: not seen, timeout=timeout, interval=0.5,
                   error=lambda seen: TimeoutError(f"the API at {url} is not ready after "
                                                   f"{timeout:.0f}s ({seen})"))


def wait_for_nodes(spec: ClusterSpec, state_dir: Path, timeout: float = 90.0, *,
                   transport: httpx.BaseTransport | None = None) -> None:
    """Poll the node list through the VIP until every master and worker is a Ready node (a
    joined kubelet needs a moment for its first status update). Asks at least once; raises
    `NodesNotReady` naming the hosts that are not Ready nodes. `transport`: the test seam."""
    wanted = {h.name for h in spec.kubernetes_nodes()}
    missing = wanted
    with api_client(spec, state_dir, transport) as client:
        def not_ready() -> set[str]:
            """The hosts not Ready nodes (as last seen: an unanswered ask changes nothing)."""
            nonlocal missing
            try:
                items = client.get(f"https://{spec.api_endpoint}/api/v1/nodes").json()
                ready = node_readiness(items.get("items", []))
                missing = {n for n in wanted if not ready.get(n)}
            except (httpx.HTTPError, ValueError):
                pass
            return missing

        poll_until(not_ready, lambda seen: not seen, timeout=timeout, interval=1.0,
                   error=lambda seen: NodesNotReady(seen, timeout))


def fetch_admin_kubeconfig(
    task: Task, spec: ClusterSpec, state_dir: Path, *, dry_run: bool | None = None
) -> Result:
    """admin.conf to `<state>/admin.conf` (0600), its server set to the VIP endpoint."""
    H.honour_dry_run(task, dry_run)
    data = H.connect(task).get(C.ADMIN_KUBECONFIG)
    if data is None:
        return Result(host=task.host, failed=True, result="no admin.conf on this master")
    text = re.sub(r"server: https://\S+", f"server: https://{spec.api_endpoint}", data.decode())
    target = state_dir / C.STATE_ADMIN_KUBECONFIG
    old = target.read_text() if target.exists() else None
    if old != text and not task.is_dry_run():
        write_private(target, text)
    return Result(host=task.host, changed=False, result=str(target))


def reset_node(task: Task, *, dry_run: bool | None = None) -> Result:
    """`kubeadm reset -f`: the clean way back; a node that never joined is left alone."""
    H.honour_dry_run(task, dry_run)
    conn = H.connect(task)
    if conn.get(C.KUBELET_KUBECONFIG) is None and conn.get(C.ADMIN_KUBECONFIG) is None:
        return Result(host=task.host, result="not a node: nothing to reset")
    if task.is_dry_run():
        return Result(host=task.host, changed=True, result="would run kubeadm reset -f")
    conn.run("kubeadm reset -f", timeout=300)
    return Result(host=task.host, changed=True, result="kubeadm reset -f")
