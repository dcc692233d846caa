"""Server-side printing: `meta.k8s.io/v1` Table objects, the columns the real apiserver prints.

kubectl asks for a Table (`Accept: application/json;as=Table;g=meta.k8s.io;v=v1`) for its
default and `-o wide` output and prints the columns it gets (priority 1 only with `-o wide`).
"""

from __future__ import annotations

import time
from typing import Any

import k8sha_standin as sa

TABLE_MEDIA = "as=Table"


def human_duration(seconds: float) -> str:
    """apimachinery's duration.HumanDuration, which kubectl's AGE column uses."""
    s = int(seconds)
    if s < -1:
        return "<invalid>"
    if s < 0:
        return "0s"
    if s < 120:
        return f"{s}s"
    minutes = s // 60
    if minutes < 10:
        return f"{minutes}m{s % 60}s" if s % 60 else f"{minutes}m"
    if minutes < 180:
        return f"{minutes}m"
    hours = s // 3600
    if hours < 8:
        return f"{hours}h{minutes % 60}m" if minutes % 60 else f"{hours}h"
    if hours < 48:
        return f"{hours}h"
    if hours < 24 * 8:
        return f"{hours // 24}d{hours % 24}h" if hours % 24 else f"{hours // 24}d"
    if hours < 24 * 365 * 2:
        return f"{hours // 24}d"
    if hours < 24 * 365 * 8:
        days = hours // 24 % 365
        return f"{hours // 24 // 365}y{days}d" if days else f"{hours // 24 // 365}y"
    return f"{hours // 24 // 365}y"


def age(obj: dict[str, Any]) -> str:
    created = (obj.get("metadata") or {}).get("creationTimestamp")
    return human_duration(time.time() - sa.parse_time(created)) if created else "<unknown>"


def _col(name: str, description: str, priority: int = 0, fmt: str = "") -> dict[str, Any]:
    return {"name": name, "type": "string", "format": fmt, "description": description,
            "priority": priority}


NAME = _col("Name", "Name must be unique within a namespace.", fmt="name")
AGE = _col("Age", "CreationTimestamp is a timestamp representing the server time when this "
                  "object was created.")


def _node_cells(node: dict[str, Any]) -> list[Any]:
    meta, status = node.get("metadata") or {}, node.get("status") or {}
    ready = next((c for c in status.get("conditions", []) if c.get("type") == "Ready"), {})
    state = "Ready" if ready.get("status") == "True" else "NotReady"
    if (node.get("spec") or {}).get("unschedulable"):
        state += ",SchedulingDisabled"
    labels = meta.get("labels") or {}
    roles = sorted({k.split("/", 1)[1] for k in labels
                    if k.startswith("node-role.kubernetes.io/") and k.split("/", 1)[1]}
                   | ({labels["kubernetes.io/role"]} if labels.get("kubernetes.io/role")
                      else set()))
    addresses = {a.get("type"): a.get("address") for a in status.get("addresses", [])}
    info = status.get("nodeInfo") or {}
    return [meta.get("name"), state, ",".join(roles) or "<none>", age(node),
            info.get("kubeletVersion", ""), addresses.get("InternalIP", "<none>"),
            addresses.get("ExternalIP", "<none>"), info.get("osImage") or "<unknown>",
            info.get("kernelVersion") or "<unknown>",
            info.get("containerRuntimeVersion") or "<unknown>"]


def _service_cells(svc: dict[str, Any]) -> list[Any]:
    spec = svc.get("spec") or {}
    ports = ",".join(f"{p.get('port')}/{p.get('protocol', 'TCP')}" for p in spec.get("ports", []))
    selector = ",".join(f"{k}={v}" for k, v in sorted((spec.get("selector") or {}).items()))
    return [svc["metadata"]["name"], spec.get("type", "ClusterIP"),
            spec.get("clusterIP", "<none>"), ",".join(spec.get("externalIPs", [])) or "<none>",
            ports or "<none>", age(svc), selector or "<none>"]


def _csr_cells(csr: dict[str, Any]) -> list[Any]:
    spec, status = csr.get("spec") or {}, csr.get("status") or {}
    conditions = [c.get("type") for c in status.get("conditions", [])]
    if status.get("certificate"):
        conditions.append("Issued")
    return [csr["metadata"]["name"], age(csr), spec.get("signerName", ""),
            spec.get("username", ""), "<none>", ",".join(conditions) or "Pending"]


#: kind -> (columns after Name, cells of one object)
COLUMNS: dict[str, tuple[list[dict[str, Any]], Any]] = {
    "Node": ([_col("Status", "The status of the node"),
              _col("Roles", "The roles of the node"), AGE,
              _col("Version", "Kubelet Version reported by the node."),
              _col("Internal-IP", "List of internal IPs.", 1),
              _col("External-IP", "List of external IPs.", 1),
              _col("OS-Image", "OS Image reported by the node.", 1),
              _col("Kernel-Version", "Kernel Version reported by the node.", 1),
              _col("Container-Runtime", "Container Runtime Version reported by the node.", 1)],
             _node_cells),
    "Namespace": ([_col("Status", "The status of the namespace"), AGE],
                  lambda o: [o["metadata"]["name"], (o.get("status") or {}).get("phase", ""),
                             age(o)]),
    "ConfigMap": ([_col("Data", "Data contains the configuration data."), AGE],
                  lambda o: [o["metadata"]["name"],
                             len(o.get("data") or {}) + len(o.get("binaryData") or {}), age(o)]),
    "Lease": ([_col("Holder", "holderIdentity contains the identity of the holder of a current "
                              "lease."), AGE],
              lambda o: [o["metadata"]["name"], (o.get("spec") or {}).get("holderIdentity", ""),
                         age(o)]),
    "Service": ([_col("Type", "Type of the service."), _col("Cluster-IP", "The IP address."),
                 _col("External-IP", "External IPs."), _col("Port(s)", "Ports."), AGE,
                 _col("Selector", "The selector.", 1)], _service_cells),
    "CertificateSigningRequest": ([AGE, _col("SignerName", "The signer."),
                                   _col("Requestor", "The requesting user."),
                                   _col("RequestedDuration", "The requested duration."),
                                   _col("Condition", "The condition.")], _csr_cells),
}
COLUMNS["ConfigMap"][0][0]["type"] = "integer"


def _row_object(obj: dict[str, Any], include: str) -> dict[str, Any] | None:
    if include == "None":
        return None
    if include == "Object":
        return obj
    return {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1",
            "metadata": obj.get("metadata") or {}}


def table(kind: str, objects: list[dict[str, Any]], resource_version: str,
          include_object: str = "Metadata") -> dict[str, Any]:
    """The Table of `objects` (one kind), as `kubectl get` receives it."""
    columns, cells = COLUMNS.get(kind, ([AGE], lambda o: [o["metadata"]["name"], age(o)]))
    rows = []
    for obj in objects:
        row: dict[str, Any] = {"cells": cells(obj)}
        embedded = _row_object(obj, include_object)
        if embedded is not None:
            row["object"] = embedded
        rows.append(row)
    return {"kind": "Table", "apiVersion": "meta.k8s.io/v1",
            "metadata": {"resourceVersion": resource_version},
            "columnDefinitions": [NAME, *columns], "rows": rows}
