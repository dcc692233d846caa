"""The schema of inventory data: cluster-wide settings (`defaults.yaml` data) and per-host data.

Every field has a documented default (docs/inventory.md is tested to mention each one). Unknown
fields are errors (`extra="forbid"`), so a typo never silently falls back to a default.
"""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from nornir_k8sha import constants as C


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class VRRPSettings(_Strict):
    """keepalived VRRP on the LVS directors."""

    version: int = Field(3, description="VRRP version; 3 allows sub-second adverts")
    advert_int: float = Field(0.1, description="seconds between adverts (fractions need v3)")
    router_id: int = Field(51, description="virtual_router_id shared by both directors (1-255)")
    interface: str = Field("eth0", description="interface carrying the VIP on the directors")
    auth_pass: str | None = Field(None, description="optional VRRP password (v2 only)")


class HAProxySettings(_Strict):
    """HAProxy health checks of the apiservers; tight timings bound failover (DESIGN.md 7)."""

    check_inter_ms: int = Field(500, description="ms between health checks of a backend")
    check_fall: int = Field(2, description="failed checks before a backend is marked down")
    check_rise: int = Field(2, description="good checks before a backend is marked up again")
    connect_timeout_ms: int = Field(2000, description="connect timeout to a backend")
    client_timeout_s: int = Field(300, description="idle client timeout (long watches)")
    server_timeout_s: int = Field(300, description="idle server timeout (long watches)")
    shutdown_sessions_on_down: bool = Field(
        True, description="cut the sessions of a backend marked DOWN (on-marked-down "
        "shutdown-sessions): a client hung on a frozen apiserver reconnects instead of waiting "
        "for the server timeout")
    stats_port: int = Field(C.HAPROXY_STATS_PORT, description="stats HTTP port on the host IP")
    maxconn: int = Field(
        20000, description="global maxconn; HAProxy needs ~2 open files per connection"
    )


class LVSSettings(_Strict):
    """IPVS virtual server on the VIP, DR mode to the HAProxy nodes."""

    scheduler: str = Field("wlc", description="IPVS scheduler")
    delay_loop: int = Field(1, description="seconds between keepalived health checks")
    connect_timeout: int = Field(1, description="TCP_CHECK connect timeout, seconds")
    check_retry: int = Field(
        1, ge=0, description="TCP_CHECK retries before a real server is removed"
    )
    delay_before_retry: int = Field(1, ge=0, description="seconds between TCP_CHECK retries")
    persistence_timeout: int = Field(0, description="IPVS persistence; 0 disables")


class BGPSettings(_Strict):
    """BGP between the LVS directors and the top-of-rack switches."""

    lvs_asn: int = Field(65010, description="ASN of the LVS directors")
    switch_asn: int = Field(65000, description="ASN of the ToR switches")
    announce_vip: bool = Field(True, description="LVS directors announce the VIP /32")
    # Session timers, set per neighbour on both ends (directors' FRR and every switch). The
    # defaults are the vendors' own (IOS, NX-OS, EOS and FRR's `traditional` profile): a ToR
    # keeps the timers its network team expects. FRR's `datacenter` profile (3/9 s, connect
    # retry 10 s) is the faster choice when clients reach the VIP through the switches: after a
    # director's power cut the switch keeps its path via the dead director until the hold time
    # runs out (docs/switches.md). Validated by topology.py (rule bgp-timers).
    keepalive_s: int = Field(
        C.BGP_DEFAULT_KEEPALIVE_S, ge=0, le=C.BGP_TIMER_MAX,
        description="seconds between BGP keepalives; at most hold_s / 3 (0 only with hold_s 0)")
    hold_s: int = Field(
        C.BGP_DEFAULT_HOLD_S, ge=0, le=C.BGP_TIMER_MAX,
        description="BGP hold time: a silent peer is dropped after it; 0 (never) or >= 3 "
        "(RFC 4271) and >= 3 x keepalive_s")
    connect_retry_s: int = Field(
        C.BGP_DEFAULT_CONNECT_RETRY_S, ge=1, le=C.BGP_TIMER_MAX,
        description="seconds between attempts to open a session that is down (FRR only; "
        "RFC 4271 suggests 120)")
    advertisement_interval_s: int = Field(
        0, ge=0, le=C.BGP_ADVERTISEMENT_INTERVAL_MAX,
        description="minimum seconds between updates to a neighbour (MRAI); 0 so that a "
        "failover's new VIP announcement is never held back (IOS would wait 30 s on eBGP)")


