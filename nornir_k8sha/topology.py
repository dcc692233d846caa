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

from pydantic import ValidationError

from nornir_k8sha import constants as C
from nornir_k8sha.exceptions import ValidationFailed
from nornir_k8sha.inventory import DEFAULTS_FILE, HOSTS_FILE, RawInventory, read_raw_inventory
from nornir_k8sha.settings import ClusterSettings, HostData

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
#: Switch platforms we can configure (netmiko device types); FRR answers as cisco_ios.
SWITCH_PLATFORMS = ("cisco_ios", "cisco_nxos", "arista_eos", "juniper_junos", "frr")
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
    def state_dir(self) -> Path:
        return C.STATE_ROOT / self.name

    def host(self, name: str) -> HostSpec:
        return self._by_name[name]

    def role(self, role: str) -> list[HostSpec]:
        """Hosts of a role in inventory order (a new list: callers may change it)."""
        return list(self._by_role.get(role, ()))

    def count(self, role: str) -> int:
        return len(self._by_role.get(role, ()))

    @property
    def first_master(self) -> HostSpec:
        return self.role(C.ROLE_MASTERS)[0]

    @cached_property
    def vrrp_priorities(self) -> dict[str, int]:
        """VRRP priority per LVS director: declared, else distinct defaults in inventory order."""
        taken = {h.data.vrrp_priority for h in self.role(C.ROLE_LVS) if h.data.vrrp_priority}
        free = iter(p for p in DEFAULT_VRRP_PRIORITIES if p not in taken)
        return {h.name: h.data.vrrp_priority or next(free) for h in self.role(C.ROLE_LVS)}

    def etcd_initial_cluster(self) -> str:
        port = self.settings.etcd.peer_port
        return ",".join(f"{h.name}=https://{h.address}:{port}" for h in self.role(C.ROLE_ETCD))

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
    raw: RawInventory

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "error"]

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "warning"]


# --- building and checking ---------------------------------------------------------------------


class _Findings(list[Finding]):
    def __init__(self, raw: RawInventory) -> None:
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
        finding = Finding(severity, rule, message, self.raw.where(*where), host, field)
        if finding not in self._seen:  # one group's bad field would otherwise repeat per member
            self._seen.add(finding)
            self.append(finding)


class _GroupIndex:
    """Nornir's view of groups: a host inherits from its groups and, recursively, their parents.

    Order as Nornir's `Host.extended_groups()`: each direct group followed by its ancestors,
    depth first, without repeats; the first group that has a key wins (after the host itself).
    """

    def __init__(self, raw: RawInventory) -> None:
        self.raw = raw
        self._cache: dict[str, tuple[str, ...]] = {}

    def _parents(self, group: str) -> list[str]:
        entry = self.raw.groups.get(group) or {}
        parents = entry.get("groups") or []
        return [str(g) for g in parents] if isinstance(parents, list) else []

    def ancestors(self, group: str, _stack: frozenset[str] = frozenset()) -> tuple[str, ...]:
        """`group` and every group it inherits from; cycles are cut (the reader rejects them)."""
        if group in self._cache:
            return self._cache[group]
        chain: list[str] = [group]
        for parent in self._parents(group):
            if parent in _stack or parent == group:
                continue
            for g in self.ancestors(parent, _stack | {group}):
                if g not in chain:
                    chain.append(g)
        self._cache[group] = tuple(chain)
        return self._cache[group]

    def extended(self, groups: Iterable[str]) -> tuple[str, ...]:
        chain: list[str] = []
        for group in groups:
            for g in self.ancestors(str(group)):
                if g not in chain:
                    chain.append(g)
        return tuple(chain)


