"""Lab stand-in for `kubeadm`: the real command line and output shapes, no real Kubernetes.

Supported: `init --config F [--upload-certs]`, `init phase upload-certs --upload-certs`,
`token create [--print-join-command] [--ttl D] [--certificate-key K]`,
`join --config F` or `join HOST:PORT --token T --discovery-token-ca-cert-hash H
[--control-plane --certificate-key K]`, `reset [-f]`, `version [-o short|json]`.
State lives in the real external etcd (bootstrap tokens, kubeadm-config, cluster-info, the
uploaded-certs marker); certificates are signed with the `openssl` CLI by the cluster CA.
Human-readable lines carry the "[lab stand-in]" prefix; values scripts consume verbatim (the
version, the printed join command, the certificate key line) are exact and a stand-in note goes
to stderr instead.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys

import k8sha_standin as sa
import services
from kubeadm_join import cmd_join
from kubeadm_phases import (
    ADMIN_CONF,
    APISERVER_MANIFEST,
    CONTROL_PLANE_LABEL,
    DEFAULT_TOKEN_TTL,
    KUBELET_CONF,
    PKI,
    KubeadmError,
    ca_hash,
    cluster_config,
    create_token,
    duration,
    etcd_of,
    issue_apiserver_cert,
    join_command,
    load_config,
    local_etcd,
    node_name,
    note,
    out,
    outbound_address,
    upload_certs,
    wait_healthy,
    write_kubeconfigs,
    write_kubelet_files,
    write_manifests,
)

# --- commands -----------------------------------------------------------------------------------


def cmd_init(args: argparse.Namespace) -> int:
    cfg = load_config(args.config) if args.config else {}
    init, cluster = cfg.get("InitConfiguration", {}), cfg.get("ClusterConfiguration", {})
    reg = init.get("nodeRegistration") or {}
    node = node_name(reg, args.node_name)
    local = init.get("localAPIEndpoint") or {}
    address = args.apiserver_advertise_address or local.get("advertiseAddress")
    port = int(local.get("bindPort") or 6443)
    endpoint = cluster.get("controlPlaneEndpoint") or f"{address}:{port}"
    if not address:
        address = outbound_address(endpoint)
    version = str(cluster.get("kubernetesVersion") or sa.version()).lstrip("v")
    pki = cluster.get("certificatesDir") or PKI
    out(f"[init] Using Kubernetes version: v{version}")
    out("[preflight] Running pre-flight checks")
    if sa.host_path(APISERVER_MANIFEST).exists():
        raise KubeadmError("[preflight] Some fatal errors occurred:\n\t[ERROR FileAvailable--"
                           "etc-kubernetes-manifests-kube-apiserver.yaml]: "
                           f"{APISERVER_MANIFEST} already exists")
    etcd = etcd_of(cluster)
    try:
        etcd.get("health")
    except sa.EtcdError as exc:
        raise KubeadmError(f"[preflight] Some fatal errors occurred:\n\t[ERROR ExternalEtcd"
                           f"Version]: external etcd is not reachable: {exc}") from None
    out("[preflight] Pulling images required for setting up a Kubernetes cluster (skipped: lab "
        "stand-in, no images)")
    out(f'[certs] Using certificateDir folder "{pki}"')
    if sa.host_path(f"{pki}/ca.crt").exists() and sa.host_path(f"{pki}/ca.key").exists():
        out("[certs] Using existing ca certificate authority")
    else:
        out('[certs] Generating "ca" certificate and key')
        sa.self_signed_ca(f"{pki}/ca.crt", f"{pki}/ca.key")
    issue_apiserver_cert(pki, node, address, cluster, endpoint)
    out("[certs] External etcd mode: Skipping etcd/ca certificate authority generation")
    write_kubeconfigs(pki, node, f"https://{endpoint}",
                      cluster.get("clusterName") or "kubernetes")
    write_manifests(pki, cluster, address, port, version)
    labels = [f"{CONTROL_PLANE_LABEL}=",
              "node.kubernetes.io/exclude-from-external-load-balancers="]
    write_kubelet_files(node, address, labels)
    out("[kubelet-start] Starting the kubelet")
    services.start(list(services.ALL_UNITS))
    ca = sa.host_path(f"{pki}/ca.crt").read_bytes()
    out(f'[wait-control-plane] Waiting for the kubelet to boot up the control plane as static '
        f'Pods from directory "{services.MANIFESTS}"')
    out("[api-check] Waiting for a healthy API server. This can take up to 4m0s")
    took = wait_healthy(address, port, ca)
    out(f"[api-check] The API server is healthy after {took:.3f}s")
    out('[upload-config] Storing the configuration used in ConfigMap "kubeadm-config" in the '
        '"kube-system" Namespace')
    cluster_doc = {"apiVersion": "kubeadm.k8s.io/v1beta4", "kind": "ClusterConfiguration",
                   **{k: v for k, v in cluster.items() if k not in ("apiVersion", "kind")},
                   "kubernetesVersion": f"v{version}", "controlPlaneEndpoint": endpoint,
                   "certificatesDir": pki}
    etcd.put(sa.KUBEADM_CONFIG_KEY, {
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": sa.object_metadata("kubeadm-config", "kube-system"),
        "data": {"ClusterConfiguration": sa.yaml_dump(cluster_doc)}})
    cert_key = None
    if args.upload_certs:
        cert_key = upload_certs(etcd, args.certificate_key or init.get("certificateKey"))
    out(f"[mark-control-plane] Marking the node {node} as control-plane by adding the labels: "
        f"[{CONTROL_PLANE_LABEL} node.kubernetes.io/exclude-from-external-load-balancers]")
    tokens = init.get("bootstrapTokens") or [{}]
    first = tokens[0] or {}
    token = create_token(etcd, first.get("token") or args.token,
                         duration(first.get("ttl") or args.token_ttl, DEFAULT_TOKEN_TTL),
                         "The default bootstrap token generated by 'kubeadm init'.")
    out(f"[bootstrap-token] Using token: {token}")
    out("[bootstrap-token] Configuring bootstrap tokens, cluster-info ConfigMap, RBAC Roles")
    out('[bootstrap-token] Creating the "cluster-info" ConfigMap in the "kube-public" namespace')
    etcd.put(sa.CLUSTER_INFO_KEY, {"apiVersion": "v1", "kind": "ConfigMap", "metadata":
             sa.object_metadata("cluster-info", "kube-public"), "data": {
        "kubeconfig": sa.yaml_dump({"apiVersion": "v1", "clusters": [{"cluster": {
            "certificate-authority-data": sa._b64(ca), "server": f"https://{endpoint}"},
            "name": ""}], "contexts": [], "current-context": "", "kind": "Config",
            "preferences": {}, "users": []})}})
    out(f'[kubelet-finalize] Updating "{KUBELET_CONF}" to point to a rotatable kubelet client '
        "certificate and key")
    out("[addons] Skipped essential addons CoreDNS and kube-proxy (lab stand-in, no pods)")
    digest = ca_hash(pki)
    out(f"""