class EtcdSettings(_Strict):
    """The external etcd cluster."""

    client_port: int = Field(C.ETCD_CLIENT_PORT, description="client URL port")
    peer_port: int = Field(C.ETCD_PEER_PORT, description="peer URL port")
    data_dir: str = Field(C.ETCD_DATA_DIR, description="data directory on each member")
    heartbeat_interval_ms: int = Field(100, description="raft heartbeat interval")
    election_timeout_ms: int = Field(1000, description="raft election timeout")
    snapshot_count: int = Field(10000, description="commits before a snapshot")
    quota_backend_bytes: int = Field(2 * 1024**3, description="backend size quota")
    cluster_token: str = Field("k8sha-etcd", description="initial-cluster-token")
    backup_keep: int = Field(5, ge=1, description="snapshots `etcd backup` keeps in the state dir")
    backup_interval: str = Field(
        "30min", pattern=r"^[0-9]+(s|min|h|d)$",
        description="systemd OnUnitActiveSec of the members' snapshot timer (e.g. 30min, 12h)")
    backup_keep_on_host: int = Field(
        5, ge=1, description="snapshots the timer keeps on each member")


class KubernetesSettings(_Strict):
    """kubeadm and the cluster it builds."""

    version: str = Field("1.31.4", description="Kubernetes version (kubeadm, kubelet, kubectl)")
    pod_subnet: IPv4Network = Field(IPv4Network("10.244.0.0/16"), description="pod CIDR")
    service_subnet: IPv4Network = Field(IPv4Network("10.96.0.0/12"), description="service CIDR")
    dns_domain: str = Field("cluster.local", description="cluster DNS domain")
    cgroup_driver: str = Field("systemd", description="kubelet and containerd cgroup driver")
    package_repo: str = Field(
        "https://pkgs.k8s.io/core:/stable:/v{minor}/deb/",
        description="apt repository for kubelet/kubeadm/kubectl; {minor} is e.g. 1.31",
    )


class RegistrySettings(_Strict):
    """The Harbor registry every node trusts."""

    engine: Literal["harbor", "distribution"] = Field(
        "harbor", description="harbor: Harbor's offline installer, which must be unpacked in "
        "/opt/harbor on the harbor host; distribution: Debian's docker-registry (the lab)")
    name: str = Field("harbor.k8sha.lab", description="DNS name of the registry")
    port: int = Field(C.REGISTRY_PORT, description="HTTPS port")
    harbor_version: str = Field("2.11.1", description="Harbor offline installer version")


class SSHSettings(_Strict):
    """How hard this machine works the hosts' sshd (the connection budget)."""

    max_connections: int = Field(
        C.DEFAULT_MAX_SSH_CONNECTIONS, ge=C.MIN_MAX_SSH_CONNECTIONS,
        description="SSH connections opened or worked on at once (also Nornir's workers); "
        "handshakes to one address never exceed sshd's MaxStartups start (10)")


class ClusterSettings(_Strict):
    """Cluster-wide settings: the `data` of `defaults.yaml`."""

    cluster_name: str = Field("k8sha", description="name of the cluster and its state dir")
    vip: IPv4Address = Field(..., description="virtual IP held by keepalived (required)")
    prefix_length: int = Field(24, description="prefix length of the host network")
    apiserver_port: int = Field(C.APISERVER_PORT, description="port HAProxy serves on the VIP")
    apiserver_bind_port: int = Field(
        C.APISERVER_PORT, description="port kube-apiserver listens on, on each master"
    )
    ntp_max_skew_s: float = Field(1.0, description="largest clock skew preflight accepts")
    vrrp: VRRPSettings = VRRPSettings()
    haproxy: HAProxySettings = HAProxySettings()
    lvs: LVSSettings = LVSSettings()
    bgp: BGPSettings = BGPSettings()
    etcd: EtcdSettings = EtcdSettings()
    kubernetes: KubernetesSettings = KubernetesSettings()
    registry: RegistrySettings = RegistrySettings()
    ssh: SSHSettings = SSHSettings()


class HostData(_Strict):
    """Per-host `data` in `hosts.yaml` (and per-group data in `groups.yaml`)."""

    physical_host: str | None = Field(None, description="physical machine this host runs on")
    cpu: int | None = Field(None, description="declared CPU cores (checked against the table)")
    memory_gb: float | None = Field(None, description="declared memory in GB")
    vrrp_priority: int | None = Field(None, description="LVS only: VRRP priority (1-254)")
    bgp_neighbors: list[IPv4Address] | None = Field(
        None, description="switches only: explicit LVS neighbours (default: all LVS hosts)"
    )
    interface: str | None = Field(None, description="main interface (default: vrrp.interface)")

