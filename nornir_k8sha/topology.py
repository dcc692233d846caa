"""The cluster as validated data, and every placement rule of the topology — in this file only.

`load_cluster_spec(dir)` reads an inventory directory strictly, checks every rule and returns a
`ClusterSpec`, or raises `ValidationFailed` listing every error with its file, host and field.
`analyse(dir)` returns the spec (when buildable) and all findings (errors and warnings) for
`validate`. The physical-machine analysis answers, for each machine, what its loss leaves.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cached_property
from ipaddress import IPv4Address, IPv4Interface, IPv4Network, ip_address
from pathlib import Path
from typing import Any, Literal

from nornir.core import Nornir
from nornir.core.inventory import Host, Inventory
from pydantic import BaseModel, ValidationError

from nornir_k8sha import constants as C
from nornir_k8sha.exceptions import ValidationFailed
from nornir_k8sha.inventory import (
    DEFAULTS_FILE,
    HOSTS_FILE,
    RawInventory,
    inventory_from_raw,
    read_raw_inventory,
)
from nornir_k8sha.settings import BGPSettings, ClusterSettings, HostData

# --- the rules' numbers ------------------------------------------------------------------------

#: Minimum hosts per role (DESIGN.md 1). Nodes may be added, never removed below these.
MIN_COUNTS: dict[str, int] = {
    C.ROLE_LVS: 2,
    C.ROLE_HAPROXY: 2,
    C.ROLE_ETCD: 3,
    C.ROLE_MASTERS: 2,
    C.ROLE_WORKERS: 1,
    C.ROLE_HARBOR: 1,
    C.ROLE_SWITCHES: 0,
}
RECOMMENDED_MASTERS = 3
#: Recommended sizes per role (DESIGN.md 1): (cpu, memory_gb). Below them: a warning.
RECOMMENDED_SIZE: dict[str, tuple[int, float]] = {
    C.ROLE_LVS: (4, 4),
    C.ROLE_HAPROXY: (4, 4),
    C.ROLE_ETCD: (4, 8),
    C.ROLE_MASTERS: (4, 8),
}
#: VRRP priorities chosen for LVS hosts that declare none: highest first.
DEFAULT_VRRP_PRIORITIES = (150, 100, 90, 80, 70, 60, 50, 40)
KUBERNETES_VERSION = re.compile(r"^1\.\d{2}\.\d+$")

Severity = Literal["error", "warning"]


def etcd_quorum(members: int) -> int:
    """Votes needed for a raft majority: (n/2)+1."""
    return members // 2 + 1


def etcd_tolerance(members: int) -> int:
    """Members that may fail while quorum holds; even counts add nothing over n-1."""
    return max(members - etcd_quorum(members), 0)


@dataclass(frozen=True)
class EtcdStep:
    """One membership change of a running etcd cluster, and the cluster right after it."""

    action: Literal["add", "remove"]
    member: str
    members_after: int
    healthy_after: int

    @property
    def quorum_after(self) -> int:
        return etcd_quorum(self.members_after)


@dataclass(frozen=True)
class EtcdMembershipPlan:
    """How a running etcd cluster becomes the inventory's member set, one member at a time:
    every addition first (a learner, promoted once in sync), then every removal (unhealthy
    members first). `problem` says why it must not be tried at all (nothing is touched)."""

    running: tuple[str, ...]
    wanted: tuple[str, ...]
    steps: tuple[EtcdStep, ...]
    problem: str | None = None

    @property
    def adds(self) -> list[str]:
        return [s.member for s in self.steps if s.action == "add"]

    @property
    def removes(self) -> list[str]:
        return [s.member for s in self.steps if s.action == "remove"]


def etcd_membership_plan(running: Iterable[str], healthy: Iterable[str],
                         wanted: Iterable[str]) -> EtcdMembershipPlan:
    """The rule for changing a RUNNING etcd cluster's members (the inventory grew or shrank).

    Refused (nothing touched) when
    - the running cluster has no quorum now (only `etcd restore` helps then);
    - fewer than a quorum of the running members stay in the inventory: a majority would leave
      at once (5 -> 1, 3 -> 1, or most members swapped for new ones): at most a minority of the
      members may change in one deploy, so the members that stay always hold the data;
    - some step would leave fewer healthy members than its quorum (removing a healthy member
      while another one is down).
    Additions come first (a learner does not count towards quorum until it is promoted, and a
    promoted member is healthy), then removals, unhealthy members first.
    """
    now, wanted_t = tuple(running), tuple(wanted)
    well = set(healthy) & set(now)
    if not now:
        return EtcdMembershipPlan(now, wanted_t, ())
    quorum = etcd_quorum(len(now))
    if len(well) < quorum:
        return EtcdMembershipPlan(now, wanted_t, (), problem=(
            f"the running etcd cluster has no quorum ({len(well)}/{len(now)} members healthy, "
            f"quorum {quorum}): its members cannot be changed; bring members back or use "
            "`etcd restore --from SNAPSHOT`"))
    kept = [m for m in now if m in wanted_t]
    if len(kept) < quorum:
        leaving = [m for m in now if m not in wanted_t]
        return EtcdMembershipPlan(now, wanted_t, (), problem=(
            f"the inventory keeps {len(kept)} of the {len(now)} running etcd members "
            f"({', '.join(kept) or 'none'}) and drops {', '.join(leaving)}: at least "
            f"{quorum} (a quorum of the running cluster) must stay in one deploy; remove at "
            f"most {len(now) - quorum} member(s) at a time"))
    steps: list[EtcdStep] = []
    members, up = len(now), len(well)
    for name in (m for m in wanted_t if m not in now):
        members, up = members + 1, up + 1
        steps.append(EtcdStep("add", name, members, up))
    leaving = sorted((m for m in now if m not in wanted_t), key=lambda m: m in well)
    for name in leaving:
        members, up = members - 1, up - (name in well)
        step = EtcdStep("remove", name, members, up)
        if up < step.quorum_after:
            return EtcdMembershipPlan(now, wanted_t, tuple(steps), problem=(
                f"removing etcd member {name} would leave {up} healthy of {members} members, "
                f"below their quorum {step.quorum_after}: bring the unhealthy members back "
                "(or `etcd replace` them) first"))
        steps.append(step)
    return EtcdMembershipPlan(now, wanted_t, tuple(steps))


# --- data --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Finding:
    """One broken rule or warning, naming where to look."""

    severity: Severity
    rule: str
    message: str
    where: str = ""
    host: str | None = None
    field: str | None = None

    def __str__(self) -> str:
        subject = f"host {self.host}: " if self.host else ""
        fld = f"field '{self.field}': " if self.field else ""
        where = f"{self.where}: " if self.where else ""
        return f"{where}{subject}{fld}{self.message}"

    def as_dict(self) -> dict[str, Any]:
        return {
            "severity": self.severity,
            "rule": self.rule,
            "message": self.message,
            "where": self.where,
            "host": self.host,
            "field": self.field,
        }


@dataclass(frozen=True)
class HostSpec:
    """One inventory host as the topology sees it."""

    name: str
    address: IPv4Address
    roles: tuple[str, ...]
    physical_host: str | None
    data: HostData
    platform: str | None = None

    @property
    def machine(self) -> str:
        """The physical machine; a host without a label is a machine of its own."""
        return self.physical_host or self.name

    def has_role(self, role: str) -> bool:
        return role in self.roles


@dataclass(frozen=True)
class MachineLoss:
    """What losing one physical machine leaves of the cluster."""

    machine: str
    hosts: tuple[str, ...]
    etcd_left: int
    etcd_quorum: int
    masters_left: int
    haproxy_left: int
    lvs_left: int
    workers_left: int
    harbor_left: int

    @property
    def etcd_ok(self) -> bool:
        return self.etcd_left >= self.etcd_quorum

    @property
    def api_survives(self) -> bool:
        """The API needs etcd quorum, one master, one HAProxy and one LVS director."""
        return self.etcd_ok and self.masters_left >= 1 and self.haproxy_left >= 1 and (
            self.lvs_left >= 1
        )

    @property
    def verdict(self) -> str:
        if not self.etcd_ok:
            return "cluster DOWN: etcd loses quorum"
        missing = [
            role
            for role, left in (
                ("masters", self.masters_left),
                ("haproxy", self.haproxy_left),
                ("lvs", self.lvs_left),
            )
            if left < 1
        ]
        if missing:
            return "API DOWN: no " + ", no ".join(missing) + " left"
        notes = []
        if self.workers_left < 1:
            notes.append("no workers left")
        if self.harbor_left < 1:
            notes.append("registry down")
        return "API survives" + (f" ({'; '.join(notes)})" if notes else "")

    def as_dict(self) -> dict[str, Any]:
        return {
            "machine": self.machine,
            "hosts": list(self.hosts),
            "etcd_left": self.etcd_left,
            "etcd_quorum": self.etcd_quorum,
            "masters_left": self.masters_left,
            "haproxy_left": self.haproxy_left,
            "lvs_left": self.lvs_left,
            "workers_left": self.workers_left,
            "harbor_left": self.harbor_left,
            "etcd_ok": self.etcd_ok,
            "api_survives": self.api_survives,
            "verdict": self.verdict,
        }


@dataclass(frozen=True)
class ClusterSpec:
    """The validated cluster: settings plus hosts, with the derived facts everyone needs."""

    settings: ClusterSettings
    hosts: tuple[HostSpec, ...]
    inventory_dir: Path | None = None
    # Indexes built per instance (init=False: dataclasses.replace() builds fresh ones).
    _by_name: dict[str, HostSpec] = field(default_factory=dict, init=False, repr=False,
                                          compare=False)
    _by_role: dict[str, tuple[HostSpec, ...]] = field(default_factory=dict, init=False,
                                                       repr=False, compare=False)

    def __post_init__(self) -> None:
        self._by_name.update({h.name: h for h in self.hosts})
        # role() is called per host by rules, renderers and tasks: index once, not O(n) per call.
        for role in {r for h in self.hosts for r in h.roles} | set(C.ROLES):
            self._by_role[role] = tuple(h for h in self.hosts if h.has_role(role))

    @classmethod
    def from_nornir(cls, nr: Nornir) -> ClusterSpec:
        """The spec of anyone's Nornir: see `spec_from_nornir`."""
        return spec_from_nornir(nr)

    @property
    def name(self) -> str:
        return self.settings.cluster_name

    @property
    def vip(self) -> IPv4Address:
        return self.settings.vip

    @property
    def network(self) -> IPv4Network:
        """The host network: the LVS directors' subnet (the VIP must live in it)."""
        anchor = self.role(C.ROLE_LVS) or self.hosts
        return IPv4Interface(f"{anchor[0].address}/{self.settings.prefix_length}").network

    @property
    def api_endpoint(self) -> str:
        """controlPlaneEndpoint: VIP:port — the one address clients use."""
        return f"{self.vip}:{self.settings.apiserver_port}"

    @property
    def is_lab(self) -> bool:
        """The embedded lab's own inventory (inventory/lab): disruptive runbooks need no
        `--yes` there, lab-only faults are allowed, and its addresses exist only on its bridge."""
        return self.name == C.LAB_CLUSTER_NAME

    @property
    def state_dir(self) -> Path:
        return C.STATE_ROOT / self.name

    def host(self, name: str) -> HostSpec:
        return self._by_name[name]

    def role(self, role: str) -> list[HostSpec]:
        """Hosts of a role in inventory order (a new list: callers may change it)."""
        return list(self._by_role.get(role, ()))

    def count(self, role: str) -> int:
        return len(self._by_role.get(role, ()))

    # --- placement rules: who does what (render, pki, tasks and checks ask here) -------------

    @property
    def first_master(self) -> HostSpec:
        """The master that runs `kubeadm init`: the first in inventory order."""
        return self.role(C.ROLE_MASTERS)[0]

    def is_first_master(self, host: HostSpec) -> bool:
        return host.name == self.first_master.name

    def joins_as_control_plane(self, host: HostSpec) -> bool:
        """Every master but the first joins with `--control-plane`."""
        return host.has_role(C.ROLE_MASTERS) and not self.is_first_master(host)

    def joins_as_worker(self, host: HostSpec) -> bool:
        """A worker that is not also a master joins as a plain node."""
        return host.has_role(C.ROLE_WORKERS) and not host.has_role(C.ROLE_MASTERS)

    def kubernetes_nodes(self) -> list[HostSpec]:
        """The hosts that become Kubernetes nodes (masters and workers), inventory order."""
        return hosts_in_roles(self, C.KUBERNETES_ROLES)

    def switch_peers(self, switch: HostSpec) -> list[HostSpec]:
        """The LVS directors a switch peers with: its `bgp_neighbors`, else every director."""
        lvs = self.role(C.ROLE_LVS)
        wanted = switch.data.bgp_neighbors
        if not wanted:
            return lvs
        chosen = set(wanted)
        return [h for h in lvs if h.address in chosen]

    def director_peers(self, director: HostSpec) -> list[HostSpec]:
        """The switches that peer with this director (the other side of `switch_peers`)."""
        return [sw for sw in self.role(C.ROLE_SWITCHES)
                if any(p.name == director.name for p in self.switch_peers(sw))]

    def announces_vip(self, host: HostSpec) -> bool:
        """A director announces the VIP /32 by BGP when announcing is on and a switch peers
        with it (FRR then runs on it; only the VIP holder's announcement is accepted)."""
        return self.settings.bgp.announce_vip and bool(self.director_peers(host))

    @property
    def registry_host(self) -> str:
        """The registry as containerd names it: `name`, or `name:port` off 443."""
        reg = self.settings.registry
        return reg.name if reg.port == 443 else f"{reg.name}:{reg.port}"

    @property
    def registry_hosts_toml(self) -> str:
        """containerd's per-registry config on every Kubernetes node."""
        return f"{C.CONTAINERD_CERTS_DIR}/{self.registry_host}/hosts.toml"

    @property
    def registry_ca_on_node(self) -> str:
        """Where the registry CA sits on every Kubernetes node (pki places it, containerd and
        the registry check read it)."""
        return f"{C.CONTAINERD_CERTS_DIR}/{self.registry_host}/{C.CONTAINERD_REGISTRY_CA}"

    @cached_property
    def vrrp_priorities(self) -> dict[str, int]:
        """VRRP priority per LVS director: declared, else distinct defaults in inventory order."""
        taken = {h.data.vrrp_priority for h in self.role(C.ROLE_LVS) if h.data.vrrp_priority}
        free = iter(p for p in DEFAULT_VRRP_PRIORITIES if p not in taken)
        return {h.name: h.data.vrrp_priority or next(free) for h in self.role(C.ROLE_LVS)}

    def etcd_peer_url(self, host: HostSpec) -> str:
        """The peer URL of etcd member `host`, as etcd.conf.yml and `initial-cluster` give it."""
        return f"https://{host.address}:{self.settings.etcd.peer_port}"

    def etcd_initial_cluster(self) -> str:
        return ",".join(f"{h.name}={self.etcd_peer_url(h)}" for h in self.role(C.ROLE_ETCD))

    def etcd_endpoints(self) -> list[str]:
        port = self.settings.etcd.client_port
        return [f"https://{h.address}:{port}" for h in self.role(C.ROLE_ETCD)]

    @property
    def machines(self) -> dict[str, list[HostSpec]]:
        out: dict[str, list[HostSpec]] = {}
        for h in self.hosts:
            out.setdefault(h.machine, []).append(h)
        return out

    def machine_losses(self) -> list[MachineLoss]:
        """For each physical machine, what its loss leaves (the seed's 3-machine argument).

        Linear in the hosts: per machine, what is left of a role is its total minus what the
        machine carries (a host with two roles counts in both).
        """
        quorum = etcd_quorum(self.count(C.ROLE_ETCD))
        losses = []
        for machine, lost in self.machines.items():
            on_machine = Counter(r for h in lost for r in h.roles)

            def left(role: str, on_machine: Counter[str] = on_machine) -> int:
                return self.count(role) - on_machine[role]

            losses.append(
                MachineLoss(
                    machine=machine,
                    hosts=tuple(sorted(h.name for h in lost)),
                    etcd_left=left(C.ROLE_ETCD),
                    etcd_quorum=quorum,
                    masters_left=left(C.ROLE_MASTERS),
                    haproxy_left=left(C.ROLE_HAPROXY),
                    lvs_left=left(C.ROLE_LVS),
                    workers_left=left(C.ROLE_WORKERS),
                    harbor_left=left(C.ROLE_HARBOR),
                )
            )
        return losses

    def etcd_table(self) -> list[dict[str, int | bool]]:
        """The seed's quorum table around this inventory's member count."""
        current = self.count(C.ROLE_ETCD)
        sizes = sorted({1, 3, 5, 7, current})
        return [
            {
                "members": n,
                "quorum": etcd_quorum(n),
                "tolerates": etcd_tolerance(n),
                "this_inventory": n == current,
            }
            for n in sizes
        ]


