"""Ports, paths and names used in more than one place. One constant, one place."""

from __future__ import annotations

from pathlib import Path

#: The roles of the topology; each is an inventory group.
ROLE_LVS = "lvs"
ROLE_HAPROXY = "haproxy"
ROLE_ETCD = "etcd"
ROLE_MASTERS = "masters"
ROLE_WORKERS = "workers"
ROLE_HARBOR = "harbor"
ROLE_SWITCHES = "switches"
ROLES: tuple[str, ...] = (
    ROLE_LVS,
    ROLE_HAPROXY,
    ROLE_ETCD,
    ROLE_MASTERS,
    ROLE_WORKERS,
    ROLE_HARBOR,
    ROLE_SWITCHES,
)
#: Roles whose hosts run Linux and are reached by our SSH plugin.
LINUX_ROLES: tuple[str, ...] = tuple(r for r in ROLES if r != ROLE_SWITCHES)
#: Roles that become Kubernetes nodes.
KUBERNETES_ROLES: tuple[str, ...] = (ROLE_MASTERS, ROLE_WORKERS)

# --- ports -------------------------------------------------------------------------------------
APISERVER_PORT = 6443
ETCD_CLIENT_PORT = 2379
ETCD_PEER_PORT = 2380
HAPROXY_STATS_PORT = 8404
REGISTRY_PORT = 443
BGP_PORT = 179
SSH_PORT = 22

# --- paths on the hosts ------------------------------------------------------------------------
KEEPALIVED_CONF = "/etc/keepalived/keepalived.conf"
HAPROXY_CFG = "/etc/haproxy/haproxy.cfg"
HAPROXY_STATS_SOCKET = "/run/haproxy/admin.sock"
REALSERVER_SYSCTL = "/etc/sysctl.d/60-k8sha-realserver.conf"
REALSERVER_NETWORK = "/etc/systemd/network/60-k8sha-vip-lo.network"
REALSERVER_UNIT = "/etc/systemd/system/k8sha-vip-lo.service"
ETCD_CONF = "/etc/etcd/etcd.conf.yml"
ETCD_UNIT = "/etc/systemd/system/etcd.service"
ETCD_PKI_DIR = "/etc/etcd/pki"
ETCD_DATA_DIR = "/var/lib/etcd"
KUBEADM_CONFIG = "/etc/kubernetes/kubeadm-config.yaml"
KUBERNETES_PKI_DIR = "/etc/kubernetes/pki"
KUBERNETES_ETCD_PKI_DIR = "/etc/kubernetes/pki/etcd-external"
ADMIN_KUBECONFIG = "/etc/kubernetes/admin.conf"
KUBELET_KUBECONFIG = "/etc/kubernetes/kubelet.conf"
CONTAINERD_CERTS_DIR = "/etc/containerd/certs.d"
CONTAINERD_CONFIG = "/etc/containerd/config.toml"
REGISTRY_CONFIG = "/etc/docker/registry/config.yml"
REGISTRY_PKI_DIR = "/etc/docker/registry/pki"
HARBOR_YML = "/opt/harbor/harbor.yml"
FRR_CONF = "/etc/frr/frr.conf"
FRR_DAEMONS = "/etc/frr/daemons"
KUBERNETES_SYSCTL = "/etc/sysctl.d/99-kubernetes.conf"
KUBERNETES_MODULES = "/etc/modules-load.d/k8s.conf"

# --- local state -------------------------------------------------------------------------------
#: The cluster state dir is `<STATE_ROOT>/<cluster name>/` relative to the working directory.
STATE_ROOT = Path(".k8sha")

#: The package's own templates, one folder per component.
TEMPLATES_DIR = Path(__file__).parent / "templates"