def _merged_data(
    raw: RawInventory, name: str, entry: dict[str, Any], groups: tuple[str, ...]
) -> tuple[dict[str, Any], dict[str, tuple[str, ...]]]:
    """Host data over its (extended) groups' data, and where each key came from.

    Not defaults: cluster settings live there. Precedence is Nornir's: host, then the first
    group that has the key.
    """
    merged: dict[str, Any] = {}
    source: dict[str, tuple[str, ...]] = {}
    for group in reversed(groups):
        for key, value in ((raw.groups.get(group) or {}).get("data") or {}).items():
            merged[key] = value
            source[str(key)] = ("groups", group, "data")
    for key, value in (entry.get("data") or {}).items():
        merged[key] = value
        source[str(key)] = ("hosts", name, "data")
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


def _build_settings(raw: RawInventory, out: _Findings) -> ClusterSettings | None:
    try:
        settings = ClusterSettings.model_validate(raw.defaults.get("data") or {})
    except ValidationError as exc:
        _pydantic_findings(out, exc, host=None, prefix=("defaults", "data"))
        return None
    if not 1 <= settings.prefix_length <= 32:
        # Every address rule needs the host network: without one, no spec can be built.
        out.add("error", "prefix-length", f"prefix length {settings.prefix_length} is not "
                "between 1 and 32", field="prefix_length")
        return None
    return settings


def _platform(raw: RawInventory, entry: dict[str, Any], groups: tuple[str, ...]) -> str | None:
    """Nornir's platform: the host's, else the first group's that has one, else defaults'."""
    for candidate in (entry, *((raw.groups.get(g) or {}) for g in groups), raw.defaults):
        if candidate.get("platform"):
            return str(candidate["platform"])
    return None


def _build_hosts(raw: RawInventory, out: _Findings) -> tuple[list[HostSpec], bool]:
    """The hosts that could be built, and whether every host could."""
    hosts = []
    complete = True
    index = _GroupIndex(raw)
    for key, entry in raw.hosts.items():
        name = str(key)
        groups = index.extended(entry.get("groups") or ())
        merged, source = _merged_data(raw, name, entry, groups)
        try:
            data = HostData.model_validate(merged)
        except ValidationError as exc:
            _pydantic_findings(out, exc, host=name, prefix=("hosts", name, "data"),
                               source=source)
            complete = False
            continue
        hostname = entry.get("hostname")
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
        roles = tuple(g for g in groups if g in C.ROLES)
        if not roles:
            out.add("error", "role", f"belongs to no role group (one of {', '.join(C.ROLES)})",
                    host=name, field="groups", where=("hosts", name, "groups"))
        hosts.append(HostSpec(name, address, roles, data.physical_host, data,
                              _platform(raw, entry, groups)))
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
        if h.platform not in SWITCH_PLATFORMS:
            out.add("error", "switch-platform",
                    f"platform {h.platform!r} is not one of {', '.join(SWITCH_PLATFORMS)}",
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


def analyse_raw(raw: RawInventory) -> Analysis:
    """Every finding for an already-read inventory; the spec only when every host builds."""
    out = _Findings(raw)
    settings = _build_settings(raw, out)
    hosts, complete = _build_hosts(raw, out)
    if not raw.hosts:
        out.add("error", "min-count", "the inventory has no hosts", where=("hosts",))
    by_folded: dict[str, list[str]] = {}
    for key in raw.hosts:
        by_folded.setdefault(str(key).lower(), []).append(str(key))
    for names in by_folded.values():
        for name in names[1:]:
            out.add("error", "unique-name", f"host name {name!r} is also host {names[0]!r} "
                    "(names are case-insensitive: DNS, certificates)", host=name,
                    where=("hosts", name))
    spec = None
    # Cross-host rules on a partial host list would report false losses and counts: first the
    # hosts must build.
    if settings is not None and hosts and complete:
        spec = ClusterSpec(settings, tuple(hosts), raw.directory)
        for rule in RULES:
            rule(spec, out)
    return Analysis(spec, list(out), raw)


def analyse(directory: Path | str) -> Analysis:
    """Read and check an inventory dir. Malformed files raise InventoryError (no spec at all)."""
    return analyse_raw(read_raw_inventory(directory))


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
    "Finding",
    "HostSpec",
    "MachineLoss",
    "analyse",
    "etcd_quorum",
    "etcd_tolerance",
    "load_cluster_spec",
]
