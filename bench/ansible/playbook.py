"""Ansible playbooks that do what `deploy` does for four tiers, generated from `render`'s tree.

The peer of the side-by-side benchmark (bench/ansible_bench.py): the same rendered files
(`python -m nornir_k8sha render -i INV -o TREE --json`), the same validators run on the host
against the uploaded temp file (`copy: validate:`), the same PKI files from the state dir, the
same services and the same restarts/reloads (handlers, notified only by a changed input), for:

    haproxy    real-server VIP + sysctls, the cluster CA, haproxy.cfg (`haproxy -c`), reload
    directors  ip_vs, keepalived.conf (`keepalived -t`), reload           (deploy --phase lb)
    etcd       member certificates, config, unit, backup timer; wait for /health (mTLS)
    workers    node preparation: swap, modules, sysctls, containerd, kubelet, registry trust

Written as Ansible's own docs advise for speed: `gather_facts: false`, the interpreter named
(no discovery), pipelining and ControlPersist in ansible.cfg, forks >= hosts; the strategy
(linear or free) is chosen at run time with ANSIBLE_STRATEGY. Only `ansible.builtin` modules:
the lab's hosts have no network to fetch collections or python3-apt (which the apt module
needs), so packages are checked with dpkg-query and installed with apt-get, as `deploy` does.

Nothing here runs Ansible or touches a host: it writes YAML/INI files (bench/ansible_bench.py
and bench/workers_bench.py run them). Imports nornir_k8sha for the constants the tasks use, so
both sides read the same paths, packages and sysctls.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from nornir_k8sha import constants as C
from nornir_k8sha.pki import ClusterPKI, bundle_for_host
from nornir_k8sha.tasks import etcd as etcd_task
from nornir_k8sha.tasks import haproxy as haproxy_task
from nornir_k8sha.tasks import keepalived as keepalived_task
from nornir_k8sha.tasks import kubeadm as K
from nornir_k8sha.tasks.harbor import HOSTS_MARK
from nornir_k8sha.topology import ClusterSpec

#: haproxy's and etcd's plays in one playbook (`deploy --phase lb --phase etcd` in one command).
COMBINED = "haproxy+etcd"
#: The copy module's placeholder for the temp file its validator checks.
ANSIBLE_VALIDATE_PLACEHOLDER = "%s"


@dataclass(frozen=True)
class Tier:
    """One playbook: the hosts of a role, the rendered components they get and how services
    follow their inputs ("reload" | "restart"), in the order `deploy` brings them up."""

    name: str
    role: str
    components: tuple[str, ...]
    packages: tuple[str, ...]
    services: Mapping[str, str]
    pki_under: str | None = None
    pki_owner: str = "root"
    pki_notifies: tuple[str, ...] = ()
    extra: tuple[str, ...] = field(default=())


TIERS: dict[str, Tier] = {
    "haproxy": Tier("haproxy", C.ROLE_HAPROXY, ("realserver", "haproxy"),
                    tuple(haproxy_task.PACKAGES),
                    {C.REALSERVER_SERVICE: "restart", "haproxy": "reload"},
                    pki_under=C.HAPROXY_PKI_DIR, pki_notifies=("haproxy",)),
    "directors": Tier("directors", C.ROLE_LVS, ("keepalived",), tuple(keepalived_task.PACKAGES),
                      {"keepalived": "reload"}, extra=("ip_vs",)),
    "etcd": Tier("etcd", C.ROLE_ETCD, ("etcd",), tuple(etcd_task.PACKAGES),
                 {"etcd": "restart", C.ETCD_BACKUP_TIMER_UNIT: "restart"},
                 pki_under=C.ETCD_PKI_DIR, pki_owner=C.ETCD_USER, pki_notifies=("etcd",),
                 extra=("wait_quorum",)),
    "workers": Tier("workers", C.ROLE_WORKERS, ("containerd",), (), {"containerd": "restart"},
                    pki_under=C.CONTAINERD_CERTS_DIR, extra=("node_prep",)),
}


@dataclass(frozen=True)
class FileMeta:
    """One rendered file as `render --json` describes it."""

    path: str
    component: str
    mode: str
    validate: str | None
    service: str | None


def files_from_render_json(doc: Mapping[str, Any]) -> dict[str, list[FileMeta]]:
    """`render --json` output -> {host: [FileMeta]}."""
    return {host: [FileMeta(f["path"], f["component"], f["mode"].replace("0o", "0"),
                            f.get("validate"), f.get("service")) for f in files]
            for host, files in doc["hosts"].items()}


def handler_name(service: str, action: str) -> str:
    return f"{action} {service}"


def _handler(service: str, action: str, daemon_reload: bool) -> dict[str, Any]:
    args: dict[str, Any] = {"name": service, "state": f"{action}ed"}
    if daemon_reload:
        args["daemon_reload"] = True
    return {"name": handler_name(service, action), "ansible.builtin.systemd_service": args}


def _packages_task(packages: Sequence[str]) -> dict[str, Any]:
    """Installed? (one dpkg-query) else apt-get install: what `host.packages` does."""
    names = " ".join(shlex.quote(p) for p in packages)
    script = (f"m=; for p in {names}; do dpkg-query -W -f='${{Status}}' \"$p\" 2>/dev/null | "
              "grep -q 'install ok installed' || m=\"$m $p\"; done; [ -z \"$m\" ] && exit 0; "
              "DEBIAN_FRONTEND=noninteractive apt-get install -y -q $m && echo CHANGED")
    return {"name": f"packages {' '.join(packages)}", "ansible.builtin.shell": script,
            "register": "k8sha_pkgs", "changed_when": "'CHANGED' in k8sha_pkgs.stdout"}


def _file_task(meta: FileMeta, notify: str | None, only_some: bool) -> dict[str, Any]:
    args: dict[str, Any] = {"src": f"{{{{ k8sha_tree }}}}/{{{{ inventory_hostname }}}}"
                                   f"{meta.path}",
                            "dest": meta.path, "mode": meta.mode, "owner": "root",
                            "group": "root"}
    if meta.validate:
        args["validate"] = meta.validate.replace("{path}", ANSIBLE_VALIDATE_PLACEHOLDER)
    task: dict[str, Any] = {"name": f"file {meta.path}", "ansible.builtin.copy": args}
    if notify:
        task["notify"] = notify
    if only_some:
        task["when"] = f"'{meta.path}' in k8sha_paths"
    return task


def _pki_task(tier: Tier, notify: Sequence[str]) -> dict[str, Any]:
    task: dict[str, Any] = {
        "name": f"PKI under {tier.pki_under}",
        "ansible.builtin.copy": {"src": "{{ item.src }}", "dest": "{{ item.dest }}",
                                 "mode": "{{ item.mode }}", "owner": tier.pki_owner,
                                 "group": tier.pki_owner},
        "loop": "{{ k8sha_pki }}",
        "loop_control": {"label": "{{ item.dest }}"},
    }
    if notify:
        task["notify"] = list(notify)
    return task


def _dirs_task(dirs: Sequence[str]) -> dict[str, Any]:
    """The parent directories of every upload (the deploy's upload makes them, 0755 root;
    Ansible's copy does not)."""
    return {"name": "directories", "ansible.builtin.file": {
        "path": "{{ item }}", "state": "directory", "mode": "0755"}, "loop": list(dirs)}


def _service_task(service: str, *, state: str | None = "started") -> dict[str, Any]:
    args: dict[str, Any] = {"name": service, "enabled": True}
    if state:
        args["state"] = state
    return {"name": f"service {service}", "ansible.builtin.systemd_service": args}


def _ip_vs_tasks() -> list[dict[str, Any]]:
    return [{"name": "ip_vs loaded",
             "ansible.builtin.shell": "modprobe ip_vs 2>/dev/null || true; "
                                      "grep -q '^ip_vs' /proc/modules",
             "changed_when": False}]


def _sysctl_content() -> str:
    body = "".join(f"{k} = {v}\n" for k, v in K.KUBERNETES_SYSCTLS.items())
    return "# managed by nornir-k8sha\n" + body


SYSCTL_HANDLER = "apply kubernetes sysctls"


def _node_prep_before() -> list[dict[str, Any]]:
    """kubeadm.prepare_node before containerd's files: swap, modules, sysctls."""
    modules = " ".join(K.KUBERNETES_MODULES)
    return [
        {"name": "swap devices", "ansible.builtin.command": "swapon --noheadings --show=NAME",
         "register": "k8sha_swaps", "changed_when": False},
        {"name": "swap off", "ansible.builtin.shell":
            "swapoff -a && sed -ri '/\\sswap\\s/s/^#?/#/' /etc/fstab",
         "when": "k8sha_swaps.stdout | trim | length > 0"},
        {"name": "kernel modules at boot", "ansible.builtin.copy": {
            "content": "".join(f"{m}\n" for m in K.KUBERNETES_MODULES),
            "dest": C.KUBERNETES_MODULES, "mode": "0644"}},
        {"name": "kernel modules now", "ansible.builtin.shell":
            f"for m in {modules}; do modprobe $m 2>/dev/null || true; done",
         "changed_when": False},
        {"name": "kubernetes sysctls", "ansible.builtin.copy": {
            "content": _sysctl_content(), "dest": C.KUBERNETES_SYSCTL, "mode": "0644"},
         "notify": SYSCTL_HANDLER},
    ]


def _node_prep_after(spec: ClusterSpec) -> list[dict[str, Any]]:
    """kubeadm.prepare_node after containerd's files, then harbor.trust_registry's hosts line."""
    version = spec.settings.kubernetes.version
    minor = ".".join(version.split(".")[:2])
    repo = spec.settings.kubernetes.package_repo.format(minor=minor)
    pin = "".join(f"Package: {p}\nPin: version {version}-*\nPin-Priority: 1001\n\n"
                  for p in K.KUBERNETES_PACKAGES)
    wanted = " ".join(f"{p}={version}-*" for p in K.KUBERNETES_PACKAGES)
    outdated = f"k8sha_kubeadm.stdout | default('') | trim != 'v{version}'"
    harbor = spec.role(C.ROLE_HARBOR)
    tasks: list[dict[str, Any]] = [
        {"name": "kubeadm version", "ansible.builtin.command": "kubeadm version -o short",
         "register": "k8sha_kubeadm", "changed_when": False, "failed_when": False},
        {"name": "kubernetes packages", "when": outdated, "block": [
            {"name": "repository key", "ansible.builtin.shell":
                f"install -d -m 0755 {shlex.quote(str(Path(K.KUBERNETES_KEYRING).parent))} && "
                f"curl -fsSL {shlex.quote(repo + 'Release.key')} | gpg --dearmor --batch "
                f"--yes -o {shlex.quote(K.KUBERNETES_KEYRING)}",
             "args": {"creates": K.KUBERNETES_KEYRING}},
            {"name": "repository", "ansible.builtin.copy": {
                "content": f"deb [signed-by={K.KUBERNETES_KEYRING}] {repo} /\n",
                "dest": K.KUBERNETES_APT_SOURCE, "mode": "0644"}},
            {"name": "pin", "ansible.builtin.copy": {
                "content": pin, "dest": K.KUBERNETES_APT_PIN, "mode": "0644"}},
            {"name": "install and hold", "ansible.builtin.shell":
                f"apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "
                f"{wanted} && apt-mark hold {' '.join(K.KUBERNETES_PACKAGES)}"},
        ]},
        _service_task("kubelet", state=None),
    ]
    if harbor:
        line = f"{harbor[0].address} {spec.settings.registry.name} {HOSTS_MARK}"
        tasks.append({"name": "registry name in /etc/hosts", "ansible.builtin.lineinfile": {
            "path": C.ETC_HOSTS, "regexp": f"{HOSTS_MARK}$", "line": line}})
    return tasks


def _wait_quorum(spec: ClusterSpec, state_dir: Path) -> dict[str, Any]:
    """etcd.wait_for_quorum: every member's /health over mTLS, from this machine."""
    pki = ClusterPKI(spec, state_dir)
    client = pki.healthcheck_client
    port = spec.settings.etcd.client_port
    return {
        "name": "etcd members healthy (mTLS, from the controller)",
        "ansible.builtin.uri": {
            "url": f"https://{{{{ item }}}}:{port}/health",
            "ca_path": str(Path(pki.etcd_ca.cert).resolve()),
            "client_cert": str(Path(client.cert).resolve()),
            "client_key": str(Path(client.key).resolve()),
            "return_content": True,
        },
        "register": "k8sha_health",
        # etcd answers text/plain: look for the field in the body
        "until": "'\"health\":\"true\"' in (k8sha_health.content | default(''))",
        "retries": 120, "delay": 0.5,
        "loop": [str(h.address) for h in spec.role(C.ROLE_ETCD)],
        "delegate_to": "localhost", "run_once": True,
    }


def tier_files(tier: Tier, files: Mapping[str, Sequence[FileMeta]],
               hosts: Sequence[str]) -> tuple[list[FileMeta], set[str]]:
    """The union of the tier's rendered files over its hosts (first host's order), and the
    paths that only some hosts have (their tasks get a `when`)."""
    seen: dict[str, FileMeta] = {}
    per_host: list[set[str]] = []
    for host in hosts:
        mine = [f for f in files.get(host, ()) if f.component in tier.components]
        per_host.append({f.path for f in mine})
        for f in mine:
            seen.setdefault(f.path, f)
    common = set.intersection(*per_host) if per_host else set()
    return list(seen.values()), set(seen) - common


def build_play(tier: Tier, spec: ClusterSpec, files: Mapping[str, Sequence[FileMeta]],
               state_dir: Path) -> dict[str, Any]:
    """One play for one tier (see the module docstring)."""
    hosts = [h.name for h in spec.role(tier.role)]
    metas, only_some = tier_files(tier, files, hosts)
    unit_services = {f.service for f in metas
                     if f.service and f.path.startswith("/etc/systemd/")}
    notifies = {s: handler_name(s, a) for s, a in tier.services.items()}
    tasks: list[dict[str, Any]] = []
    handlers: list[dict[str, Any]] = []
    if tier.packages:
        tasks.append(_packages_task(tier.packages))
    if "ip_vs" in tier.extra:
        tasks.extend(_ip_vs_tasks())
    if "node_prep" in tier.extra:
        tasks.extend(_node_prep_before())
        handlers.append({"name": SYSCTL_HANDLER,
                         "ansible.builtin.command": f"sysctl -p {C.KUBERNETES_SYSCTL}"})
    dirs = sorted({str(Path(m.path).parent) for m in metas}
                  | ({str(Path(d).parent) for d in pki_dests(tier, spec, state_dir)}))
    tasks.append(_dirs_task(dirs))
    if tier.pki_under and tier.role != C.ROLE_WORKERS:  # workers trust the registry last
        tasks.append(_pki_task(tier, [notifies[s] for s in tier.pki_notifies]))
    for meta in metas:
        tasks.append(_file_task(meta, notifies.get(meta.service or ""), meta.path in only_some))
    # handlers first (a fresh host's first start is the handler's), then enabled + started
    tasks.append({"name": "apply changed inputs", "ansible.builtin.meta": "flush_handlers"})
    for service in tier.services:
        tasks.append(_service_task(service))
    if "node_prep" in tier.extra:
        tasks.extend(_node_prep_after(spec))
        tasks.append(_pki_task(tier, ()))
    if "wait_quorum" in tier.extra:
        tasks.append(_wait_quorum(spec, state_dir))
    for service, action in tier.services.items():
        handlers.append(_handler(service, action, service in unit_services))
    return {"name": f"{tier.name} tier (as nornir-k8sha deploy)", "hosts": tier.role,
            "gather_facts": False, "tasks": tasks, "handlers": handlers}


def pki_vars(tier: Tier, spec: ClusterSpec, state_dir: Path) -> dict[str, list[dict[str, str]]]:
    """{host: [{src, dest, mode}]} for the tier's part of each host's PKI bundle."""
    if tier.pki_under is None:
        return {}
    prefix = tier.pki_under.rstrip("/") + "/"
    out = {}
    for host in spec.role(tier.role):
        out[host.name] = [{"src": str(Path(b.local).resolve()), "dest": str(b.remote),
                           "mode": f"0{b.mode:o}"}
                          for b in bundle_for_host(spec, host, state_dir)
                          if str(b.remote).startswith(prefix)]
    return out


def pki_dests(tier: Tier, spec: ClusterSpec, state_dir: Path) -> set[str]:
    """Every path on a host the tier's PKI uploads go to."""
    return {e["dest"] for entries in pki_vars(tier, spec, state_dir).values() for e in entries}


def inventory_ini(spec: ClusterSpec, *, key_file: Path, known_hosts: Path, tree: Path,
                  user: str = "root", port: int = 22) -> str:
    """The lab's hosts by role (group = role), reached as `deploy` reaches them: the same user,
    key and known_hosts with strict host-key checking."""
    lines = []
    for role in C.LINUX_ROLES:
        members = spec.role(role)
        if not members:
            continue
        lines.append(f"[{role}]")
        lines.extend(f"{h.name} ansible_host={h.address}" for h in members)
        lines.append("")
    common = (f"-o UserKnownHostsFile={known_hosts.resolve()} -o StrictHostKeyChecking=yes "
              "-o IdentitiesOnly=yes -o BatchMode=yes")
    lines += ["[all:vars]", f"ansible_user={user}", f"ansible_port={port}",
              f"ansible_ssh_private_key_file={key_file.resolve()}",
              f"ansible_ssh_common_args='{common}'",
              "ansible_python_interpreter=/usr/bin/python3",
              f"k8sha_tree={tree.resolve()}", ""]
    return "\n".join(lines)


def ansible_cfg(*, forks: int, control_path_dir: Path) -> str:
    """Tuned as the Ansible docs advise: forks >= hosts, pipelining, ControlPersist, no fact
    gathering, no interpreter discovery, no retry files."""
    return "\n".join([
        "[defaults]",
        "inventory = inventory.ini",
        f"forks = {forks}",
        "gathering = explicit",
        "host_key_checking = True",
        "interpreter_python = /usr/bin/python3",
        "retry_files_enabled = False",
        "",
        "[ssh_connection]",
        "pipelining = True",
        # ServerAlive: a master whose lab host is gone exits by itself within 2 minutes (a
        # tighter 5 s x 2 cut the UML directors off while a module started on them)
        "ssh_args = -o ControlMaster=auto -o ControlPersist=30m -o ServerAliveInterval=30 "
        "-o ServerAliveCountMax=4",
        f"control_path_dir = {control_path_dir}",
        "",
    ])


def write_bench_dir(out: Path, spec: ClusterSpec, render_doc: Mapping[str, Any], tree: Path,
                    state_dir: Path, *, key_file: Path, known_hosts: Path,
                    control_path_dir: Path, tiers: Sequence[str] = tuple(TIERS)) -> dict[str, Path]:
    """ansible.cfg, inventory.ini, host_vars/<host>.yml and one playbook per tier in `out`.
    Returns {tier: playbook path}."""
    out.mkdir(parents=True, exist_ok=True)
    files = files_from_render_json(render_doc)
    linux = [h for h in spec.hosts if any(h.has_role(r) for r in C.LINUX_ROLES)]
    (out / "ansible.cfg").write_text(ansible_cfg(forks=max(len(linux), 5),
                                                 control_path_dir=control_path_dir))
    (out / "inventory.ini").write_text(inventory_ini(spec, key_file=key_file,
                                                     known_hosts=known_hosts, tree=tree))
    host_vars: dict[str, dict[str, Any]] = {}
    books = {}
    for name in tiers:
        tier = TIERS[name]
        for host, entries in pki_vars(tier, spec, state_dir).items():
            host_vars.setdefault(host, {})["k8sha_pki"] = entries
        hosts = [h.name for h in spec.role(tier.role)]
        _, only_some = tier_files(tier, files, hosts)
        if only_some:
            for host in hosts:
                host_vars.setdefault(host, {})["k8sha_paths"] = [
                    f.path for f in files.get(host, ()) if f.component in tier.components]
        books[name] = out / f"{name}.yml"
        books[name].write_text(yaml.safe_dump([build_play(tier, spec, files, state_dir)],
                                              sort_keys=False, width=100))
    (out / "host_vars").mkdir(exist_ok=True)
    for host, data in host_vars.items():
        (out / "host_vars" / f"{host}.yml").write_text(yaml.safe_dump(data, sort_keys=False))
    (out / "render.json").write_text(json.dumps(render_doc))
    if {"haproxy", "etcd"} <= set(books):  # the two in one command, as `deploy` runs them
        books[COMBINED] = out / f"{COMBINED}.yml"
        books[COMBINED].write_text(yaml.safe_dump(
            [{"import_playbook": "haproxy.yml"}, {"import_playbook": "etcd.yml"}]))
    return books
