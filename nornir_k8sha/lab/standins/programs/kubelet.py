"""Lab stand-in for the kubelet: registers its node and posts heartbeats, runs no pods.

Talks to the apiserver named in its kubeconfig (the VIP) with the client certificate kubeadm
gave it (signed locally on masters, through the CSR API on workers), like the real kubelet:
POST /api/v1/nodes once (409 AlreadyExists is fine), then PATCH /api/v1/nodes/<name>/status
every nodeStatusUpdateFrequency (10 s), registering again when the node was deleted. The
apiserver stamps the heartbeat with its own clock and reports the node Ready while the last one
is younger than the grace period (40 s). Labels are set at registration only, so labels an
admin adds later stay.

Static pods, as far as a stand-in can: the control-plane stand-ins are systemd units, and this
kubelet stops a unit when its manifest leaves /etc/kubernetes/manifests and starts it again when
the manifest comes back (checked every STATIC_POD_CHECK_S; the real kubelet's fileCheckFrequency
is 20 s), so moving a manifest aside stops the component as it does on a kubeadm master.
"""

from __future__ import annotations

import argparse
import platform
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import k8sha_standin as sa
import services
from leader import sa_duration

NAME = "kubelet"
MERGE_PATCH = "application/merge-patch+json"


def node_object(name: str, address: str, labels: dict[str, str]) -> dict[str, Any]:
    now = sa.now_rfc3339()
    return {
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": {
            "kubernetes.io/hostname": name, "kubernetes.io/os": "linux",
            "kubernetes.io/arch": "amd64", "beta.kubernetes.io/os": "linux", **labels},
            "annotations": {"k8sha.io/lab-standin": "true"}},
        "spec": {},
        "status": {
            "addresses": [{"type": "InternalIP", "address": address},
                          {"type": "Hostname", "address": name}],
            "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                            "message": "kubelet is posting ready status (lab stand-in)",
                            "lastHeartbeatTime": now, "lastTransitionTime": now}],
            "nodeInfo": {"kubeletVersion": f"v{sa.version()}", "operatingSystem": "linux",
                         "osImage": os_image(),
                         "architecture": "amd64", "kernelVersion": platform.release(),
                         "containerRuntimeVersion": "lab-standin://none"},
        },
    }


def os_image() -> str:
    """PRETTY_NAME of /etc/os-release, as the real kubelet reports it."""
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                return line.partition("=")[2].strip().strip('"')
    except OSError:
        pass
    return "<unknown>"


def post_status(client: sa.KubeClient, name: str, node: dict[str, Any], registered: bool
                ) -> tuple[str, bool]:
    """(problem or "", registered): register when needed, then patch the status."""
    if not registered:
        code, body = client.request("POST", "/api/v1/nodes", node)
        if code not in (201, 409):
            return f"registering: HTTP {code}: {_message(body)}", False
    code, body = client.request("PATCH", f"/api/v1/nodes/{name}/status",
                                {"status": node["status"]}, MERGE_PATCH)
    if code == 404:  # deleted meanwhile: register again next time
        return f'node "{name}" not found', False
    return ("" if code == 200 else f"HTTP {code}: {_message(body)}"), True


def _message(body: Any) -> str:
    return str(body.get("message", body)) if isinstance(body, dict) else str(body)


def options(argv: list[str]) -> argparse.Namespace:
    p = sa.Parser(prog="kubelet (lab stand-in)")
    p.add_argument("--kubeconfig", default="/etc/kubernetes/kubelet.conf")
    p.add_argument("--config", default="/var/lib/kubelet/config.yaml")
    p.add_argument("--node-ip", default="")
    p.add_argument("--hostname-override", default="")
    p.add_argument("--node-labels", default="")
    opts, _ = p.parse_known_args(argv)  # real kubelet flags (container runtime...) are ignored
    return opts


def _interrupt(*_: Any) -> None:
    raise KeyboardInterrupt


RETRY_AFTER_ERROR = 1.0
#: Seconds between two looks at the static-pod manifests.
STATIC_POD_CHECK_S = 1.0


def manifests_present() -> dict[str, bool]:
    """control-plane unit -> its manifest is in the kubelet's directory."""
    return {unit: sa.host_path(f"{services.MANIFESTS}/{unit.removesuffix('.service')}.yaml"
                               ).exists() for unit in services.CONTROL_PLANE_UNITS}


def reconcile_static_pods(before: dict[str, bool], now: dict[str, bool]) -> None:
    """Act on what changed since the last look only: kubeadm starts and stops the units
    itself when it writes or removes manifests, and this must not fight it."""
    for unit, present in now.items():
        if before.get(unit) == present:
            continue
        if present:
            sa.log(NAME, f"static pod manifest of {unit} is back: starting it")
            services.start([unit])
        else:
            sa.log(NAME, f"static pod manifest of {unit} is gone: stopping it")
            services.stop([unit])


def watch_static_pods(stop: threading.Event) -> None:
    seen = manifests_present()
    while not stop.wait(STATIC_POD_CHECK_S):
        now = manifests_present()
        try:
            reconcile_static_pods(seen, now)
        except (OSError, subprocess.SubprocessError) as exc:  # say so, look again later
            sa.log(NAME, f"static pods: {exc}")
            continue
        seen = now


def main(argv: list[str] | None = None) -> int:
    opts = options(sys.argv[1:] if argv is None else argv)
    name = (opts.hostname_override or socket.gethostname()).lower()
    labels = dict(kv.partition("=")[::2] for kv in opts.node_labels.split(",") if kv)
    interval = 10.0
    try:
        cfg = sa.yaml_load(sa.host_path(opts.config).read_text()) or {}
        interval = sa_duration(cfg.get("nodeStatusUpdateFrequency", "10s"))
    except OSError:
        pass
    server, ca, cert, key = sa.load_kubeconfig(opts.kubeconfig)
    client = sa.KubeClient(server, ca, cert=cert, key=key, timeout=5)
    address = opts.node_ip or socket.gethostbyname(socket.gethostname())
    signal.signal(signal.SIGTERM, _interrupt)
    sa.log(NAME, f"node {name} ({address}) posting status to {server} every {interval:g}s")
    healthy: bool | None = None
    registered = False
    stopping = threading.Event()
    threading.Thread(target=watch_static_pods, args=(stopping,), daemon=True).start()
    try:
        while True:
            started = time.monotonic()
            try:
                problem, registered = post_status(client, name,
                                                  node_object(name, address, labels), registered)
            except OSError as exc:
                problem = str(getattr(exc, "reason", exc))
            if not problem and healthy is not True:
                sa.log(NAME, f'node "{name}" status posted: Ready')
            elif problem and healthy is not False:
                sa.log(NAME, f"error updating node status, will retry: {problem}")
            healthy = not problem
            # like the real kubelet, a failed update is retried soon, not a whole period later
            wait = RETRY_AFTER_ERROR if problem else interval
            time.sleep(max(0.0, wait - (time.monotonic() - started)))
    except KeyboardInterrupt:
        sa.log(NAME, "stopping")
    finally:
        stopping.set()
    return 0


if __name__ == "__main__":
    sys.exit(main())
