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

# --- exit codes of every command ---------------------------------------------------------------
EXIT_OK = 0
#: A host failed, a check failed, or warnings under --strict.
EXIT_FAILED = 1
#: Invalid input (inventory, option): nothing was touched.
EXIT_INVALID = 2

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
#: An LVS director's IPVS sysctls (tasks/keepalived.py IPVS_SYSCTLS), and the modules-load.d file
#: that loads ip_vs at boot before systemd-sysctl applies them (its keys exist only then).
LVS_IPVS_SYSCTL = "/etc/sysctl.d/60-k8sha-ipvs.conf"
LVS_IPVS_MODULES = "/etc/modules-load.d/k8sha-ipvs.conf"
#: The kernel's IPVS table: present once IPVS is in the kernel (a module or built in).
PROC_IPVS = "/proc/net/ip_vs"
HAPROXY_CFG = "/etc/haproxy/haproxy.cfg"
HAPROXY_STATS_SOCKET = "/run/haproxy/admin.sock"
HAPROXY_PKI_DIR = "/etc/haproxy/pki"
#: The cluster's Kubernetes CA on an HAProxy node: its apiserver health checks verify with it.
HAPROXY_KUBERNETES_CA = f"{HAPROXY_PKI_DIR}/kubernetes-ca.crt"
REALSERVER_SYSCTL = "/etc/sysctl.d/60-k8sha-realserver.conf"
#: Where a file written changes what systemd knows of a unit (it then wants a daemon-reload):
#: a unit's state read before such a write is no longer to be trusted.
SYSTEMD_UNIT_DIRS = ("/etc/systemd/system/", "/run/systemd/system/", "/lib/systemd/system/",
                     "/usr/lib/systemd/system/")
REALSERVER_NETWORK = "/etc/systemd/network/60-k8sha-vip-lo.network"
REALSERVER_UNIT = "/etc/systemd/system/k8sha-vip-lo.service"
ETCD_CONF = "/etc/etcd/etcd.conf.yml"
ETCD_UNIT = "/etc/systemd/system/etcd.service"
ETCD_PKI_DIR = "/etc/etcd/pki"
ETCD_DATA_DIR = "/var/lib/etcd"
#: Where `etcd backup` has a member write its snapshot before it is copied here (then removed).
ETCD_SNAPSHOT_TMP = "/var/tmp/k8sha-etcd-snapshot.db"
#: Where `etcd restore` uploads the snapshot to every member (removed after the restore).
ETCD_RESTORE_TMP = "/var/tmp/k8sha-etcd-restore.db"
#: The members' scheduled snapshots (systemd timer) and the script the timer runs.
ETCD_BACKUP_DIR = "/var/backups/etcd"
ETCD_BACKUP_SCRIPT = "/usr/local/sbin/k8sha-etcd-backup"
ETCD_BACKUP_SERVICE = "k8sha-etcd-backup"
ETCD_BACKUP_UNIT = f"/etc/systemd/system/{ETCD_BACKUP_SERVICE}.service"
ETCD_BACKUP_TIMER_UNIT = f"{ETCD_BACKUP_SERVICE}.timer"
ETCD_BACKUP_TIMER = f"/etc/systemd/system/{ETCD_BACKUP_TIMER_UNIT}"
#: etcdctl's --command-timeout for snapshot save (a large DB takes a while to stream).
ETCDCTL_SNAPSHOT_TIMEOUT = "120s"
KUBEADM_CONFIG = "/etc/kubernetes/kubeadm-config.yaml"
KUBERNETES_PKI_DIR = "/etc/kubernetes/pki"
KUBERNETES_ETCD_PKI_DIR = "/etc/kubernetes/pki/etcd-external"
ADMIN_KUBECONFIG = "/etc/kubernetes/admin.conf"
KUBELET_KUBECONFIG = "/etc/kubernetes/kubelet.conf"
CONTAINERD_CERTS_DIR = "/etc/containerd/certs.d"
CONTAINERD_CONFIG = "/etc/containerd/config.toml"
REGISTRY_CONFIG = "/etc/docker/registry/config.yml"
REGISTRY_PKI_DIR = "/etc/docker/registry/pki"
#: Where Harbor's offline installer is unpacked (harbor-offline-installer-v<version>.tgz).
HARBOR_DIR = "/opt/harbor"
HARBOR_YML = f"{HARBOR_DIR}/harbor.yml"
HARBOR_INSTALLER = f"{HARBOR_DIR}/install.sh"
FRR_CONF = "/etc/frr/frr.conf"
FRR_DAEMONS = "/etc/frr/daemons"
#: bgpd's vty socket (FRR's vty directory as Debian builds it), the one `vtysh -d bgpd` talks to.
FRR_BGPD_VTY = "/var/run/frr/bgpd.vty"
KUBERNETES_SYSCTL = "/etc/sysctl.d/99-kubernetes.conf"
KUBERNETES_MODULES = "/etc/modules-load.d/k8s.conf"
#: Where a node learns the registry's name when DNS does not know it.
ETC_HOSTS = "/etc/hosts"

