"""Lab stand-in for kubectl: `get nodes [-o wide|json]`, `get lease NAME -n kube-system`,
`version`. Uses a kubeconfig (--kubeconfig, $KUBECONFIG, ~/.kube/config, admin.conf)."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import k8sha_standin as sa


def kubeconfig_path(flag: str | None) -> str:
    for candidate in (flag, os.environ.get("KUBECONFIG"), str(Path.home() / ".kube/config"),
                      "/etc/kubernetes/admin.conf"):
        if candidate and sa.host_path(candidate).exists():
            return candidate
    raise SystemExit(f"{sa.PREFIX} error: no kubeconfig found")


def age(ts: str) -> str:
    secs = max(0, int(time.time() - sa.parse_time(ts)))
    return f"{secs // 86400}d" if secs >= 86400 else f"{secs // 3600}h" if secs >= 3600 \
        else f"{secs // 60}m" if secs >= 60 else f"{secs}s"


def main(argv: list[str] | None = None) -> int:
    p = sa.Parser(prog="kubectl (lab stand-in)")
    p.add_argument("verb", choices=["get", "version"])
    p.add_argument("resource", nargs="?")
    p.add_argument("name", nargs="?")
    p.add_argument("-o", "--output", default="")
    p.add_argument("-n", "--namespace", default="default")
    p.add_argument("--kubeconfig")
    opts = p.parse_args(argv)
    server, ca, cert, key = sa.load_kubeconfig(kubeconfig_path(opts.kubeconfig))
    try:
        client = sa.KubeClient(server, ca, cert=cert, key=key)
    finally:
        if cert and Path(cert).name.startswith("k8sha-standin-client-"):
            Path(cert).unlink(missing_ok=True)
    if opts.verb == "version":
        code, body = client.request("GET", "/version")
        sa.say(f"Client Version: v{sa.version()}\nServer Version: {body.get('gitVersion')}")
        return 0
    if opts.resource in ("nodes", "node", "no"):
        code, body = client.request("GET", "/api/v1/nodes")
        if code != 200:
            sa.say(f"error: HTTP {code}: {body}", sys.stderr)
            return 1
        if opts.output == "json":
            print(json.dumps(body, indent=2))
            return 0
        rows = [["NAME", "STATUS", "ROLES", "AGE", "VERSION"]
                + (["INTERNAL-IP"] if opts.output == "wide" else [])]
        for node in body["items"]:
            ready = next((c for c in node["status"]["conditions"] if c["type"] == "Ready"), {})
            roles = ",".join(k.rpartition("/")[2] for k in node["metadata"]["labels"]
                             if k.startswith("node-role.kubernetes.io/")) or "<none>"
            row = [node["metadata"]["name"],
                   "Ready" if ready.get("status") == "True" else "NotReady", roles,
                   age(ready.get("lastTransitionTime", sa.now_rfc3339())),
                   node["status"]["nodeInfo"]["kubeletVersion"]]
            if opts.output == "wide":
                row.append(node["status"]["addresses"][0]["address"])
            rows.append(row)
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        sa.say("\n".join("   ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
                         for r in rows))
        return 0
    if opts.resource in ("lease", "leases") and opts.name:
        code, body = client.request("GET", f"/apis/coordination.k8s.io/v1/namespaces/"
                                           f"{opts.namespace}/leases/{opts.name}")
        if code != 200:
            sa.say(f"error: HTTP {code}: {body.get('message', body)}", sys.stderr)
            return 1
        if opts.output == "json":
            print(json.dumps(body, indent=2))
        else:
            sa.say(f"NAME   HOLDER\n{opts.name}   {body['spec']['holderIdentity']}")
        return 0
    sa.say("error: the lab stand-in kubectl knows `get nodes`, `get lease NAME -n NS` and "
           "`version`", sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