Your Kubernetes control-plane has initialized successfully!

To start using your cluster, you need to run the following as a regular user:

  mkdir -p $HOME/.kube
  sudo cp -i {ADMIN_CONF} $HOME/.kube/config
  sudo chown $(id -u):$(id -g) $HOME/.kube/config

Alternatively, if you are the root user, you can run:

  export KUBECONFIG={ADMIN_CONF}

You should now deploy a pod network to the cluster.
Run "kubectl apply -f [podnetwork].yaml" with one of the options listed at:
  https://kubernetes.io/docs/concepts/cluster-administration/addons/
""")
    out()
    if cert_key:
        out(f"""You can now join any number of control-plane nodes running the following command on each as root:

  {join_command(endpoint, token, digest, cert_key, multiline=True)}

Please note that the certificate-key gives access to cluster sensitive data, keep it secret!
As a safeguard, uploaded-certs will be deleted in two hours; If necessary, you can use
"kubeadm init phase upload-certs --upload-certs" to reload certs afterward.
""")  # noqa: E501
        out()
    out(f"""Then you can join any number of worker nodes by running the following on each as root:

{join_command(endpoint, token, digest, None, multiline=True)}""")
    return 0


def cmd_upload_certs(args: argparse.Namespace) -> int:
    if not args.upload_certs:
        raise KubeadmError("the --upload-certs flag is needed to upload the certificates")
    upload_certs(local_etcd(), args.certificate_key)
    note("(the lab stand-in keeps only a check of the key in etcd: the deploy places the "
         "certificates on every master)")
    return 0


def cmd_token_create(args: argparse.Namespace) -> int:
    etcd = local_etcd()
    cluster = cluster_config(etcd)
    token = create_token(etcd, args.token, duration(args.ttl, DEFAULT_TOKEN_TTL),
                         "Created by the lab stand-in of 'kubeadm token create'.")
    note("kubeadm token create: bootstrap token stored in the external etcd")
    if args.print_join_command:
        print(join_command(cluster["controlPlaneEndpoint"], token,
                           ca_hash(cluster.get("certificatesDir") or PKI), args.certificate_key,
                           multiline=False), flush=True)
    else:
        print(token, flush=True)
    return 0


def cmd_reset(args: argparse.Namespace) -> int:
    if not args.force:
        sys.stdout.write(f"{sa.PREFIX} [reset] Are you sure you want to proceed? [y/N]: ")
        sys.stdout.flush()
        if sys.stdin.readline().strip().lower() not in ("y", "yes"):
            raise KubeadmError("aborted reset operation")
    out("[preflight] Running pre-flight checks")
    conf = sa.host_path(KUBELET_CONF)
    if conf.exists():
        try:
            server, ca, cert, key = sa.load_kubeconfig(conf)
            flags = sa.host_path(services.KUBELET_FLAGS_ENV).read_text()
            node = re.findall(r"--hostname-override=([^\s\"]+)", flags)[0]
            code, _ = sa.KubeClient(server, ca, cert=cert, key=key, timeout=3).request(
                "DELETE", f"/api/v1/nodes/{node}")
            out(f"[reset] Removed node {node} from the cluster (lab stand-in: HTTP {code})")
        except (OSError, ValueError, KeyError, IndexError) as exc:
            out(f"[reset] Could not remove this node from the cluster: {exc}")
    out("[reset] Stopping the kubelet service")
    services.stop(list(services.ALL_UNITS))
    out('[reset] Unmounting mounted directories in "/var/lib/kubelet"')
    dirs = [services.MANIFESTS, "/var/lib/kubelet", PKI]
    for d in dirs:
        path = sa.host_path(d)
        if path.is_dir():
            for child in path.iterdir():
                if child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child)
                else:
                    child.unlink()
    out(f"[reset] Deleting contents of directories: [{' '.join(dirs)}]")
    files = [ADMIN_CONF, "/etc/kubernetes/super-admin.conf", KUBELET_CONF,
             "/etc/kubernetes/bootstrap-kubelet.conf", "/etc/kubernetes/controller-manager.conf",
             "/etc/kubernetes/scheduler.conf"]
    for f in files:
        sa.host_path(f).unlink(missing_ok=True)
    out(f"[reset] Deleting files: [{' '.join(files)}]")
    out("""
