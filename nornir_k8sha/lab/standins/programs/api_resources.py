"""The API surface the apiserver stand-in serves: resources, discovery documents, OpenAPI.

One table of resources (group, version, plural, kind, verbs, etcd prefix) drives routing,
discovery (`/api`, `/api/v1`, `/apis`, `/apis/<group>/<version>`) and the minimal OpenAPI v2
document kubectl downloads before it validates a manifest. Discovery is served in the legacy
(unaggregated) form only: answered as plain `application/json`, kubectl 1.27-1.33 fall back to it
without a message even when they ask for aggregated discovery first.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

READ = ("get", "list", "watch")
WRITE = ("create", "update", "patch", "delete")


@dataclass(frozen=True)
class Resource:
    """One served resource type and where its objects live in etcd."""

    group: str  # "" for the core group
    version: str
    plural: str
    kind: str
    namespaced: bool
    verbs: tuple[str, ...]
    prefix: str  # etcd key prefix, the real apiserver's
    short_names: tuple[str, ...] = ()
    subresources: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def group_resource(self) -> str:
        """`configmaps`, `leases.coordination.k8s.io`: how errors name the type."""
        return f"{self.plural}.{self.group}" if self.group else self.plural

    def key(self, namespace: str | None, name: str) -> str:
        return f"{self.prefix}{namespace}/{name}" if self.namespaced else f"{self.prefix}{name}"

    def collection_key(self, namespace: str | None) -> str:
        return f"{self.prefix}{namespace}/" if self.namespaced and namespace else self.prefix


RESOURCES: tuple[Resource, ...] = (
    Resource("", "v1", "namespaces", "Namespace", False, (*READ, "create", "update", "patch",
             "delete"), "/registry/namespaces/", ("ns",), ("status",)),
    Resource("", "v1", "nodes", "Node", False, (*READ, "create", "update", "patch", "delete"),
             "/registry/minions/", ("no",), ("status",)),
    Resource("", "v1", "configmaps", "ConfigMap", True, (*READ, *WRITE),
             "/registry/configmaps/", ("cm",)),
    Resource("", "v1", "services", "Service", True, READ, "/registry/services/specs/",
             ("svc",), categories=("all",)),
    # Nothing writes these here (the kubelet stand-in runs no pods): empty, but `kubectl
    # describe` lists the events of what it shows and `describe node` the node's pods.
    Resource("", "v1", "events", "Event", True, READ, "/registry/events/", ("ev",)),
    Resource("", "v1", "pods", "Pod", True, READ, "/registry/pods/", ("po",),
             categories=("all",)),
    Resource("coordination.k8s.io", "v1", "leases", "Lease", True, READ,
             "/registry/leases/"),
    Resource("certificates.k8s.io", "v1", "certificatesigningrequests",
             "CertificateSigningRequest", False, ("create", "get", "list", "watch", "delete"),
             "/registry/certificatesigningrequests/", ("csr",)),
)
#: authentication.k8s.io serves SelfSubjectReview (create only, nothing stored); kubectl 1.27
#: asks v1beta1, later ones v1.
SELF_SUBJECT_REVIEW_VERSIONS = ("v1", "v1beta1")
AUTHENTICATION = "authentication.k8s.io"


def find(group: str, version: str, plural: str) -> Resource | None:
    return next((r for r in RESOURCES if (r.group, r.version, r.plural)
                 == (group, version, plural)), None)


def group_versions() -> dict[str, list[str]]:
    """Every served API group (not core) -> its versions, preferred first."""
    groups: dict[str, list[str]] = {}
    for r in RESOURCES:
        if r.group and r.version not in groups.setdefault(r.group, []):
            groups[r.group].append(r.version)
    groups[AUTHENTICATION] = list(SELF_SUBJECT_REVIEW_VERSIONS)
    return groups


# --- discovery documents ------------------------------------------------------------------------


def api_versions(server_address: str) -> dict[str, Any]:
    """GET /api: the core group's versions."""
    return {"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": [
        {"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}]}


def api_group_list() -> dict[str, Any]:
    """GET /apis: every named group with its versions."""
    groups = []
    for name, versions in group_versions().items():
        gvs = [{"groupVersion": f"{name}/{v}", "version": v} for v in versions]
        groups.append({"name": name, "versions": gvs, "preferredVersion": gvs[0]})
    return {"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}


def api_group(name: str) -> dict[str, Any] | None:
    """GET /apis/<group>."""
    versions = group_versions().get(name)
    if not versions:
        return None
    gvs = [{"groupVersion": f"{name}/{v}", "version": v} for v in versions]
    return {"kind": "APIGroup", "apiVersion": "v1", "name": name, "versions": gvs,
            "preferredVersion": gvs[0]}


def _entry(r: Resource) -> dict[str, Any]:
    entry: dict[str, Any] = {"name": r.plural, "singularName": r.kind.lower(),
                             "namespaced": r.namespaced, "kind": r.kind, "verbs": list(r.verbs)}
    if r.short_names:
        entry["shortNames"] = list(r.short_names)
    if r.categories:
        entry["categories"] = list(r.categories)
    return entry


def api_resource_list(group: str, version: str) -> dict[str, Any] | None:
    """GET /api/v1 or /apis/<group>/<version>: the resources of one group version."""
    gv = f"{group}/{version}" if group else version
    entries = []
    for r in RESOURCES:
        if (r.group, r.version) != (group, version):
            continue
        entries.append(_entry(r))
        entries += [{"name": f"{r.plural}/{sub}", "singularName": "", "namespaced": r.namespaced,
                     "kind": r.kind, "verbs": ["get", "patch", "update"]}
                    for sub in r.subresources]
    if group == AUTHENTICATION and version in SELF_SUBJECT_REVIEW_VERSIONS:
        entries.append({"name": "selfsubjectreviews", "singularName": "selfsubjectreview",
                        "namespaced": False, "kind": "SelfSubjectReview", "verbs": ["create"]})
    if not entries:
        return None
    return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv,
            "resources": entries}


# --- OpenAPI v2 (protobuf, the only form kubectl reads) -----------------------------------------

OPENAPI_V2_PROTOBUF = "application/com.github.proto-openapi.spec.v2.v1.0+protobuf"


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field (wire type 2): strings and messages."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def openapi_v2(version: str) -> bytes:
    """A gnostic openapi_v2.Document with no paths and no definitions.

    kubectl downloads it before validating a manifest (`--validate=strict`, the default): with no
    schema for a kind it validates nothing on the client side and sends `fieldValidation=Strict`,
    which the stand-in enforces on the server side instead.
    """
    info = _field(1, b"Kubernetes (lab stand-in)") + _field(2, f"v{version}".encode())
    return _field(1, b"2.0") + _field(2, info) + _field(8, b"")