@dataclass
class Analysis:
    """What `validate` shows: the spec (None when the settings cannot be built) and findings."""

    spec: ClusterSpec | None
    findings: list[Finding]
    #: The directory as read, when the inventory came from one.
    raw: RawInventory | None = None

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "error"]

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "warning"]


# --- building and checking ---------------------------------------------------------------------


class _Findings(list[Finding]):
    """Findings located at file:line when the inventory came from a directory (`raw`); from
    anyone's Nornir inventory they name the host and field only."""

    def __init__(self, raw: RawInventory | None) -> None:
        super().__init__()
        self.raw = raw
        self._seen: set[Finding] = set()

    def add(
        self,
        severity: Severity,
        rule: str,
        message: str,
        *,
        host: str | None = None,
        field: str | None = None,
        where: tuple[str, ...] = (),
    ) -> None:
        if not where:
            if host:
                where = ("hosts", host, *(("data", field) if field else ()))
            elif field:
                where = ("defaults", "data", *field.split("."))
        located = self.raw.where(*where) if self.raw is not None else ""
        finding = Finding(severity, rule, message, located, host, field)
        if finding not in self._seen:  # one group's bad field would otherwise repeat per member
            self._seen.add(finding)
            self.append(finding)


def _host_data(host: Host) -> tuple[dict[str, Any], dict[str, tuple[str, ...]]]:
    """Host data over its groups' data as Nornir resolves it (host first, then the first group
    of `extended_groups()` that has the key), and where each key came from.

    Not defaults: cluster settings live there.
    """
    merged: dict[str, Any] = {}
    source: dict[str, tuple[str, ...]] = {}
    for group in reversed(host.extended_groups()):
        for key, value in group.data.items():
            merged[key] = value
            source[str(key)] = ("groups", group.name, "data")
    for key, value in host.data.items():
        merged[key] = value
        source[str(key)] = ("hosts", host.name, "data")
    return merged, source


