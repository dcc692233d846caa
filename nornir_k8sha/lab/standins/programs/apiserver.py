"""Lab stand-in for kube-apiserver: HTTPS with the cluster's certificates, state in the real etcd.

Speaks enough of the real Kubernetes API that real clients (kubectl 1.20-1.33, client-go) work
unchanged: discovery, OpenAPI v2 (empty), Table output, watches, Status errors, and namespaces,
nodes, configmaps, services, leases and CSRs stored under the real apiserver's etcd keys (see
docs/standins.md for the exact paths and verbs). It also serves the bootstrap pieces of kubeadm
join (cluster-info with JWS signatures, kubeadm-config, the kubeadm-certs marker, kubelet CSRs
signed at once). Authentication: client certificates of the cluster CA, bootstrap tokens as
bearer tokens; health, version and cluster-info are anonymous, everything else answers 401
without credentials.
"""

from __future__ import annotations

import argparse
import base64
import json
import queue
import re
import secrets
import select
import signal
import socket
import ssl
import sys
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import api_objects as ao
import api_protobuf as pb
import api_resources as res
import api_tables as tables
import k8sha_standin as sa
from api_cluster import ADMIN_GROUPS, CSRS, NAME, NAMESPACES, NODES, Cluster
from api_store import EtcdWatch, WatchClosed, watch_events

CLUSTER_INFO = "/api/v1/namespaces/kube-public/configmaps/cluster-info"
KUBEADM_CONFIG = "/api/v1/namespaces/kube-system/configmaps/kubeadm-config"
KUBEADM_CERTS = "/api/v1/namespaces/kube-system/secrets/kubeadm-certs"
CSR_PATH = "/apis/certificates.k8s.io/v1/certificatesigningrequests"
HEALTH = re.compile(r"^/(healthz|livez|readyz)(?:/(.+))?$")
SELF_REVIEW = re.compile(r"^/apis/authentication\.k8s\.io/(v1|v1beta1)/selfsubjectreviews$")
DISCOVERY = ("/api", "/apis", "/version", "/openapi/v2")
WATCH_POLL = 1.0  # how often an idle watch looks whether its client has gone
#: kube-apiserver's answer to a request whose handler panicked (filters/wrap.go), as 500.
PANIC_MESSAGE = ("This request caused apiserver to panic. Look in the logs for details. "
                 "(lab stand-in)\n")


def _list_key(obj: dict[str, Any]) -> str:
    """Where an object sits in a list: its etcd key order, namespace then name."""
    meta = obj.get("metadata") or {}
    return f"{meta.get('namespace', '')}/{meta.get('name', '')}"