# --- local state -------------------------------------------------------------------------------
#: The cluster state dir is `<STATE_ROOT>/<cluster name>/` relative to the working directory.
STATE_ROOT = Path(".k8sha")

#: The package's own templates, one folder per component.
TEMPLATES_DIR = Path(__file__).parent / "templates"

# --- PKI files on the hosts (pki.bundle_for_host places them; templates reference them) -------
ETCD_CA_CERT = f"{ETCD_PKI_DIR}/ca.crt"
ETCD_SERVER_CERT = f"{ETCD_PKI_DIR}/server.crt"
ETCD_SERVER_KEY = f"{ETCD_PKI_DIR}/server.key"
ETCD_PEER_CERT = f"{ETCD_PKI_DIR}/peer.crt"
ETCD_PEER_KEY = f"{ETCD_PKI_DIR}/peer.key"
APISERVER_ETCD_CA_CERT = f"{KUBERNETES_ETCD_PKI_DIR}/ca.crt"
APISERVER_ETCD_CLIENT_CERT = f"{KUBERNETES_ETCD_PKI_DIR}/apiserver-etcd-client.crt"
APISERVER_ETCD_CLIENT_KEY = f"{KUBERNETES_ETCD_PKI_DIR}/apiserver-etcd-client.key"
#: kubeadm's own serving certificate of the apiserver (signed by our cluster CA; `pki renew`).
KUBE_APISERVER_CERT = f"{KUBERNETES_PKI_DIR}/apiserver.crt"
KUBE_APISERVER_KEY = f"{KUBERNETES_PKI_DIR}/apiserver.key"
REGISTRY_CERT = f"{REGISTRY_PKI_DIR}/server.crt"
REGISTRY_KEY = f"{REGISTRY_PKI_DIR}/server.key"
#: Registry CA on every Kubernetes node: `<CONTAINERD_CERTS_DIR>/<registry name>/<this name>`.
CONTAINERD_REGISTRY_CA = "ca.crt"

# --- rendered files (render.py; templates/<component>/) ----------------------------------------
#: The oneshot unit that puts the VIP on `lo` of each HAProxy node (REALSERVER_UNIT).
REALSERVER_SERVICE = "k8sha-vip-lo"
KUBEADM_JOIN_CONTROL_PLANE = "/etc/kubernetes/kubeadm-join-control-plane.yaml"
KUBEADM_JOIN_WORKER = "/etc/kubernetes/kubeadm-join-worker.yaml"
CONTAINERD_SOCKET = "unix:///run/containerd/containerd.sock"
#: Debian's docker-registry runs as an unprivileged user: the drop-in lets it bind 443.
REGISTRY_DROPIN = "/etc/systemd/system/docker-registry.service.d/k8sha.conf"
REGISTRY_DATA_DIR = "/var/lib/docker-registry"
HARBOR_DATA_VOLUME = "/data"
#: Switches get a command list, not a file: its logical name in `render -o DIR/<switch>/`.
SWITCH_BGP_CONFIG = "k8sha-bgp.cfg"
#: Run-time secrets: rendered files carry these placeholders; the deploy fills them on the host.
PLACEHOLDER_TOKEN = "${TOKEN}"
PLACEHOLDER_CA_CERT_HASH = "${CA_CERT_HASH}"
PLACEHOLDER_CERTIFICATE_KEY = "${CERTIFICATE_KEY}"
#: etcd's plain-HTTP metrics listener, on 127.0.0.1 of each member.
ETCD_METRICS_PORT = 2381

# --- service accounts that own their TLS keys on the hosts --------------------------------------
ETCD_USER = "etcd"
REGISTRY_USER = "docker-registry"