def _pydantic_findings(
    out: _Findings,
    exc: ValidationError,
    *,
    host: str | None,
    prefix: tuple[str, ...],
    source: dict[str, tuple[str, ...]] | None = None,
) -> None:
    """One finding per pydantic error, located at the file:line of the offending key.

    For host data, a key inherited from a group is located in groups.yaml and reported once for
    the group rather than once per member host.
    """
    for err in exc.errors():
        parts = tuple(str(p) for p in err["loc"])
        loc = ".".join(parts)
        msg = "unknown field" if err["type"] == "extra_forbidden" else err["msg"]
        origin = (source or {}).get(parts[0]) if parts else None
        if origin and origin[0] == "groups":
            out.add("error", "schema", f"{msg} (data of group '{origin[1]}')", field=loc or None,
                    where=(*origin, *parts))
            continue
        out.add("error", "schema", msg, host=host, field=loc or None, where=(*prefix, *parts))


def _known(model: type[BaseModel], data: dict[str, Any]) -> dict[str, Any]:
    """Only the keys `model` knows: someone else's inventory carries data of its own."""
    return {k: v for k, v in data.items() if k in model.model_fields}


def _build_settings(inv: Inventory, out: _Findings, *, strict: bool) -> ClusterSettings | None:
    data = dict(inv.defaults.data or {})
    try:
        settings = ClusterSettings.model_validate(data if strict else _known(ClusterSettings,
                                                                               data))
    except ValidationError as exc:
        _pydantic_findings(out, exc, host=None, prefix=("defaults", "data"))
        return None
    if not 1 <= settings.prefix_length <= 32:
        # Every address rule needs the host network: without one, no spec can be built.
        out.add("error", "prefix-length", f"prefix length {settings.prefix_length} is not "
                "between 1 and 32", field="prefix_length")
        return None
    return settings