def page(objects: list[dict[str, Any]], query: dict[str, str], revision: int
         ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """API chunking (`limit`, `continue`), as kube-apiserver pages a list: at most `limit`
    objects after the continue token's key, and, when more are left, a `continue` token (base64
    JSON with the key to start from, like the real one) and `remainingItemCount`. kubectl asks
    `limit=500` and follows the tokens; the load probe's kept-alive reader asks `limit=1`."""
    token = query.get("continue", "")
    if token:
        try:
            start = json.loads(base64.urlsafe_b64decode(token.encode()))["start"]
        except (ValueError, KeyError, TypeError):
            raise ao.ApiError(400, "BadRequest", "continue key is not valid") from None
        objects = [o for o in objects if _list_key(o) >= start]
    try:
        limit = int(query.get("limit") or 0)
    except ValueError:
        limit = 0
    if limit <= 0 or len(objects) <= limit:
        return objects, {}
    rest = objects[limit:]
    start = _list_key(objects[limit - 1]) + "\x00"
    token = base64.urlsafe_b64encode(json.dumps(
        {"v": "meta.k8s.io/v1", "rv": revision, "start": start}).encode()).decode()
    return objects[:limit], {"continue": token, "remainingItemCount": len(rest)}


class Request:
    """One parsed API request: the verb, the resource and where it points."""

    def __init__(self, method: str, path: str, query: dict[str, str]) -> None:
        self.method, self.path, self.query = method, path, query
        self.resource: res.Resource | None = None
        self.namespace: str | None = None
        self.name = ""
        self.sub = ""
        self.verb = ""

    @classmethod
    def parse(cls, method: str, raw: str) -> Request:
        url = urllib.parse.urlsplit(raw)
        query = {k: v[-1] for k, v in urllib.parse.parse_qs(url.query,
                                                             keep_blank_values=True).items()}
        req = cls(method, url.path.rstrip("/") or "/", query)
        parts = req.path.strip("/").split("/")
        if parts[0] == "api" and len(parts) >= 3 and parts[1] == "v1":
            group, version, rest = "", "v1", parts[2:]
        elif parts[0] == "apis" and len(parts) >= 4:
            group, version, rest = parts[1], parts[2], parts[3:]
        else:
            return req
        if rest[0] == "namespaces" and len(rest) >= 3 and not (
                len(rest) == 3 and rest[2] in ("status", "finalize")):
            req.namespace, rest = rest[1], rest[2:]
        req.resource = res.find(group, version, rest[0])
        req.name = rest[1] if len(rest) > 1 else ""
        req.sub = "/".join(rest[2:])
        watching = query.get("watch") in ("1", "true")
        req.verb = {"GET": "watch" if watching else ("get" if req.name else "list"),
                    "POST": "create", "PUT": "update", "PATCH": "patch",
                    "DELETE": "delete" if req.name else "deletecollection"}.get(method, "")
        return req


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Go sets TCP_NODELAY on every TCP connection (kube-apiserver too); without it a small
    # write waits for the peer's delayed ACK of the previous one (~40 ms a response)
    disable_nagle_algorithm = True
    timeout = 30
    server: Server

    def setup(self) -> None:
        # The TLS handshake runs here, in the connection's own thread, never in accept().
        self.request.settimeout(10)
        self.request = self.server.tls.wrap_socket(self.request, server_side=True)
        self.request.settimeout(self.timeout)
        super().setup()

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.request.close()

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass  # health probes arrive several times a second: errors are logged in send()

    # --- identity ---

    def user(self) -> tuple[str, set[str]] | None:
        """(name, groups) from the verified client certificate or a bootstrap token."""
        cert = self.request.getpeercert()
        if cert:
            fields = [kv for rdn in cert.get("subject", ()) for kv in rdn]
            cn = next((v for k, v in fields if k == "commonName"), "")
            return cn, {v for k, v in fields if k == "organizationName"}
        auth = self.headers.get("Authorization", "")
        if auth.startswith("Bearer "):
            token = auth[7:].strip()
            try:
                if sa.token_valid(self.server.cluster.etcd, token):
                    return f"system:bootstrap:{token[:6]}", {
                        "system:bootstrappers", "system:bootstrappers:kubeadm:default-node-token"}
            except sa.EtcdError:
                return None
        return None

    # --- replies ---

    def send(self, code: int, body: Any, ctype: str = "") -> None:
        if isinstance(body, bytes):
            data = body
        elif isinstance(body, dict | list):
            data, ctype = json.dumps(body).encode(), "application/json"
        else:
            data, ctype = str(body).encode(), "text/plain; charset=utf-8"
        if code >= 400 or self.command in ("POST", "PUT", "PATCH", "DELETE"):
            if not (self.command == "PATCH" and code == 200 and "/status" in self.path):
                sa.log(NAME, f"{self.command} {self.path.split('?')[0]} -> {code}")
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.send_header(sa.HEADER, "true")
        # the headers and the body in one write, as Go's buffered response writer sends a small
        # answer: not a header record the body follows ~40 ms later (Nagle, delayed ACK), where
        # a proxy stopping in between cut every such answer after its headers
        self._headers_buffer.append(b"\r\n")
        if self.command != "HEAD":
            self._headers_buffer.append(data)
        self.flush_headers()

    def fail(self, err: ao.ApiError) -> None:
        self.send(err.code, err.status())

    def body(self) -> Any:
        raw = self.raw_body
        ctype = (self.headers.get("Content-Type") or "application/json").split(";")[0].strip()
        if ctype == pb.MEDIA_TYPE and self.command in ("POST", "PUT"):
            try:
                return pb.decode(raw)
            except pb.ProtobufError as exc:
                raise ao.ApiError(415, "UnsupportedMediaType", str(exc)) from None
        if ctype not in ("application/json", ao.MERGE_PATCH, ao.STRATEGIC_PATCH, ao.JSON_PATCH):
            raise ao.ApiError(415, "UnsupportedMediaType", f'the body of the request was in an '
                              f'unknown format - accepted media types include: application/json, '
                              f'{ao.MERGE_PATCH}, {ao.STRATEGIC_PATCH}, {ao.JSON_PATCH} (not '
                              f'"{ctype}")')
        try:
            return json.loads(raw or b"{}")
        except ValueError as exc:
            raise ao.ApiError(400, "BadRequest", f"the body is not JSON: {exc}") from None

    def wants_table(self) -> bool:
        return tables.TABLE_MEDIA in (self.headers.get("Accept") or "")

    def reply_object(self, code: int, r: res.Resource, obj: dict[str, Any]) -> None:
        if self.wants_table():
            obj = tables.table(r.kind, [obj], obj["metadata"].get("resourceVersion", ""),
                               self.include_object)
        self.send(code, obj)

    # --- routes ---

    def do_GET(self) -> None:  # noqa: N802
        self.route("GET")

    def do_HEAD(self) -> None:  # noqa: N802
        self.route("GET")

    def do_PUT(self) -> None:  # noqa: N802
        self.route("PUT")

    def do_POST(self) -> None:  # noqa: N802
        self.route("POST")

    def do_PATCH(self) -> None:  # noqa: N802
        self.route("PATCH")

    def do_DELETE(self) -> None:  # noqa: N802
        self.route("DELETE")

    def route(self, method: str) -> None:
        req = Request.parse(method, self.path)
        length = int(self.headers.get("Content-Length") or 0)
        self.raw_body = self.rfile.read(length) if length else b""  # always read: keep-alive
        self.include_object = req.query.get("includeObject", "Metadata")
        try:
            if not self.anonymous(req):
                user = self.user()
                if user is None:
                    self.send(401, ao.status_object(401, "Unauthorized", "Unauthorized"))
                else:
                    self.authenticated(req, *user)
        except ao.ApiError as err:
            self.fail(err)
        except sa.EtcdError as exc:
            self.fail(ao.ApiError(503, "ServiceUnavailable", f"etcd: {exc}"))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            self.fail(ao.ApiError(400, "BadRequest", f"bad request: {exc!r}"))
        except OSError:
            raise  # the client's connection: there is nobody left to answer
        except Exception as exc:  # noqa: BLE001 - kube-apiserver's panic recovery (WithPanicRecovery)
            # answered, not a connection dropped without a word: a client would read that as
            # a server gone away and a kept-alive reader would be sent elsewhere
            sa.log(NAME, f"{self.command} {self.path.split('?')[0]}: {exc!r}")
            self.send(500, PANIC_MESSAGE)

    def anonymous(self, req: Request) -> bool:
        """Health, version and cluster-info, answered without credentials; True if handled."""
        cluster = self.server.cluster
        m = HEALTH.match(req.path)
        if req.method == "GET" and m:
            self.send(*cluster.health(m[1], "verbose" in req.query, m[2] or ""))
            return True
        if req.method == "GET" and req.path == "/version":
            major, minor = cluster.version.split(".")[:2]
            self.send(200, {"major": major, "minor": minor, "gitVersion": f"v{cluster.version}",
                            "gitCommit": "0000000000000000000000000000000000000000",
                            "gitTreeState": "clean", "buildDate": "1970-01-01T00:00:00Z",
                            "goVersion": "none (lab stand-in)", "compiler": "gc",
                            "platform": "linux/amd64", "k8shaLabStandin": True})
            return True
        if req.method == "GET" and req.path == CLUSTER_INFO and not self.wants_table():
            cm = cluster.cluster_info()
            self.send(200, cm) if cm else self.fail(ao.not_found(res.RESOURCES[2],
                                                                 "cluster-info"))
            return True
        return False

    def authenticated(self, req: Request, name: str, groups: set[str]) -> None:
        cluster = self.server.cluster
        admin = bool(groups & ADMIN_GROUPS)
        bootstrap = "system:bootstrappers" in groups
        if req.method == "POST" and SELF_REVIEW.match(req.path):
            return self.whoami(req, name, groups)
        if req.method == "GET" and req.path in (KUBEADM_CONFIG, KUBEADM_CERTS) and (
                admin or bootstrap):
            key = sa.KUBEADM_CONFIG_KEY if req.path == KUBEADM_CONFIG else sa.CERTS_KEY
            obj = cluster.etcd.get(key)
            if obj:
                return self.send(200, obj)
            kind = "configmaps" if req.path == KUBEADM_CONFIG else "secrets"
            return self.fail(ao.ApiError(404, "NotFound", f'{kind} "{req.path.rsplit("/")[-1]}"'
                                                          " not found"))
        if req.method == "POST" and req.path == CSR_PATH and (admin or bootstrap):
            return self.send(201, cluster.sign_kubelet_csr(self.body(), name, groups))
        if bootstrap:
            raise ao.forbidden(name, req.verb or req.method.lower(), req.resource,
                               req.namespace, req.path)
        if req.method == "GET" and (req.path in DISCOVERY or req.path.startswith("/api")) \
                and req.resource is None:
            return self.discovery(req)
        if req.resource is None or req.sub not in ("", "status") or not req.verb:
            return self.fail(ao.ApiError(404, "NotFound", "the server could not find the "
                                                          f"requested resource {req.path}"))
        r = req.resource
        if req.verb not in r.verbs or (req.sub and r is not NODES and r is not NAMESPACES):
            raise ao.ApiError(405, "MethodNotAllowed", f"{req.verb} is not supported on "
                                                       f"{r.group_resource}")
        if req.verb != "create":  # a create is authorized once its body names the object
            self.authorize(req, name, groups)
        getattr(self, "do_" + req.verb)(req, name, groups)

    def authorize(self, req: Request, user: str, groups: set[str], name: str = "") -> None:
        """Admins may do anything; a node reads nodes and writes its own Node; others 403."""
        if groups & ADMIN_GROUPS:
            return
        r = req.resource
        if r is NODES and "system:nodes" in groups:
            if req.verb in ("get", "list", "watch"):
                return
            if f"system:node:{name or req.name}" == user and req.verb in (
                    "create", "update", "patch", "delete"):
                return
        raise ao.forbidden(user, req.verb, r, req.namespace)

    def whoami(self, req: Request, name: str, groups: set[str]) -> None:
        version = SELF_REVIEW.match(req.path)[1]
        self.send(201, {"kind": "SelfSubjectReview",
                        "apiVersion": f"authentication.k8s.io/{version}",
                        "metadata": {"creationTimestamp": None},
                        "status": {"userInfo": {"username": name, "groups": sorted(groups) + [
                            "system:authenticated"]}}})

    def discovery(self, req: Request) -> None:
        cluster = self.server.cluster
        parts = req.path.strip("/").split("/")
        if req.path == "/openapi/v2":
            return self.send(200, res.openapi_v2(cluster.version), res.OPENAPI_V2_PROTOBUF)
        if req.path == "/api":
            host = self.headers.get("Host") or f"{socket.gethostname()}:{cluster.port}"
            return self.send(200, res.api_versions(host))
        if req.path == "/apis":
            return self.send(200, res.api_group_list())
        doc: dict[str, Any] | None = None
        if parts[0] == "api" and len(parts) == 2:
            doc = res.api_resource_list("", parts[1])
        elif parts[0] == "apis" and len(parts) == 2:
            doc = res.api_group(parts[1])
        elif parts[0] == "apis" and len(parts) == 3:
            doc = res.api_resource_list(parts[1], parts[2])
        if doc is None:
            return self.fail(ao.ApiError(404, "NotFound", "the server could not find the "
                                                          f"requested resource {req.path}"))
        self.send(200, doc)

    # --- verbs ---

    def matcher(self, req: Request) -> Any:
        labels = ao.label_matcher(req.query.get("labelSelector", ""))
        fields = ao.field_matcher(req.query.get("fieldSelector", ""))
        return lambda obj: labels((obj.get("metadata") or {}).get("labels")) and fields(obj)

    def do_get(self, req: Request, _user: str, _groups: set[str]) -> None:
        obj, _kv = self.server.cluster.store.get(req.resource, req.namespace, req.name)
        self.reply_object(200, req.resource, obj)

    def do_list(self, req: Request, _user: str, _groups: set[str]) -> None:
        r = req.resource
        revision, objects = self.server.cluster.store.list(r, req.namespace)
        keep = self.matcher(req)
        objects = [o for o in objects if keep(o)]
        objects, more = page(objects, req.query, revision)
        if self.wants_table():
            table = tables.table(r.kind, objects, str(revision), self.include_object)
            table["metadata"].update(more)
            return self.send(200, table)
        self.send(200, {"kind": f"{r.kind}List", "apiVersion": r.api_version,
                        "metadata": {"resourceVersion": str(revision), **more},
                        "items": objects})

    def do_create(self, req: Request, user: str, groups: set[str]) -> None:
        r, obj = req.resource, self.body()
        if not isinstance(obj, dict):
            raise ao.ApiError(400, "BadRequest", "the body must be an object")
        if r is CSRS:
            return self.send(201, self.server.cluster.sign_kubelet_csr(obj, user, groups))
        meta = obj.setdefault("metadata", {})
        if req.query.get("fieldValidation") == "Strict":
            ao.check_strict(r, obj)
        if r.namespaced:
            if meta.get("namespace") not in (None, "", req.namespace):
                raise ao.ApiError(400, "BadRequest", "the namespace of the provided object does "
                                                     "not match the namespace sent on the "
                                                     "request")
            meta["namespace"] = req.namespace
        if meta.get("resourceVersion"):
            raise ao.ApiError(400, "BadRequest", "resourceVersion should not be set on objects "
                                                 "to be created")
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = meta["generateName"] + "".join(
                secrets.choice("bcdfghjklmnpqrstvwxz2456789") for _ in range(5))
        self.authorize(req, user, groups, meta.get("name", ""))
        obj["apiVersion"], obj["kind"] = r.api_version, r.kind
        ao.validate(r, obj)
        cluster = self.server.cluster
        cluster.prepare_create(r, obj)
        if r is NODES and user.startswith("system:node:"):
            cluster.stamp_heartbeat(obj, None)
        created = cluster.store.create(r, obj, dry_run=req.query.get("dryRun") == "All")
        self.reply_object(201, r, created)

    def do_update(self, req: Request, user: str, _groups: set[str]) -> None:
        r, body = req.resource, self.body()
        if not isinstance(body, dict):
            raise ao.ApiError(400, "BadRequest", "the body must be an object")
        meta = body.setdefault("metadata", {})
        if meta.get("name") != req.name:
            raise ao.ApiError(400, "BadRequest", "the name of the object "
                                                 f"({meta.get('name')}) does not match the name "
                                                 f"on the URL ({req.name})")
        if req.query.get("fieldValidation") == "Strict":
            ao.check_strict(r, body)
        if r.namespaced:
            meta["namespace"] = req.namespace
        body["apiVersion"], body["kind"] = r.api_version, r.kind
        own_node = r is NODES and user == f"system:node:{req.name}"

        def change(current: dict[str, Any] | None) -> dict[str, Any]:
            new = dict(body)
            if req.sub == "status" and current is not None:
                new = {**current, "status": body.get("status", {}),
                       "metadata": {**current["metadata"], **({"resourceVersion": meta[
                           "resourceVersion"]} if meta.get("resourceVersion") else {})}}
            if own_node:
                self.server.cluster.stamp_heartbeat(new, current)
            return new

        # a node's own PUT creates it (the kubelet stand-in of earlier versions registered so)
        obj, created = self.server.cluster.store.write(
            r, req.namespace, req.name, change, create_missing=own_node,
            dry_run=req.query.get("dryRun") == "All")
        self.reply_object(201 if created else 200, r, obj)

    def do_patch(self, req: Request, user: str, _groups: set[str]) -> None:
        r, patch = req.resource, self.body()
        ctype = (self.headers.get("Content-Type") or "").split(";")[0].strip()
        own_node = r is NODES and user == f"system:node:{req.name}"

        def change(current: dict[str, Any] | None) -> dict[str, Any]:
            base = {k: v for k, v in (current or {}).items()}
            base["metadata"] = {k: v for k, v in base.get("metadata", {}).items()
                                if k != "resourceVersion"}
            if ctype == ao.JSON_PATCH:
                new = ao.json_patch(base, patch if isinstance(patch, list) else [])
            elif ctype in (ao.MERGE_PATCH, ao.STRATEGIC_PATCH):
                new = ao.merge_patch(base, patch, strategic=ctype == ao.STRATEGIC_PATCH)
            else:
                raise ao.ApiError(415, "UnsupportedMediaType", f'the patch type "{ctype}" is '
                                  "not supported by the lab stand-in (server-side apply is not)")
            if req.sub == "status":
                new = {**base, "status": new.get("status", {}),
                       "metadata": {**base["metadata"], **{
                           k: v for k, v in new.get("metadata", {}).items()
                           if k == "resourceVersion"}}}
            for field in ("name", "namespace", "uid"):
                if (current or {}).get("metadata", {}).get(field) != new.get(
                        "metadata", {}).get(field):
                    raise ao.invalid(r, req.name, [(f"metadata.{field}",
                                                    "Invalid value: field is immutable")])
            if req.query.get("fieldValidation") == "Strict":
                ao.check_strict(r, new)
            if own_node:
                self.server.cluster.stamp_heartbeat(new, current)
            return new

        obj, _ = self.server.cluster.store.write(r, req.namespace, req.name, change,
                                                 dry_run=req.query.get("dryRun") == "All")
        self.reply_object(200, r, obj)

    def do_delete(self, req: Request, _user: str, _groups: set[str]) -> None:
        r, cluster = req.resource, self.server.cluster
        options = self.body() if self.raw_body else {}
        precondition = ((options or {}).get("preconditions") or {}).get("resourceVersion")
        if r is NAMESPACES:
            return self.reply_object(200, r, cluster.delete_namespace(req.name))
        obj = cluster.store.delete(r, req.namespace, req.name, precondition)
        if self.wants_table():
            return self.reply_object(200, r, obj)
        self.send(200, ao.success(r, req.name, obj["metadata"].get("uid", "")))

    def do_watch(self, req: Request, _user: str, _groups: set[str]) -> None:
        """A chunked stream of watch events backed by an etcd watch, until the client leaves
        or `timeoutSeconds` pass."""
        r, cluster = req.resource, self.server.cluster
        keep = self.matcher(req)
        since = req.query.get("resourceVersion", "")
        initial: list[dict[str, Any]] = []
        if since in ("", "0"):
            revision, objects = cluster.store.list(r, req.namespace)
            initial = [{"type": "ADDED", "object": o} for o in objects if keep(o)]
            since = str(revision)
        if not since.isdigit():
            raise ao.ApiError(400, "BadRequest", f"invalid resourceVersion {since!r}")
        watch = EtcdWatch(cluster.etcd, r.collection_key(req.namespace), int(since) + 1)
        events: queue.Queue[dict[str, Any] | None] = queue.Queue()

        def pump() -> None:
            try:
                for event in watch_events(cluster.store, r, req.namespace, int(since), keep,
                                          watch):
                    events.put(event)
            except (WatchClosed, sa.EtcdError):
                pass
            events.put(None)

        threading.Thread(target=pump, daemon=True, name="watch").start()
        deadline = time.monotonic() + float(req.query.get("timeoutSeconds") or 1800)
        self.close_connection = True
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header(sa.HEADER, "true")
        self.end_headers()
        try:
            for event in initial:
                self.chunk(r, event)
            while time.monotonic() < deadline:
                try:
                    event = events.get(timeout=WATCH_POLL)
                except queue.Empty:
                    if self.client_gone():
                        break
                    continue
                if event is None:
                    break
                self.chunk(r, event)
            self.wfile.write(b"0\r\n\r\n")
        except OSError:
            pass
        finally:
            watch.close()

    def chunk(self, r: res.Resource, event: dict[str, Any]) -> None:
        if self.wants_table() and event["type"] in ("ADDED", "MODIFIED", "DELETED"):
            obj = event["object"]
            event = {"type": event["type"], "object": tables.table(
                r.kind, [obj], obj["metadata"].get("resourceVersion", ""), self.include_object)}
        data = json.dumps(event).encode() + b"\n"
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    def client_gone(self) -> bool:
        """A watching client sends nothing: a readable socket means it closed."""
        try:
            readable, _, _ = select.select([self.request], [], [], 0)
            if not readable:
                return False
            self.request.settimeout(0.1)
            try:
                return self.request.recv(1) == b""
            finally:
                self.request.settimeout(self.timeout)
        except (OSError, ValueError):
            return True


class Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 64

    def __init__(self, address: tuple[str, int], cluster: Cluster, tls: ssl.SSLContext
                 ) -> None:
        self.cluster = cluster
        self.tls = tls
        super().__init__(address, Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        exc = sys.exc_info()[1]
        if not isinstance(exc, ssl.SSLError | ConnectionError | TimeoutError | OSError):
            sa.log(NAME, f"error serving {client_address[0]}: {exc!r}")


def options(argv: list[str]) -> argparse.Namespace:
    p = sa.Parser(prog="kube-apiserver (lab stand-in)")
    p.add_argument("--manifest", help="read the flags from this static-pod manifest")
    p.add_argument("--advertise-address", default="")
    p.add_argument("--bind-address", default="0.0.0.0")
    p.add_argument("--secure-port", type=int, default=6443)
    p.add_argument("--service-cluster-ip-range", default="10.96.0.0/12")
    for flag in ("etcd-servers", "etcd-cafile", "etcd-certfile", "etcd-keyfile",
                 "tls-cert-file", "tls-private-key-file", "client-ca-file",
                 "k8sha-signing-key-file"):
        p.add_argument(f"--{flag}")
    p.add_argument("--k8sha-version", default="")
    p.add_argument("--k8sha-node-grace", type=float, default=40.0,
                   help="node-monitor-grace-period in seconds")
    p.add_argument("--k8sha-etcd-timeout", type=float, default=2.0)
    opts, _unknown = p.parse_known_args(argv)  # real apiserver flags we do not need are fine
    if opts.manifest:
        flags, image_version = sa.manifest_flags(opts.manifest)
        argv = [f"--{k}={v}" for k, v in flags.items()] + argv
        opts, _unknown = p.parse_known_args(argv)
        opts.k8sha_version = opts.k8sha_version or image_version
    missing = [f for f in ("etcd_servers", "etcd_cafile", "etcd_certfile", "etcd_keyfile",
                           "tls_cert_file", "tls_private_key_file", "client_ca_file")
               if not getattr(opts, f)]
    if missing:
        p.error("missing flags: " + ", ".join("--" + m.replace("_", "-") for m in missing))
    if not opts.k8sha_signing_key_file:
        opts.k8sha_signing_key_file = opts.client_ca_file.rsplit(".", 1)[0] + ".key"
    return opts


def _interrupt(*_: Any) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    opts = options(sys.argv[1:] if argv is None else argv)
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(str(sa.host_path(opts.tls_cert_file)),
                        str(sa.host_path(opts.tls_private_key_file)))
    tls.load_verify_locations(str(sa.host_path(opts.client_ca_file)))
    tls.verify_mode = ssl.CERT_OPTIONAL
    cluster = Cluster(opts)
    server = Server((opts.bind_address, opts.secure_port), cluster, tls)
    stop = threading.Event()
    threading.Thread(target=cluster.bootstrap, args=(stop,), daemon=True).start()
    signal.signal(signal.SIGTERM, _interrupt)
    sa.log(NAME, f"serving https://{opts.bind_address}:{opts.secure_port} (advertised "
                 f"{opts.advertise_address or socket.gethostname()}), etcd {opts.etcd_servers}, "
                 f"version v{cluster.version}")
    try:
        server.serve_forever(poll_interval=0.5)
    except KeyboardInterrupt:
        sa.log(NAME, "stopping")
    finally:
        stop.set()
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
