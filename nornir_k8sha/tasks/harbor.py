"""The registry every node trusts.

`registry.engine: harbor` (production): Harbor's offline installer, unpacked by the operator in
/opt/harbor on the harbor host; the deploy renders `harbor.yml` (TLS from our PKI, the admin and
database passwords generated once into `<state dir>/secrets/harbor.json`, 0600) and runs
`install.sh`. Without the installer the host fails, saying what to place where.
`registry.engine: distribution` (the lab): Debian's `docker-registry`, the registry engine inside
Harbor, serving TLS with a certificate from our PKI.

Every Kubernetes node gets the registry CA and `certs.d/<registry>/hosts.toml` for containerd
(`trust_registry`), and the registry name in /etc/hosts when DNS does not know it.
"""

from __future__ import annotations

import json
import secrets
import string
import threading
from pathlib import Path

from nornir.core.task import Result, Task

from nornir_k8sha import constants as C
from nornir_k8sha.exceptions import DeployError
from nornir_k8sha.render import SECRET_NAMES, files_for_component
from nornir_k8sha.statefiles import write_private
from nornir_k8sha.tasks import host as H
from nornir_k8sha.tasks.component import upload_pki
from nornir_k8sha.topology import ClusterSpec

DISTRIBUTION_SERVICE = "docker-registry"
DISTRIBUTION_PACKAGE = "docker-registry"
HOSTS_MARK = "# k8sha registry"
#: Harbor's passwords in the state dir: `<state dir>/secrets/<this>`, keys = render.SECRET_NAMES.
HARBOR_SECRETS_FILE = "harbor.json"
#: Letters and digits only: the database password ends up in a connection string.
PASSWORD_ALPHABET = string.ascii_letters + string.digits
PASSWORD_LENGTH = 32
#: The installer can take minutes (it loads every Harbor image).
INSTALL_TIMEOUT_S = 1200

_secrets_lock = threading.Lock()


def harbor_secrets_path(state_dir: Path) -> Path:
    return state_dir / C.STATE_SECRETS_DIR / HARBOR_SECRETS_FILE


def _password() -> str:
    """Random, with a lower, an upper case letter and a digit (Harbor's password policy)."""
    while True:
        pw = "".join(secrets.choice(PASSWORD_ALPHABET) for _ in range(PASSWORD_LENGTH))
        if (any(c.islower() for c in pw) and any(c.isupper() for c in pw)
                and any(c.isdigit() for c in pw)):
            return pw


def harbor_secrets(state_dir: Path, *, save: bool = True) -> dict[str, str]:
    """Harbor's admin and database passwords: the saved ones, or new ones saved 0600 (with
    `save`; a dry run gets throw-away ones). Never regenerated: Harbor keeps the first ones in
    its database."""
    path = harbor_secrets_path(state_dir)
    with _secrets_lock:
        if not path.exists():
            fresh = {name: _password() for name in SECRET_NAMES}
            if not save or write_private(path, json.dumps(fresh, indent=2) + "\n",
                                         exclusive=True):
                return fresh
        try:
            saved = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise DeployError(f"{path}: cannot read Harbor's passwords ({exc})") from None
    missing = [n for n in SECRET_NAMES if not isinstance(saved.get(n), str) or not saved[n]]
    if missing:
        raise DeployError(f"{path}: no {', '.join(missing)}; restore the file (Harbor keeps the "
                          "passwords it was installed with)")
    return {n: saved[n] for n in SECRET_NAMES}


def configure_registry(
    task: Task, spec: ClusterSpec, state_dir: Path, *, dry_run: bool | None = None
) -> Result:
    """Harbor (`registry.engine: harbor`) or Distribution (the lab) on the harbor host."""
    H.honour_dry_run(task, dry_run)
    if spec.settings.registry.engine == "harbor":
        return _harbor(task, spec, state_dir)
    return _distribution(task, spec, state_dir)


def _harbor(task: Task, spec: ClusterSpec, state_dir: Path) -> Result:
    if H.connect(task).get(C.HARBOR_INSTALLER) is None:
        version = spec.settings.registry.harbor_version
        # raised, not returned: whatever the phase does next on this host must not run
        raise DeployError(
            f"Harbor's offline installer is not on {task.host.name}: unpack "
            f"harbor-offline-installer-v{version}.tgz (github.com/goharbor/harbor/releases) "
            f"into {C.HARBOR_DIR} so that {C.HARBOR_INSTALLER} exists, then deploy again; or "
            "set registry.engine: distribution in defaults.yaml for the plain registry")
    me = spec.host(task.host.name)
    passwords = harbor_secrets(state_dir, save=not task.is_dry_run())
    changed = upload_pki(task, spec, state_dir, under=C.REGISTRY_PKI_DIR)
    diffs = []
    for f in files_for_component(spec, me, "harbor", secrets=passwords):
        r = H.file(task, path=f.path, content=f.content, mode=f.mode, secret=f.secret or None)
        if r.changed:
            changed.append(f.path)
        if r.diff:
            diffs.append(r.diff)
    if changed and not task.is_dry_run():
        H.connect(task).run(f"cd {C.HARBOR_DIR} && ./install.sh", timeout=INSTALL_TIMEOUT_S)
    return Result(host=task.host, changed=bool(changed), diff="\n".join(diffs),
                  result="harbor")


def _distribution(task: Task, spec: ClusterSpec, state_dir: Path) -> Result:
    me = spec.host(task.host.name)
    changed = []
    if H.packages(task, names=[DISTRIBUTION_PACKAGE]).changed:
        changed.append(DISTRIBUTION_PACKAGE)
    # owned by the service user: its unit's ExecStartPre chowns them anyway
    changed += upload_pki(task, spec, state_dir, under=C.REGISTRY_PKI_DIR,
                          owner=f"{C.REGISTRY_USER}:{C.REGISTRY_USER}")
    for f in files_for_component(spec, me, "registry"):
        if H.file(task, path=f.path, content=f.content, mode=f.mode,
                  secret=f.secret or None).changed:
            changed.append(f.path)
    svc = H.service(task, name=DISTRIBUTION_SERVICE, restart_if_changed=bool(changed))
    return Result(host=task.host, changed=bool(changed) or bool(svc.changed),
                  result="distribution registry")


def trust_registry(
    task: Task, spec: ClusterSpec, state_dir: Path, *, dry_run: bool | None = None
) -> Result:
    """Registry CA for containerd on a Kubernetes node, and the registry name in /etc/hosts.

    containerd's `certs.d/<registry>/hosts.toml` comes with the containerd component
    (`kubeadm.prepare_node`), so a changed registry restarts containerd in one place."""
    H.honour_dry_run(task, dry_run)
    changed = upload_pki(task, spec, state_dir, under=C.CONTAINERD_CERTS_DIR)
    registry = spec.settings.registry.name
    harbor = spec.role(C.ROLE_HARBOR)[0]
    line = f"{harbor.address} {registry} {HOSTS_MARK}"
    hosts = (H.connect(task).get("/etc/hosts") or b"").decode()
    if line not in hosts.splitlines():
        kept = [ln for ln in hosts.splitlines() if not ln.endswith(HOSTS_MARK)]
        if H.file(task, path="/etc/hosts", content="\n".join([*kept, line]) + "\n",
                  backup=False).changed:
            changed.append("/etc/hosts")
    return Result(host=task.host, changed=bool(changed), result=", ".join(changed) or "trusted")