def _build_hosts(inv: Inventory, out: _Findings, *, strict: bool
                 ) -> tuple[list[HostSpec], bool]:
    """The hosts that could be built, and whether every host could.

    From our own directory (`strict`) every host must have a role and only known data; from
    anyone's Nornir inventory the hosts outside the role groups are not ours and are left out,
    and their data keys we do not know are ignored.
    """
    hosts = []
    complete = True
    for name, host in inv.hosts.items():
        groups = tuple(g.name for g in host.extended_groups())
        roles = tuple(g for g in groups if g in C.ROLES)
        if not roles and not strict:
            continue
        merged, source = _host_data(host)
        try:
            data = HostData.model_validate(merged if strict else _known(HostData, merged))
        except ValidationError as exc:
            _pydantic_findings(out, exc, host=name, prefix=("hosts", name, "data"),
                               source=source)
            complete = False
            continue
        hostname = host.hostname
        try:
            address = ip_address(str(hostname))
            if not isinstance(address, IPv4Address):
                raise ValueError
        except ValueError:
            problem = ("no hostname" if hostname is None else f"hostname {hostname!r}")
            out.add("error", "address", f"{problem}: hostname must be the host's IPv4 address",
                    host=name, field="hostname", where=("hosts", name, "hostname"))
            complete = False
            continue
        if not roles:
            out.add("error", "role", f"belongs to no role group (one of {', '.join(C.ROLES)})",
                    host=name, field="groups", where=("hosts", name, "groups"))
        platform = str(host.platform) if host.platform else None
        hosts.append(HostSpec(name, address, roles, data.physical_host, data, platform))
    return hosts, complete