# --- local paths ---------------------------------------------------------------------------------
#: The inventory every command uses when none is given: the embedded lab.
DEFAULT_INVENTORY = Path("inventory/lab")
#: The admin kubeconfig `deploy` fetches into the state dir (server = the VIP).
STATE_ADMIN_KUBECONFIG = "admin.conf"
#: Sub-folders of the state dir: the cluster PKI, saved reports, `render`'s default output.
STATE_PKI_DIR = "pki"
STATE_REPORTS_DIR = "reports"
#: etcd snapshots taken by `etcd backup`, each with a JSON sidecar (sha256, revision, member).
STATE_BACKUPS_DIR = "backups"
#: Secrets generated once per cluster (Harbor's passwords), 0600 in `<state dir>/secrets/`.
STATE_SECRETS_DIR = "secrets"
#: Files in the state dir that hold a secret are created with this mode (never chmod-ed later).
SECRET_FILE_MODE = 0o600
STATE_RENDERED_DIR = "rendered"
#: The cluster's operation lock (fcntl): deploy and runbooks never run beside each other.
STATE_OPERATION_LOCK = "operation.lock"
#: The cluster lock held ON THE HOSTS (a majority of the etcd members; tasks/hostlock.py), so
#: two operators on two machines never run at once: one file, created atomically by link(2).
HOST_LOCK_FILE = "/var/lib/k8sha/cluster.lock"
#: The holder touches its lock files this often; a lock nobody touched for the TTL is stale
#: (its holder is gone) and may be broken with --break-lock.
HOST_LOCK_HEARTBEAT_S = 30.0
HOST_LOCK_TTL_S = 600.0
#: Exit code of the acquire script when the lock is held by someone else (EX_TEMPFAIL).
HOST_LOCK_HELD_EXIT = 75

# --- runbooks ------------------------------------------------------------------------------------
#: The cluster name of the embedded lab's inventory (inventory/lab): runbooks that break things
#: run there without --yes, and lab-only faults (power cuts) are allowed there only.
LAB_CLUSTER_NAME = "lab"
#: Bounds of a runbook run (seconds): a step, a case, a pause, the wait for steady state after.
RUNBOOK_STEP_TIMEOUT_S = 120.0
RUNBOOK_CASE_MAX_S = 600.0
RUNBOOK_MAX_S = 3600.0
RUNBOOK_PAUSE_MAX_S = 600.0
RUNBOOK_RECOVERY_MAX_S = 180.0
#: Faults that heal themselves on the host even when we lose it: the timer's default delay.
FAULT_SELF_HEAL_S = 120
#: How long a fault that may cut our own connection (link down) waits for its answer.
FAULT_CUT_TIMEOUT_S = 3.0
#: The nftables table of the partition fault, and the prefix of our transient systemd units.
FAULT_NFT_TABLE = "k8sha_fault"
FAULT_UNIT_PREFIX = "k8sha-fault"
#: kubeadm's static pod manifests (the apiserver, controller-manager, scheduler of a master).
K8S_MANIFESTS_DIR = "/etc/kubernetes/manifests"

#: The registry probe image `deploy` publishes and `check` pulls on every node (ociimage.py).
PROBE_IMAGE_REPOSITORY = "library/k8sha-probe"
PROBE_IMAGE_TAG = "v1"
#: containerd's namespace for Kubernetes images (what the kubelet uses).
CONTAINERD_K8S_NAMESPACE = "k8s.io"

# --- thresholds ----------------------------------------------------------------------------------
#: Seconds any one probe of a check may take (HTTP request, TCP or SSH connect, SSH command):
#: `check` answers in about this long even when hosts are dead.
CHECK_TIMEOUT_S = 2.0
#: A certificate expiring within this many days is renewed by `pki`/`deploy`, and `check` fails.
CERT_RENEW_BEFORE_DAYS = 30

# --- SSH connection budget (budget.py; settings `ssh`) -------------------------------------------
#: Default of `ssh.max_connections`: SSH connections opened or worked on at once.
DEFAULT_MAX_SSH_CONNECTIONS = 100
#: The least `ssh.max_connections` may be: a fresh etcd member's start blocks until its peers
#: start too (up to 7 members), so fewer slots than members could wait on each other.
MIN_MAX_SSH_CONNECTIONS = 10
#: sshd's MaxStartups default is 10:30:100 (sshd_config(5)): with `start` = 10 unauthenticated
#: connections pending, sshd drops new ones at random (30%, rising to all at 100). So at most
#: this many handshakes to one address:port are in flight at once.
SSHD_MAXSTARTUPS_START = 10
#: Seconds between SSH keep-alives on an idle connection (paramiko's and the OpenSSH master's).
SSH_KEEPALIVE_S = 15
#: Default of the `k8sha_ssh` extra `persist`: idle seconds an OpenSSH master outlives the
#: process that started it, for the next command to reuse (Ansible's ControlPersist default).
DEFAULT_SSH_PERSIST_S = 60

