"""Every config file of the cluster, rendered locally from `templates/<component>/*.j2`.

The one place that turns a `ClusterSpec` into file contents. `render` (the CLI) writes them to a
directory for review; the deploy tasks upload exactly the same `RenderedFile`s, each knowing its
on-host path, mode, the program that validates it and the service it feeds. Nothing here
touches a host or the network.

Run-time secrets (bootstrap token, CA hash, certificate key) are never rendered: files carry
`constants.PLACEHOLDER_*` markers that the deploy fills on the host. Harbor's passwords come from
the state dir: the deploy passes them as `secrets` (`files_for_component(..., secrets=...)`); a
plain render shows `UNRENDERED_SECRET` instead. A file that holds a password, token or key is
`secret`: the deploy shows only that it changed, never its diff.

API:
    files_for_host(spec, host)                 -> list[RenderedFile]
    files_for_component(spec, host, component) -> list[RenderedFile]  ([] if not this host's)
    render_all(spec)                           -> {host name: [RenderedFile]}
    render_tree(spec, out_dir)                 -> {host name: [RenderedFile]}, written to
                                                  out_dir/<host>/<path without leading />
    write_tree(rendered, out_dir)              -> the paths written
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nornir_k8sha import constants as C
from nornir_k8sha.topology import ClusterSpec, HostSpec

if TYPE_CHECKING:
    from jinja2 import Environment, Template

#: Component names, in the order a host applies them.
COMPONENTS: tuple[str, ...] = (
    "realserver", "haproxy", "keepalived", "frr", "etcd", "containerd", "kubeadm",
    "registry", "harbor", "switch",
)
#: What each role runs. A host with several roles gets the union, in COMPONENTS order.
ROLE_COMPONENTS: dict[str, tuple[str, ...]] = {
    C.ROLE_LVS: ("keepalived", "frr"),
    C.ROLE_HAPROXY: ("realserver", "haproxy"),
    C.ROLE_ETCD: ("etcd",),
    C.ROLE_MASTERS: ("containerd", "kubeadm"),
    C.ROLE_WORKERS: ("containerd", "kubeadm"),
    C.ROLE_HARBOR: ("registry", "harbor"),
    C.ROLE_SWITCHES: ("switch",),
}
#: The banner every rendered file starts with (in the file's own comment syntax).
MANAGED = "Managed by nornir-k8sha: local edits are overwritten by the next deploy."
#: What a plain render shows where the deploy puts a secret from the state dir.
UNRENDERED_SECRET = "<secret: the deploy fills it in from the state dir>"
#: The secrets a template may be given (`files_for_component(..., secrets=...)`).
SECRET_NAMES: tuple[str, ...] = ("harbor_admin_password", "harbor_db_password")


@dataclass(frozen=True)
class RenderedFile:
    """One file for one host. `validate_cmd` has a `{path}` placeholder for the file to check
    (the deploy validates the uploaded temp file before swapping it in)."""

    path: str
    content: str
    component: str
    mode: int = 0o644
    validate_cmd: str | None = None
    service: str | None = None
    #: Holds a password, token or key: no diff of it in any output, only that it changed.
    secret: bool = False

    def validate_command(self, path: str | None = None) -> str | None:
        """The validator command line for `path` (default: the file's own path)."""
        if self.validate_cmd is None:
            return None
        return self.validate_cmd.format(path=path or self.path)


Pred = Callable[[ClusterSpec, HostSpec], bool]
PathOf = Callable[[ClusterSpec, HostSpec], str]


def _always(spec: ClusterSpec, host: HostSpec) -> bool:
    return True


@dataclass(frozen=True)
class FileRule:
    """How one template becomes one file: where it goes, who checks it, what it restarts."""

    component: str
    template: str
    path: str | PathOf
    mode: int = 0o644
    validate_cmd: str | None = None
    service: str | None = None
    when: Pred = field(default=_always)
    secret: bool | Pred = False

    def path_for(self, spec: ClusterSpec, host: HostSpec) -> str:
        return self.path if isinstance(self.path, str) else self.path(spec, host)

    def is_secret(self, spec: ClusterSpec, host: HostSpec) -> bool:
        return self.secret if isinstance(self.secret, bool) else self.secret(spec, host)


# --- facts the templates need, derived once per spec ------------------------------------------


def _has_vrrp_auth(spec: ClusterSpec, host: HostSpec) -> bool:
    return bool(spec.settings.vrrp.auth_pass)


def _switch_template(spec: ClusterSpec, host: HostSpec) -> str:
    return f"switch/{host.platform or 'cisco_ios'}.j2"


FILE_RULES: tuple[FileRule, ...] = (
    FileRule("realserver", "realserver/sysctl.conf.j2", C.REALSERVER_SYSCTL,
             service=C.REALSERVER_SERVICE),
    FileRule("realserver", "realserver/vip-lo.service.j2", C.REALSERVER_UNIT,
             service=C.REALSERVER_SERVICE),
    FileRule("haproxy", "haproxy/haproxy.cfg.j2", C.HAPROXY_CFG,
             validate_cmd="haproxy -c -f {path}", service="haproxy"),
    FileRule("keepalived", "keepalived/keepalived.conf.j2", C.KEEPALIVED_CONF, mode=0o640,
             validate_cmd="keepalived -t -f {path}", service="keepalived",
             secret=_has_vrrp_auth),
    FileRule("frr", "frr/daemons.j2", C.FRR_DAEMONS, service="frr",
             when=ClusterSpec.announces_vip),
    FileRule("frr", "frr/frr.conf.j2", C.FRR_CONF, validate_cmd="vtysh -C -f {path}",
             service="frr", when=ClusterSpec.announces_vip),
    FileRule("etcd", "etcd/etcd.conf.yml.j2", C.ETCD_CONF, service="etcd"),
    FileRule("etcd", "etcd/etcd.service.j2", C.ETCD_UNIT, service="etcd"),
    # scheduled snapshots: the script, a oneshot unit and its timer (started by etcd.configure)
    FileRule("etcd", "etcd/backup.sh.j2", C.ETCD_BACKUP_SCRIPT, mode=0o755,
             validate_cmd="bash -n {path}"),
    FileRule("etcd", "etcd/backup.service.j2", C.ETCD_BACKUP_UNIT,
             service=C.ETCD_BACKUP_TIMER_UNIT),
    FileRule("etcd", "etcd/backup.timer.j2", C.ETCD_BACKUP_TIMER,
             service=C.ETCD_BACKUP_TIMER_UNIT),
    FileRule("containerd", "containerd/config.toml.j2", C.CONTAINERD_CONFIG,
             service="containerd"),
    # certs.d is read per pull: a changed hosts.toml needs no restart.
    FileRule("containerd", "containerd/hosts.toml.j2", lambda s, h: s.registry_hosts_toml),
    FileRule("kubeadm", "kubeadm/init.yaml.j2", C.KUBEADM_CONFIG, mode=0o600,
             when=ClusterSpec.is_first_master),
    FileRule("kubeadm", "kubeadm/join-control-plane.yaml.j2", C.KUBEADM_JOIN_CONTROL_PLANE,
             mode=0o600, when=ClusterSpec.joins_as_control_plane, secret=True),
    FileRule("kubeadm", "kubeadm/join-worker.yaml.j2", C.KUBEADM_JOIN_WORKER, mode=0o600,
             when=ClusterSpec.joins_as_worker, secret=True),
    FileRule("registry", "registry/config.yml.j2", C.REGISTRY_CONFIG, mode=0o644,
             service="docker-registry"),
    FileRule("registry", "registry/docker-registry.conf.j2", C.REGISTRY_DROPIN,
             service="docker-registry"),
    FileRule("harbor", "harbor/harbor.yml.j2", C.HARBOR_YML, mode=0o600, secret=True),
    # The template is chosen by the switch platform: switch/<platform>.j2.
    FileRule("switch", "switch/<platform>.j2", C.SWITCH_BGP_CONFIG),
)
_RULES_BY_COMPONENT: dict[str, tuple[FileRule, ...]] = {
    comp: tuple(r for r in FILE_RULES if r.component == comp) for comp in COMPONENTS
}


# --- the Jinja environment: built once, templates compiled once --------------------------------


def _yaml_quote(value: Any) -> str:
    """A scalar as a double-quoted string: valid in YAML and TOML alike, no surprises
    (`no`, `1e3`, `on`...)."""
    return json.dumps(str(value))


def _num(value: float) -> str:
    """1.0 -> "1", 0.1 -> "0.1": keepalived reads fractions only where it allows them."""
    return f"{value:g}"


@cache
def environment() -> Environment:
    # Jinja2 is imported here, on first use: `check` imports this module (the tasks render in
    # `configure`) but renders nothing, and jinja2 is ~25 ms of its start-up (issue 12.3).
    from jinja2 import Environment, FileSystemLoader, StrictUndefined

    env = Environment(
        loader=FileSystemLoader(str(C.TEMPLATES_DIR)),
        undefined=StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,
        auto_reload=False,
    )
    env.filters["q"] = _yaml_quote
    env.filters["num"] = _num
    return env


@cache
def template(name: str) -> Template:
    return environment().get_template(name)


# --- contexts ---------------------------------------------------------------------------------

#: One cluster-wide context per spec object (hundreds of hosts share it). Keyed by id(); the
#: spec itself is kept in the value so the id cannot be reused while cached.
_CLUSTER_CTX: dict[int, tuple[ClusterSpec, dict[str, Any]]] = {}
_CLUSTER_CTX_MAX = 8


def _cluster_context(spec: ClusterSpec) -> dict[str, Any]:
    hit = _CLUSTER_CTX.get(id(spec))
    if hit is not None and hit[0] is spec:
        return hit[1]
    s = spec.settings
    masters = spec.role(C.ROLE_MASTERS)
    lvs = spec.role(C.ROLE_LVS)
    haproxy = spec.role(C.ROLE_HAPROXY)
    sans: list[str] = []
    for item in (str(spec.vip), *(x for h in (*lvs, *haproxy, *masters)
                                  for x in (h.name, str(h.address)))):
        if item not in sans:
            sans.append(item)
    ctx = {
        "C": C,
        "spec": spec,
        "s": s,
        "cluster": spec.name,
        "managed": MANAGED,
        "vip": str(spec.vip),
        "network": spec.network,
        "lvs": lvs,
        "haproxy": haproxy,
        "etcd": spec.role(C.ROLE_ETCD),
        "masters": masters,
        "switches": spec.role(C.ROLE_SWITCHES),
        "etcd_initial_cluster": spec.etcd_initial_cluster(),
        "etcd_endpoints": spec.etcd_endpoints(),
        "api_endpoint": spec.api_endpoint,
        "apiserver_cert_sans": sans,
        "kubernetes_version": "v" + s.kubernetes.version.removeprefix("v"),
        "registry_host": spec.registry_host,
        "registry_ca": spec.registry_ca_on_node,
        "vrrp_priorities": spec.vrrp_priorities,
        **dict.fromkeys(SECRET_NAMES, UNRENDERED_SECRET),
    }
    if len(_CLUSTER_CTX) >= _CLUSTER_CTX_MAX:
        _CLUSTER_CTX.clear()
    _CLUSTER_CTX[id(spec)] = (spec, ctx)
    return ctx


def _host_context(spec: ClusterSpec, host: HostSpec) -> dict[str, Any]:
    ctx = dict(_cluster_context(spec))
    ctx["host"] = host
    ctx["iface"] = host.data.interface or spec.settings.vrrp.interface
    if host.has_role(C.ROLE_LVS):
        ctx["bgp_peers"] = spec.director_peers(host)
    if host.has_role(C.ROLE_SWITCHES):
        ctx["bgp_peers"] = spec.switch_peers(host)
    return ctx


# --- the API ----------------------------------------------------------------------------------


def components_for_host(host: HostSpec) -> list[str]:
    """The components a host runs, in apply order."""
    wanted = {c for role in host.roles for c in ROLE_COMPONENTS.get(role, ())}
    return [c for c in COMPONENTS if c in wanted]


def _resolve(spec: ClusterSpec, host: HostSpec | str) -> HostSpec:
    return spec.host(host) if isinstance(host, str) else host


def _render(spec: ClusterSpec, host: HostSpec, rules: Iterable[FileRule],
            ctx: dict[str, Any] | None = None) -> list[RenderedFile]:
    out: list[RenderedFile] = []
    for rule in rules:
        if not rule.when(spec, host):
            continue
        if ctx is None:
            ctx = _host_context(spec, host)
        name = _switch_template(spec, host) if rule.component == "switch" else rule.template
        out.append(RenderedFile(
            path=rule.path_for(spec, host),
            content=template(name).render(ctx),
            component=rule.component,
            mode=rule.mode,
            validate_cmd=rule.validate_cmd,
            service=rule.service,
            secret=rule.is_secret(spec, host),
        ))
    return out


def files_for_component(spec: ClusterSpec, host: HostSpec | str, component: str, *,
                        secrets: Mapping[str, str] | None = None) -> list[RenderedFile]:
    """This host's files of one component; [] when the host does not run it. `secrets`
    (names in SECRET_NAMES) replace UNRENDERED_SECRET in its templates."""
    if component not in _RULES_BY_COMPONENT:
        raise ValueError(f"unknown component {component!r} (one of {', '.join(COMPONENTS)})")
    unknown = set(secrets or ()) - set(SECRET_NAMES)
    if unknown:
        raise ValueError(f"unknown secret(s) {', '.join(sorted(unknown))}")
    me = _resolve(spec, host)
    if component not in components_for_host(me):
        return []
    ctx = {**_host_context(spec, me), **secrets} if secrets else None
    return _render(spec, me, _RULES_BY_COMPONENT[component], ctx)


def files_for_host(spec: ClusterSpec, host: HostSpec | str) -> list[RenderedFile]:
    """Every file of every component this host runs, in apply order. A harbor host gets both
    the Distribution (`registry`) and the Harbor (`harbor`) files; the deploy picks one."""
    me = _resolve(spec, host)
    ctx = _host_context(spec, me)
    out: list[RenderedFile] = []
    for component in components_for_host(me):
        out.extend(_render(spec, me, _RULES_BY_COMPONENT[component], ctx))
    return out


def render_all(spec: ClusterSpec) -> dict[str, list[RenderedFile]]:
    """Every host's files, in inventory order. Pure: nothing is written."""
    return {h.name: files_for_host(spec, h) for h in spec.hosts}


def tree_path(out_dir: Path, host: str, path: str) -> Path:
    """Where `render_tree` puts a host's file: out_dir/<host>/<path without leading />."""
    rel = Path(path.lstrip("/"))
    if ".." in rel.parts:
        raise ValueError(f"refusing to write outside {out_dir}: {path}")
    return out_dir / host / rel


def write_tree(rendered: dict[str, list[RenderedFile]], out_dir: Path | str) -> list[Path]:
    """Write `out_dir/<host>/<path>` with each file's mode; returns the paths written."""
    out_dir = Path(out_dir)
    written = []
    for host, files in rendered.items():
        for f in files:
            target = tree_path(out_dir, host, f.path)
            target.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, f.mode)
            with os.fdopen(fd, "w") as fh:
                fh.write(f.content)
            os.chmod(target, f.mode)
            written.append(target)
    return written


def render_tree(spec: ClusterSpec, out_dir: Path | str) -> dict[str, list[RenderedFile]]:
    """Render everything first, then write `out_dir/<host>/<path>` with each file's mode.
    A template error therefore writes nothing."""
    rendered = render_all(spec)
    write_tree(rendered, out_dir)
    return rendered


__all__ = [
    "COMPONENTS",
    "FILE_RULES",
    "ROLE_COMPONENTS",
    "SECRET_NAMES",
    "UNRENDERED_SECRET",
    "RenderedFile",
    "components_for_host",
    "files_for_component",
    "files_for_host",
    "render_all",
    "render_tree",
    "tree_path",
    "write_tree",
]