def _check_counts(spec: ClusterSpec, out: _Findings) -> None:
    for role, minimum in MIN_COUNTS.items():
        have = spec.count(role)
        if have < minimum:
            out.add("error", "min-count",
                    f"role '{role}' has {have} host(s); the topology needs at least {minimum}",
                    where=("hosts",))
    masters = spec.count(C.ROLE_MASTERS)
    if MIN_COUNTS[C.ROLE_MASTERS] <= masters < RECOMMENDED_MASTERS:
        out.add("warning", "masters-recommended",
                f"{masters} masters: {RECOMMENDED_MASTERS} are recommended", where=("hosts",))
    etcd = spec.count(C.ROLE_ETCD)
    if etcd and etcd % 2 == 0:
        out.add("warning", "etcd-odd",
                f"{etcd} etcd members tolerate {etcd_tolerance(etcd)} failure(s), the same as "
                f"{etcd - 1}: an even count adds no tolerance", where=("hosts",))


def _check_addresses(spec: ClusterSpec, out: _Findings) -> None:
    seen: dict[IPv4Address, str] = {}
    for h in spec.hosts:
        if h.address in seen:
            out.add("error", "unique-address",
                    f"address {h.address} is already used by host {seen[h.address]}",
                    host=h.name, field="hostname", where=("hosts", h.name, "hostname"))
        seen.setdefault(h.address, h.name)
    vip = spec.vip
    lvs = spec.role(C.ROLE_LVS)
    if lvs:
        net = spec.network
        for h in lvs:
            if h.address not in net:
                out.add("error", "lvs-subnet",
                        f"LVS director {h.address} is not in {net}, the directors' subnet",
                        host=h.name, field="hostname", where=("hosts", h.name, "hostname"))
        if vip not in net or vip in (net.network_address, net.broadcast_address):
            out.add("error", "vip-subnet", f"VIP {vip} is not a usable address of the LVS "
                    f"subnet {net}", field="vip")
    if vip in seen:
        out.add("error", "vip-unique", f"VIP {vip} is also the address of host {seen[vip]}",
                field="vip")
    k8s = spec.settings.kubernetes
    for label, cidr in (("kubernetes.pod_subnet", k8s.pod_subnet),
                        ("kubernetes.service_subnet", k8s.service_subnet)):
        if lvs and cidr.overlaps(spec.network):
            out.add("error", "cidr-overlap",
                    f"{cidr} overlaps the host network {spec.network}", field=label)
    if k8s.pod_subnet.overlaps(k8s.service_subnet):
        out.add("error", "cidr-overlap",
                f"pod subnet {k8s.pod_subnet} overlaps service subnet {k8s.service_subnet}",
                field="kubernetes.pod_subnet")


