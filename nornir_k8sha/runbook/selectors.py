"""Host selectors of runbook steps, resolved at run time.

A selector is one term or several joined by commas (their union, inventory order):

    name:etcd1 | etcd1          one host by name
    role:etcd                   every host of a role
    machine:pm1                 every host on a physical machine
    vip-holder                  the director holding the VIP now (keepalived.check)
    etcd-leader                 the etcd leader now (etcd.check)
    lease-holder:kube-scheduler the master holding that lease (apiserver.check_leases)
    backend-of:haproxy1         the masters that HAProxy reports UP
    @fault                      the hosts an earlier `fault: true` step of the case hit

A step's `pick` narrows the result: all (default), one (the first), any (a random one),
majority (a quorum of them), or a number (the first N).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

from nornir_k8sha import constants as C
from nornir_k8sha.checks.sweep import CheckContext
from nornir_k8sha.tasks import apiserver, etcd, haproxy, keepalived
from nornir_k8sha.topology import ClusterSpec, etcd_quorum

#: Terms whose answer depends on the cluster's state (they run a check to resolve).
STATEFUL = ("vip-holder", "etcd-leader", "lease-holder", "backend-of")
FAULT = "@fault"
_WITH_ARG = ("name", "role", "machine", "lease-holder", "backend-of")
_NO_ARG = ("vip-holder", "etcd-leader")


@dataclass(frozen=True)
class Term:
    kind: str  # name role machine vip-holder etcd-leader lease-holder backend-of fault
    arg: str = ""

    @property
    def stateful(self) -> bool:
        return self.kind in STATEFUL

    def __str__(self) -> str:
        if self.kind == "fault":
            return FAULT
        return f"{self.kind}:{self.arg}" if self.arg else self.kind


class SelectorError(ValueError):
    """A selector that is malformed or matches nothing."""


def parse(selector: str) -> list[Term]:
    """The terms of a selector; SelectorError on bad syntax (no inventory needed)."""
    terms = []
    for raw in (t.strip() for t in str(selector).split(",")):
        if not raw:
            raise SelectorError(f"empty term in selector {selector!r}")
        if raw == FAULT:
            terms.append(Term("fault"))
            continue
        kind, sep, arg = raw.partition(":")
        if kind in _NO_ARG and not sep:
            terms.append(Term(kind))
        elif kind in _WITH_ARG and sep and arg:
            terms.append(Term(kind, arg))
        elif kind in _WITH_ARG or kind in _NO_ARG:
            raise SelectorError(f"{raw!r}: write " + (f"{kind}:<name>" if kind in _WITH_ARG
                                                      else kind))
        elif sep:
            raise SelectorError(f"{raw!r}: unknown selector kind {kind!r} (known: "
                                f"{', '.join(_WITH_ARG + _NO_ARG)}, {FAULT})")
        else:
            terms.append(Term("name", raw))  # a bare host name
    return terms


def check_static(terms: list[Term], spec: ClusterSpec) -> str | None:
    """What is wrong with the terms against this inventory, or None. Static terms must match
    at least one host; stateful ones must name a real lease / HAProxy host."""
    names = {h.name for h in spec.hosts}
    for t in terms:
        if t.kind == "name" and t.arg not in names:
            return f"no host named {t.arg!r}"
        if t.kind == "role" and not spec.role(t.arg):
            return f"no host has role {t.arg!r} (roles: {', '.join(C.ROLES)})"
        if t.kind == "machine" and t.arg not in spec.machines:
            return (f"no physical machine {t.arg!r} (machines: "
                    f"{', '.join(sorted(spec.machines))})")
        if t.kind == "lease-holder" and t.arg not in apiserver.LEASES:
            return f"unknown lease {t.arg!r} (known: {', '.join(apiserver.LEASES)})"
        if t.kind == "backend-of" and (t.arg not in names or
                                        not spec.host(t.arg).has_role(C.ROLE_HAPROXY)):
            return f"backend-of:{t.arg}: {t.arg!r} is not an HAProxy host"
        if t.kind == "vip-holder" and not spec.role(C.ROLE_LVS):
            return "vip-holder: the inventory has no LVS director"
        if t.kind == "etcd-leader" and not spec.role(C.ROLE_ETCD):
            return "etcd-leader: the inventory has no etcd member"
    return None


def static_hosts(terms: list[Term], spec: ClusterSpec) -> list[str] | None:
    """The hosts of a selector made of static terms only, else None (known at run time)."""
    if any(t.stateful or t.kind == "fault" for t in terms):
        return None
    return _ordered(spec, {n for t in terms for n in _static(t, spec)})


def _static(t: Term, spec: ClusterSpec) -> list[str]:
    if t.kind == "name":
        return [t.arg]
    if t.kind == "role":
        return [h.name for h in spec.role(t.arg)]
    return [h.name for h in spec.machines.get(t.arg, [])]


def _ordered(spec: ClusterSpec, names: set[str]) -> list[str]:
    return [h.name for h in spec.hosts if h.name in names]


@dataclass
class Resolver:
    """Resolves selectors against the live cluster through the task library's checks."""

    cx: CheckContext
    fault_hosts: list[str] = field(default_factory=list)
    #: Called with (term, hosts) whenever a stateful term is resolved (e.g. VIP holder marks).
    observe: Callable[[str, list[str]], None] | None = None
    rng: random.Random = field(default_factory=random.Random)

    def resolve(self, selector: str, pick: int | str = "all") -> list[str]:
        """The hosts the selector means now, narrowed by `pick`; SelectorError when none."""
        terms = parse(selector)
        spec = self.cx.spec
        found: set[str] = set()
        for t in terms:
            hosts = self._term(t)
            if t.stateful and self.observe:
                self.observe(str(t), hosts)
            found.update(hosts)
        hosts = _ordered(spec, found)
        if not hosts:
            raise SelectorError(f"selector {selector!r} matches no host now")
        return narrow(hosts, pick, self.rng)

    def _term(self, t: Term) -> list[str]:
        spec, cx = self.cx.spec, self.cx
        if t.kind == "fault":
            return list(self.fault_hosts)
        if t.kind == "vip-holder":
            out = cx.run(keepalived.check, spec.role(C.ROLE_LVS))
            return [n for n, r in out.items() if r.values.get("holds_vip")]
        if t.kind == "etcd-leader":
            out = cx.run(etcd.check, spec.role(C.ROLE_ETCD), state_dir=cx.state_dir,
                         transport=cx.transport)
            return [n for n, r in out.items() if r.values.get("is_leader")]
        if t.kind == "lease-holder":
            leases = apiserver.check_leases(spec, cx.state_dir, transport=cx.transport)
            holder = next((r.values.get("holder") for r in leases if r.target == t.arg), None)
            return holder_hosts(spec, holder)
        if t.kind == "backend-of":
            out = cx.run(haproxy.check, [spec.host(t.arg)], transport=cx.transport)
            up = set(out[t.arg].values.get("up", []))
            return [h.name for h in spec.role(C.ROLE_MASTERS) if h.name in up]
        return _static(t, spec)


def holder_hosts(spec: ClusterSpec, holder: str | None) -> list[str]:
    """The master behind a lease holder identity (`<hostname>_<uuid>`)."""
    if not holder:
        return []
    node = holder.split("_", 1)[0]
    return [h.name for h in spec.role(C.ROLE_MASTERS) if h.name == node]


def narrow(hosts: list[str], pick: int | str, rng: random.Random | None = None) -> list[str]:
    """Apply a step's `pick` to resolved hosts (inventory order)."""
    if pick == "all":
        return hosts
    if pick == "one":
        return hosts[:1]
    if pick == "any":
        return [(rng or random.Random()).choice(hosts)]
    if pick == "majority":
        return hosts[:etcd_quorum(len(hosts))]
    return hosts[:int(pick)]
