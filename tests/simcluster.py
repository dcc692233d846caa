"""A small simulated HA cluster for runbook tests: the fake fleet's commands and the HTTP
checks' answers come from one model (who runs what, who holds the VIP, the etcd leader, the
lease holders), and the faults of `tasks/faults.py` change that model.

Not a lab: it knows just enough of VRRP, IPVS, etcd's Raft and leader leases for the checks
to see failovers happen (instantly), and it refuses commands on a host that is powered off.
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass, field
from typing import Any

import httpx

from nornir_k8sha import constants as C
from nornir_k8sha.exceptions import ConnectionFailed
from nornir_k8sha.tasks import apiserver
from nornir_k8sha.testing import FakeFleet, FakeHost
from nornir_k8sha.topology import ClusterSpec

STATIC_PODS = ("kube-apiserver", "kube-controller-manager", "kube-scheduler")


@dataclass
class SimCluster:
    spec: ClusterSpec
    stopped: set[tuple[str, str]] = field(default_factory=set)  # (host, unit or pod)
    frozen: set[tuple[str, str]] = field(default_factory=set)
    links_down: set[str] = field(default_factory=set)
    partitioned: set[str] = field(default_factory=set)
    powered_off: set[str] = field(default_factory=set)
    etcd_leader: str | None = None
    lease_holders: dict[str, str] = field(default_factory=dict)
    weights: dict[str, int] = field(default_factory=dict)  # IPVS real server -> weight (1)
    log: list[str] = field(default_factory=list)

    # --- the model ------------------------------------------------------------------------
    def up(self, host: str, unit: str) -> bool:
        return (host not in self.powered_off and (host, unit) not in self.stopped
                and (host, unit) not in self.frozen)

    def vip_holder(self) -> str | None:
        prio = self.spec.vrrp_priorities
        alive = [h.name for h in self.spec.role(C.ROLE_LVS)
                 if self.up(h.name, "keepalived") and h.name not in self.links_down]
        return max(alive, key=lambda n: prio[n], default=None)

    def etcd_group(self) -> list[str]:
        return [h.name for h in self.spec.role(C.ROLE_ETCD)
                if self.up(h.name, "etcd") and h.name not in self.partitioned]

    def leader(self) -> str | None:
        group = self.etcd_group()
        if len(group) * 2 <= self.spec.count(C.ROLE_ETCD):
            self.etcd_leader = None
        elif self.etcd_leader not in group:
            self.etcd_leader = group[0]
        return self.etcd_leader

    def api_serves(self, master: str | None = None) -> bool:
        if self.leader() is None:
            return False
        if master is not None:
            return self.up(master, "kube-apiserver")
        return (self.vip_holder() is not None
                and any(self.up(h.name, "haproxy") for h in self.spec.role(C.ROLE_HAPROXY))
                and any(self.up(h.name, "kube-apiserver")
                        for h in self.spec.role(C.ROLE_MASTERS)))

    def lease(self, name: str) -> str | None:
        pod = name
        holder = self.lease_holders.get(name)
        if holder is None or not self.up(holder, pod):
            holder = next((h.name for h in self.spec.role(C.ROLE_MASTERS)
                           if self.up(h.name, pod)), None)
            if holder is not None:
                self.lease_holders[name] = holder
        return holder

    # --- SSH ------------------------------------------------------------------------------
    def fleet(self) -> FakeFleet:
        return FakeFleet(handler=self.command)

    def command(self, host: FakeHost, command: str, stdin: bytes | None) -> Any:
        name = host.name
        if name in self.powered_off:
            raise ConnectionFailed(name, "no route to host (powered off)")
        self.log.append(f"{name}: {command}")
        words = shlex.split(command) if not command.startswith("if ") else command.split()
        if re.fullmatch(r"systemctl (stop|start) \S+", command):
            unit = words[2]
            (self.stopped.add if words[1] == "stop" else self.stopped.discard)((name, unit))
            return ""
        if command.startswith("systemctl kill --signal="):
            sig, unit = words[2].split("=", 1)[1], words[-1]
            if sig == "KILL":
                self.stopped.add((name, unit))
            elif sig == "STOP":
                self.frozen.add((name, unit))
            elif sig == "CONT":
                self.frozen.discard((name, unit))
            return ""
        m = re.fullmatch(r"if systemctl cat (\S+)\.service .* kill -(STOP|CONT) \$pids; fi",
                         command)
        if m:  # faults.freeze_static_pod / thaw_static_pod
            (self.frozen.add if m.group(2) == "STOP" else self.frozen.discard)(
                (name, m.group(1)))
            return ""
        m = re.fullmatch(r"mv /etc/kubernetes/manifests/(\S+)\.yaml \S+", command)
        if m:
            self.stopped.add((name, m.group(1)))
            return ""
        m = re.search(r"then mv \S+ /etc/kubernetes/manifests/(\S+)\.yaml", command)
        if m:
            self.stopped.discard((name, m.group(1)))
            return ""
        m = re.fullmatch(r"ip link set dev \S+ (up|down)", command)
        if m:
            (self.links_down.add if m.group(1) == "down" else self.links_down.discard)(name)
            return ""
        if command == "nft -f -":
            self.partitioned.add(name)
            return ""
        if command.startswith(f"if nft list table inet {C.FAULT_NFT_TABLE}"):
            self.partitioned.discard(name)
            return ""
        if "ipvsadm -Ln" in command and command.startswith("ip -o -4 addr"):
            return self._director(name)
        if command.startswith("ipvsadm -Ln"):
            return self._director(name).split("\n", 1)[1] if self.vip_holder() == name else ""
        m = re.fullmatch(r"ipvsadm -e -t \S+ -r (\S+):\d+ -g -w (\d+)", command)
        if m:
            self.weights[m.group(1)] = int(m.group(2))
            return ""
        if "bgp ipv4 unicast summary json" in command:
            return self._bgp(name)
        return ""  # timers, `true`, anything else: fine

    def _director(self, name: str) -> str:
        vip, port = self.spec.vip, self.spec.settings.apiserver_port
        if self.vip_holder() != name:
            return "1: lo    inet 127.0.0.1/8 scope host lo\n"
        rows = "".join(f"  -> {h.address}:{port} Route {self.weights.get(str(h.address), 1)} 0 0\n"
                       for h in self.spec.role(C.ROLE_HAPROXY) if self.up(h.name, "haproxy"))
        return (f"2: eth0    inet {vip}/32 scope global eth0\nTCP  {vip}:{port} wlc\n"
                "  -> RemoteAddress:Port Forward Weight ActiveConn InActConn\n" + rows)

    def _bgp(self, name: str) -> str:
        me = self.spec.host(name)
        holder = self.vip_holder() == name
        peers = {str(sw.address): {"state": "Established" if sw.name not in self.powered_off
                                   else "Active", "pfxSnt": int(holder), "pfxRcd": 0}
                 for sw in self.spec.director_peers(me)}
        return json.dumps({"ipv4Unicast": {"peers": peers}})

    # --- HTTP -----------------------------------------------------------------------------
    def transport(self) -> httpx.MockTransport:
        by_address = {str(h.address): h.name for h in self.spec.hosts}
        vip = str(self.spec.vip)
        etcd_ids = {h.name: str(101 + i) for i, h in enumerate(self.spec.role(C.ROLE_ETCD))}

        def handler(request: httpx.Request) -> httpx.Response:
            host, path = request.url.host, request.url.path
            name = by_address.get(host)

            def refused() -> httpx.Response:
                raise httpx.ConnectError("connection refused", request=request)

            if host == vip:
                if not self.api_serves():
                    return refused()
                for lease in apiserver.LEASES:
                    if path == apiserver.LEASE_PATH.format(name=lease):
                        holder = self.lease(lease)
                        return httpx.Response(200, json={"spec": {
                            "holderIdentity": f"{holder}_5e1f" if holder else None}})
                return self._api_path(path)
            if name is None:
                return refused()
            spec_host = self.spec.host(name)
            if spec_host.has_role(C.ROLE_ETCD):
                if not self.up(name, "etcd"):
                    return refused()
                leader = self.leader() if name not in self.partitioned else None
                if path == "/health":
                    return httpx.Response(200, json={"health": str(leader is not None).lower()})
                if path == "/v3/maintenance/status":
                    return httpx.Response(200, json={"header": {"member_id": etcd_ids[name]},
                                                     "leader": etcd_ids.get(leader or "", "0")})
                if path == "/v3/cluster/member/list":
                    return httpx.Response(200, json={"members": [{"name": n}
                                                                 for n in etcd_ids]})
            if spec_host.has_role(C.ROLE_HAPROXY) and path == "/stats;csv":
                if not self.up(name, "haproxy"):
                    return refused()
                rows = "".join(
                    f"apiserver,{m.name},0,0,0,0,,0,0,0,,0,,0,0,0,0,"
                    f"{'UP' if self.up(m.name, 'kube-apiserver') else 'DOWN'},1\n"
                    for m in self.spec.role(C.ROLE_MASTERS))
                return httpx.Response(200, text="# pxname,svname,qcur,qmax,scur,smax,slim,"
                                      "stot,bin,bout,dreq,dresp,ereq,econ,eresp,wretr,"
                                      "wredis,status,weight\n" + rows)
            if spec_host.has_role(C.ROLE_MASTERS):
                if not self.api_serves(name):
                    return refused()
                return self._api_path(path)
            return refused()

        return httpx.MockTransport(handler)

    @staticmethod
    def _api_path(path: str) -> httpx.Response:
        if path == "/version":
            return httpx.Response(200, json={"gitVersion": "v1.31.4"})
        return httpx.Response(200, text="ok")

    # --- lab power, through the seam --------------------------------------------------------
    def power_off(self, spec: ClusterSpec, hosts: list[str]) -> str:
        self.powered_off.update(hosts)
        return f"power cut: {', '.join(hosts)}"

    def power_on(self, spec: ClusterSpec, hosts: list[str]) -> str:
        self.powered_off.difference_update(hosts)
        return f"powered on: {', '.join(hosts)}"

    def healthy(self) -> bool:
        """Everything restored: what every case must leave behind."""
        return not (self.stopped or self.frozen or self.links_down or self.partitioned
                    or self.powered_off or any(w != 1 for w in self.weights.values()))