def _check_vrrp(spec: ClusterSpec, out: _Findings) -> None:
    vrrp = spec.settings.vrrp
    if not 1 <= vrrp.router_id <= 255:
        out.add("error", "vrrp-router-id", f"router id {vrrp.router_id} is outside 1-255",
                field="vrrp.router_id")
    if vrrp.version not in (2, 3):
        out.add("error", "vrrp-version", f"VRRP version {vrrp.version} is not 2 or 3",
                field="vrrp.version")
    if vrrp.advert_int <= 0:
        out.add("error", "vrrp-advert", "advert_int must be positive", field="vrrp.advert_int")
    elif vrrp.version == 2 and vrrp.advert_int != int(vrrp.advert_int):
        out.add("error", "vrrp-advert",
                f"advert_int {vrrp.advert_int}: fractional adverts need VRRP version 3",
                field="vrrp.advert_int")
    seen: dict[int, str] = {}
    for h in spec.role(C.ROLE_LVS):
        prio = h.data.vrrp_priority
        if prio is None:
            continue
        if not 1 <= prio <= 254:
            out.add("error", "vrrp-priority", f"priority {prio} is outside 1-254",
                    host=h.name, field="vrrp_priority")
        elif prio in seen:
            out.add("error", "vrrp-priority",
                    f"priority {prio} is also used by {seen[prio]}; priorities must be distinct",
                    host=h.name, field="vrrp_priority")
        seen.setdefault(prio, h.name)
    for h in spec.hosts:
        if h.data.vrrp_priority is not None and not h.has_role(C.ROLE_LVS):
            out.add("error", "vrrp-priority", "only LVS directors take a VRRP priority",
                    host=h.name, field="vrrp_priority")


def _check_ports(spec: ClusterSpec, out: _Findings) -> None:
    s = spec.settings
    ports = {
        "apiserver_port": s.apiserver_port,
        "apiserver_bind_port": s.apiserver_bind_port,
        "haproxy.stats_port": s.haproxy.stats_port,
        "etcd.client_port": s.etcd.client_port,
        "etcd.peer_port": s.etcd.peer_port,
        "registry.port": s.registry.port,
    }
    for name, port in ports.items():
        if not 1 <= port <= 65535:
            out.add("error", "port-range", f"port {port} is outside 1-65535", field=name)
    if s.haproxy.stats_port == s.apiserver_port:
        out.add("error", "port-clash", f"HAProxy stats port {s.haproxy.stats_port} is the "
                "apiserver port HAProxy serves on the VIP", field="haproxy.stats_port")
    if s.etcd.client_port == s.etcd.peer_port:
        out.add("error", "port-clash", "etcd client and peer ports are the same",
                field="etcd.peer_port")
    both = [h.name for h in spec.hosts if h.has_role(C.ROLE_HAPROXY)
            and h.has_role(C.ROLE_MASTERS)]
    if both and s.apiserver_port == s.apiserver_bind_port:
        out.add("error", "apiserver-port",
                f"HAProxy and kube-apiserver share host(s) {', '.join(both)} and both want port "
                f"{s.apiserver_port}: set apiserver_bind_port to another port",
                field="apiserver_bind_port")