# --- platforms -----------------------------------------------------------------------------------
#: Switch platforms we can configure (netmiko device types); FRR answers as cisco_ios.
SWITCH_PLATFORMS: tuple[str, ...] = ("cisco_ios", "cisco_nxos", "arista_eos", "juniper_junos",
                                     "frr")

# --- runbooks: the load probe through the VIP, and the bounds it is judged by -----------------
#: Seconds between fresh-TLS reads (DESIGN.md's hand measurement read every ~70 ms).
PROBE_READ_INTERVAL_S = 0.07
#: Seconds between ConfigMap writes of the probe's writer.
PROBE_WRITE_INTERVAL_S = 0.25
#: Seconds one probe request may take: an outage shows as failures, not as a hang.
PROBE_REQUEST_TIMEOUT_S = 1.0
#: The longest request timeout a runbook case may give the probe (`load: {request_timeout}`).
PROBE_MAX_REQUEST_TIMEOUT_S = 60.0
#: A probe never runs longer than this, nor keeps more samples than this.
PROBE_MAX_SECONDS = 180.0
PROBE_MAX_SAMPLES = 20000
#: Fresh reads in flight at once: a read stuck on a dead path does not delay the next one.
PROBE_MAX_INFLIGHT = 16
#: A fresh-TLS read's own round trip, allowed on top of the sampling interval in every bound.
PROBE_REQUEST_ALLOWANCE_S = 0.1
#: Seconds without a failed request, after one that succeeded, before a case's load probe may
#: stop: the lift itself can disrupt the API (a thawed VRRP master takes its VIP back), and a
#: probe stopped inside that disruption would measure it as an outage that never ended.
PROBE_SETTLE_S = 0.5
#: Seconds the writes' read-back and the cleanup of the probe's ConfigMaps may take.
PROBE_AUDIT_TIMEOUT_S = 30.0
PROBE_CLEANUP_TIMEOUT_S = 15.0
#: How long `etcd replace` keeps asking the other members' /health before it calls the quorum
#: lost: a member just powered off may have been the leader, and the rest answer false until
#: they have elected another (an election or two; seen in CI right after `lab fault kill-host`).
ETCD_QUORUM_SETTLE_S = 10.0
#: How long the other members of a NEW etcd cluster wait for the first (the seed,
#: tasks/etcd.py `StartOrder`) to serve before they start anyway: it serves 0.05-0.3 s after
#: its start on the lab; a seed that never does costs the others this much, once.
ETCD_SEED_SERVE_WAIT_S = 10.0
#: Kubernetes' leader-election defaults (--leader-elect-lease-duration/-renew-deadline/
#: -retry-period of kube-controller-manager and kube-scheduler): kubeadm keeps them, our
#: templates set none, and the lab's stand-in uses the same values.
KUBE_LEASE_DURATION_S = 15.0
KUBE_LEASE_RENEW_DEADLINE_S = 10.0
KUBE_LEASE_RETRY_PERIOD_S = 2.0

# --- switches (tasks/switch) ----------------------------------------------------------------------
#: Longest wait for one switch command (a config line, a commit, a checkpoint) before the session
#: is given up and the change rolled back on a fresh one.
SWITCH_COMMAND_TIMEOUT = 30.0
#: After a switch change, how long the BGP sessions that were up may take to be Established again.
SWITCH_POSTCHECK_TIMEOUT = 60.0
SWITCH_POSTCHECK_POLL = 1.0
#: The range of a BGP AS number (4-octet ASNs, RFC 6793; 0 is reserved).
BGP_ASN_MIN = 1
BGP_ASN_MAX = 4294967295
#: BGP session timers (seconds): the vendors' defaults (IOS, NX-OS, EOS, FRR `traditional`),
#: RFC 4271's smallest non-zero hold time, keepalives per hold time, and the CLIs' ranges.
BGP_DEFAULT_KEEPALIVE_S = 60
BGP_DEFAULT_HOLD_S = 180
BGP_DEFAULT_CONNECT_RETRY_S = 120
BGP_MIN_HOLD_S = 3
BGP_KEEPALIVES_PER_HOLD = 3
BGP_TIMER_MAX = 65535
BGP_ADVERTISEMENT_INTERVAL_MAX = 600
#: FRR's `bgp route-map delay-timer` on the directors (FRR's default is 5 s). bgpd holds its
#: peers after loading its config until that timer has run (it was started by the config's own
#: route-maps), so a start of FRR opened no session for 4 s; 0 applies a route-map change at once.
FRR_ROUTE_MAP_DELAY_S = 0
#: Junos `commit confirmed N`: minutes after which the switch undoes an unconfirmed commit itself.
SWITCH_COMMIT_CONFIRM_MINUTES = 5