The reset process does not perform cleanup of CNI plugin configuration,
network filtering rules and kubeconfig files.
""")
    return 0


def cmd_version(args: argparse.Namespace) -> int:
    v = sa.version()
    major, minor = v.split(".")[:2]
    if args.output == "short":
        print(f"v{v}", flush=True)
    elif args.output == "json":
        print(sa.json.dumps({"clientVersion": {"major": major, "minor": minor,
                                               "gitVersion": f"v{v}", "platform": "linux/amd64",
                                               "k8shaLabStandin": True}}, indent=2), flush=True)
    else:
        out(f'kubeadm version: &version.Info{{Major:"{major}", Minor:"{minor}", '
            f'GitVersion:"v{v}", GitTreeState:"clean", Platform:"linux/amd64"}}')
        return 0
    note(f"kubeadm version v{v}")
    return 0


def parser() -> argparse.ArgumentParser:
    p = sa.Parser(prog="kubeadm", description=f"{sa.PREFIX} kubeadm")
    p.add_argument("--v", "-v", help=argparse.SUPPRESS)
    sub = p.add_subparsers(dest="command", required=True)

    init = sub.add_parser("init")
    init.add_argument("--config")
    init.add_argument("--upload-certs", action="store_true")
    init.add_argument("--certificate-key")
    init.add_argument("--node-name")
    init.add_argument("--apiserver-advertise-address")
    init.add_argument("--token")
    init.add_argument("--token-ttl")
    init.add_argument("--ignore-preflight-errors")
    init.add_argument("--skip-phases")
    init.add_argument("--v", "-v", help=argparse.SUPPRESS)
    phases = init.add_subparsers(dest="phase")
    phase = phases.add_parser("phase").add_subparsers(dest="phase_name", required=True)
    uc = phase.add_parser("upload-certs")
    uc.add_argument("--upload-certs", action="store_true")
    uc.add_argument("--certificate-key")
    uc.add_argument("--config")
    uc.add_argument("--kubeconfig")
    uc.add_argument("--v", "-v", help=argparse.SUPPRESS)

    join = sub.add_parser("join")
    join.add_argument("endpoint", nargs="?")
    join.add_argument("--config")
    join.add_argument("--token")
    join.add_argument("--discovery-token")
    join.add_argument("--discovery-token-ca-cert-hash", action="append")
    join.add_argument("--control-plane", action="store_true")
    join.add_argument("--certificate-key")
    join.add_argument("--node-name")
    join.add_argument("--apiserver-advertise-address")
    join.add_argument("--apiserver-bind-port")
    join.add_argument("--ignore-preflight-errors")
    join.add_argument("--v", "-v", help=argparse.SUPPRESS)

    token = sub.add_parser("token").add_subparsers(dest="token_command", required=True)
    create = token.add_parser("create")
    create.add_argument("token", nargs="?")
    create.add_argument("--print-join-command", action="store_true")
    create.add_argument("--ttl")
    create.add_argument("--certificate-key")
    create.add_argument("--kubeconfig")
    create.add_argument("--v", "-v", help=argparse.SUPPRESS)

    reset = sub.add_parser("reset")
    reset.add_argument("-f", "--force", action="store_true")
    reset.add_argument("--cleanup-tmp-dir", action="store_true")
    reset.add_argument("--v", "-v", help=argparse.SUPPRESS)

    version = sub.add_parser("version")
    version.add_argument("-o", "--output", choices=["short", "json", "yaml", ""], default="")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        if args.command == "init":
            if getattr(args, "phase_name", None) == "upload-certs":
                return cmd_upload_certs(args)
            return cmd_init(args)
        if args.command == "join":
            return cmd_join(args)
        if args.command == "token":
            return cmd_token_create(args)
        if args.command == "reset":
            return cmd_reset(args)
        return cmd_version(args)
    except KubeadmError as exc:
        message = str(exc)
        if not message.startswith(("error execution phase", "[")):
            phase = {"init": "preflight", "join": "preflight"}.get(args.command)
            message = f"error execution phase {phase}: {message}" if phase else message
        sa.say(message + "\nTo see the stack trace of this error execute with --v=5 or higher",
               sys.stderr)
        return 1
    except sa.EtcdError as exc:
        sa.say(f"error: the external etcd did not answer: {exc}", sys.stderr)
        return 1
    except (subprocess.CalledProcessError, RuntimeError, OSError) as exc:
        sa.say(f"error: {exc}", sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