def _check_sizes(spec: ClusterSpec, out: _Findings) -> None:
    for h in spec.hosts:
        for role in h.roles:
            if role not in RECOMMENDED_SIZE:
                continue
            cpu, mem = RECOMMENDED_SIZE[role]
            if h.data.cpu is not None and h.data.cpu < cpu:
                out.add("warning", "size", f"{h.data.cpu} CPU declared; {cpu} recommended for "
                        f"role '{role}'", host=h.name, field="cpu")
            if h.data.memory_gb is not None and h.data.memory_gb < mem:
                out.add("warning", "size", f"{h.data.memory_gb:g} GB declared; {mem:g} GB "
                        f"recommended for role '{role}'", host=h.name, field="memory_gb")


def _check_switches(spec: ClusterSpec, out: _Findings) -> None:
    """Switch platform, addresses and ASNs: bad ones would reach a switch's config."""
    net = spec.network if spec.role(C.ROLE_LVS) else None
    lvs = {x.address for x in spec.role(C.ROLE_LVS)}
    for h in spec.role(C.ROLE_SWITCHES):
        if h.platform not in C.SWITCH_PLATFORMS:
            out.add("error", "switch-platform",
                    f"platform {h.platform!r} is not one of {', '.join(C.SWITCH_PLATFORMS)}",
                    host=h.name, field="platform", where=("hosts", h.name))
        if net is not None and h.address not in net:
            out.add("error", "switch-subnet",
                    f"switch {h.address} is not in {net}, the LVS directors' subnet: the "
                    "directors peer with it directly", host=h.name, field="hostname",
                    where=("hosts", h.name, "hostname"))
        for n in h.data.bgp_neighbors or []:
            if net is not None and n not in net:
                out.add("error", "bgp-neighbor-subnet",
                        f"BGP neighbour {n} is outside the host subnet {net}",
                        host=h.name, field="bgp_neighbors")
            elif n not in lvs:
                out.add("error", "bgp-neighbor", f"BGP neighbour {n} is not an LVS director",
                        host=h.name, field="bgp_neighbors")
    for name in ("lvs_asn", "switch_asn"):
        asn = getattr(spec.settings.bgp, name)
        if not C.BGP_ASN_MIN <= asn <= C.BGP_ASN_MAX:
            out.add("error", "bgp-asn-range",
                    f"ASN {asn} is outside {C.BGP_ASN_MIN}..{C.BGP_ASN_MAX}", field=f"bgp.{name}")
    if spec.settings.bgp.lvs_asn == spec.settings.bgp.switch_asn:
        out.add("warning", "bgp-asn", "LVS and switch ASNs are equal: iBGP, the switches will "
                "not re-advertise the VIP to each other", field="bgp.lvs_asn")
    _check_bgp_timers(spec.settings.bgp, out)


def _check_bgp_timers(bgp: BGPSettings, out: _Findings) -> None:
    """Hold time 0 (no keepalives, sessions never time out) or >= 3 s (RFC 4271 4.2; FRR and
    IOS refuse 1-2), and at least 3 keepalives per hold time, as the CLIs require."""
    hold, keepalive = bgp.hold_s, bgp.keepalive_s
    if 0 < hold < C.BGP_MIN_HOLD_S:
        out.add("error", "bgp-timers", f"hold time {hold} s: must be 0 (never expire) or at "
                f"least {C.BGP_MIN_HOLD_S} s (RFC 4271)", field="bgp.hold_s")
    elif keepalive * C.BGP_KEEPALIVES_PER_HOLD > hold:
        out.add("error", "bgp-timers", f"hold time {hold} s is less than "
                f"{C.BGP_KEEPALIVES_PER_HOLD} x keepalive ({C.BGP_KEEPALIVES_PER_HOLD} x "
                f"{keepalive} s): raise bgp.hold_s or lower bgp.keepalive_s", field="bgp.hold_s")
    elif keepalive == 0 and hold > 0:
        out.add("error", "bgp-timers", f"keepalive 0 with a hold time of {hold} s: the peer "
                "would drop every session after the hold time; keepalive must be 1.."
                f"{hold // C.BGP_KEEPALIVES_PER_HOLD}", field="bgp.keepalive_s")


def _check_version(spec: ClusterSpec, out: _Findings) -> None:
    version = spec.settings.kubernetes.version
    if not KUBERNETES_VERSION.match(version):
        out.add("error", "kubernetes-version",
                f"version {version!r} is not of the form 1.MINOR.PATCH",
                field="kubernetes.version")


def _check_machines(spec: ClusterSpec, out: _Findings) -> None:
    for h in spec.hosts:
        if h.physical_host is None:
            out.add("warning", "physical-host", "no physical_host label: counted as a machine "
                    "of its own", host=h.name, field="physical_host", where=("hosts", h.name))
    for loss in spec.machine_losses():
        if not loss.api_survives:
            out.add("warning", "machine-loss",
                    f"losing physical machine '{loss.machine}' ({', '.join(loss.hosts)}): "
                    f"{loss.verdict}", where=("hosts",))
    if len(spec.machines) < 3:
        out.add("warning", "machine-count", f"{len(spec.machines)} physical machine(s): at "
                "least 3 are needed for any single loss to keep etcd quorum", where=("hosts",))


RULES = (
    _check_counts,
    _check_addresses,
    _check_vrrp,
    _check_ports,
    _check_sizes,
    _check_switches,
    _check_version,
    _check_machines,
)


def analyse_inventory(inv: Inventory, raw: RawInventory | None = None) -> Analysis:
    """Every finding for a Nornir inventory; the spec only when every host builds.

    With `raw` (our own directory, read strictly) findings carry file:line and every host must
    belong to a role; without it (anyone's inventory plugin) see `_build_hosts`.
    """
    strict = raw is not None
    out = _Findings(raw)
    settings = _build_settings(inv, out, strict=strict)
    hosts, complete = _build_hosts(inv, out, strict=strict)
    if not hosts and complete:
        out.add("error", "min-count", "the inventory has no hosts", where=("hosts",))
    by_folded: dict[str, list[str]] = {}
    for h in hosts:
        by_folded.setdefault(h.name.lower(), []).append(h.name)
    for names in by_folded.values():
        for name in names[1:]:
            out.add("error", "unique-name", f"host name {name!r} is also host {names[0]!r} "
                    "(names are case-insensitive: DNS, certificates)", host=name,
                    where=("hosts", name))
    spec = None
    # Cross-host rules on a partial host list would report false losses and counts: first the
    # hosts must build.
    if settings is not None and hosts and complete:
        spec = ClusterSpec(settings, tuple(hosts), raw.directory if raw else None)
        for rule in RULES:
            rule(spec, out)
    return Analysis(spec, list(out), raw)


def analyse(directory: Path | str) -> Analysis:
    """Read and check an inventory dir. Malformed files raise InventoryError (no spec at all)."""
    raw = read_raw_inventory(directory)
    return analyse_inventory(inventory_from_raw(raw), raw)


def spec_from_nornir(nr: Nornir) -> ClusterSpec:
    """The validated spec of anyone's Nornir (SimpleInventory, NetBox, any inventory plugin),
    from Nornir's own resolved host data: role = group name (nested groups count), cluster
    settings = `defaults.data`. Raises ValidationFailed naming host and field."""
    analysis = analyse_inventory(nr.inventory)
    if analysis.errors or analysis.spec is None:
        raise ValidationFailed(analysis.errors)
    return analysis.spec


def load_cluster_spec(directory: Path | str) -> ClusterSpec:
    """The validated spec, or ValidationFailed listing every error (warnings are allowed)."""
    analysis = analyse(directory)
    if analysis.errors or analysis.spec is None:
        raise ValidationFailed(analysis.errors)
    return analysis.spec


def hosts_in_roles(spec: ClusterSpec, roles: Iterable[str]) -> list[HostSpec]:
    """Hosts having any of `roles`, in inventory order."""
    wanted = set(roles)
    return [h for h in spec.hosts if wanted.intersection(h.roles)]


__all__ = [
    "DEFAULTS_FILE",
    "HOSTS_FILE",
    "MIN_COUNTS",
    "Analysis",
    "ClusterSpec",
    "EtcdMembershipPlan",
    "EtcdStep",
    "Finding",
    "HostSpec",
    "MachineLoss",
    "analyse",
    "etcd_membership_plan",
    "etcd_quorum",
    "etcd_tolerance",
    "load_cluster_spec",
    "spec_from_nornir",
]
