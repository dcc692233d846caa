"""Objects in etcd the way the real apiserver's etcd3 store keeps them.

Keys are the real apiserver's (`/registry/configmaps/<ns>/<name>`, `/registry/minions/<node>`,
...), values are the objects as JSON (the real apiserver's `--storage-media-type=application/json`
form) without `resourceVersion`: that is the key's etcd mod revision, set on every read, and
writes are etcd transactions guarded by it (409 Conflict when the object changed meanwhile).
Watches are etcd watches over the JSON gateway's `/v3/watch` stream.
"""

from __future__ import annotations

import http.client
import json
import socket
import urllib.parse
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import api_objects as ao
import k8sha_standin as sa
from api_resources import Resource

RETRIES = 5  # a patch or an unconditional update is retried on a concurrent write, as upstream


class Store:
    """CRUD over etcd for the served resources; `view` adjusts objects on the way out."""

    def __init__(self, etcd: sa.Etcd, view: Callable[[Resource, dict[str, Any]], dict[str, Any]]
                 ) -> None:
        self.etcd = etcd
        self.view = view

    def decorate(self, r: Resource, kv: sa.Kv, revision: int | None = None) -> dict[str, Any]:
        """The object as clients see it: kind, resourceVersion, uid (also for old writers)."""
        obj = dict(kv.value) if isinstance(kv.value, dict) else {}
        obj.setdefault("apiVersion", r.api_version)
        obj.setdefault("kind", r.kind)
        meta = obj["metadata"] = dict(obj.get("metadata") or {})
        meta["resourceVersion"] = str(revision or kv.mod_revision)
        # objects written straight to etcd by other stand-ins may lack a uid: a stable one
        meta.setdefault("uid", str(uuid.uuid5(uuid.NAMESPACE_URL,
                                              f"{kv.key}@{kv.create_revision}")))
        return self.view(r, obj)

    def get(self, r: Resource, namespace: str | None, name: str) -> tuple[dict[str, Any], sa.Kv]:
        _rev, kvs = self.etcd.range(r.key(namespace, name))
        if not kvs:
            raise ao.not_found(r, name)
        return self.decorate(r, kvs[0]), kvs[0]

    def list(self, r: Resource, namespace: str | None) -> tuple[int, list[dict[str, Any]]]:
        revision, kvs = self.etcd.range(r.collection_key(namespace), prefix=True)
        objects = [self.decorate(r, kv) for kv in kvs if kv.key.count("/") ==
                   r.collection_key(None).count("/") + (1 if r.namespaced else 0)]
        return revision, objects

    @staticmethod
    def stored(obj: dict[str, Any]) -> dict[str, Any]:
        """What goes into etcd: no resourceVersion (the mod revision is the truth)."""
        obj = dict(obj)
        obj["metadata"] = {k: v for k, v in (obj.get("metadata") or {}).items()
                           if k not in ("resourceVersion", "selfLink")}
        return obj

    def create(self, r: Resource, obj: dict[str, Any], dry_run: bool = False
               ) -> dict[str, Any]:
        meta = obj["metadata"]
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = sa.now_rfc3339()
        key = r.key(meta.get("namespace"), meta["name"])
        if dry_run:
            if self.etcd.range(key)[1]:
                raise ao.already_exists(r, meta["name"])
            return self.view(r, obj)
        ok, revision, _ = self.etcd.txn(key, 0, self.stored(obj))
        if not ok:
            raise ao.already_exists(r, meta["name"])
        meta["resourceVersion"] = str(revision)
        return self.view(r, obj)

    def write(self, r: Resource, namespace: str | None, name: str,
              change: Callable[[dict[str, Any] | None], dict[str, Any]], *,
              create_missing: bool = False, dry_run: bool = False) -> tuple[dict[str, Any], bool]:
        """Read, `change` (raises ApiError), validate, write guarded by the revision read.

        `change` gets the current object (None when absent and `create_missing`) and returns
        the new one; a concurrent write makes it run again (at most RETRIES times), unless the
        new object names a resourceVersion, which must then still be the current one.
        (object, created)
        """
        key = r.key(namespace, name)
        for _ in range(RETRIES):
            _rev, kvs = self.etcd.range(key)
            if not kvs and not create_missing:
                raise ao.not_found(r, name)
            current = self.decorate(r, kvs[0]) if kvs else None
            new = change(current)
            meta = new.setdefault("metadata", {})
            wanted = meta.get("resourceVersion")
            if current is not None and wanted and wanted != current["metadata"][
                    "resourceVersion"]:
                raise ao.conflict(r, name)
            if current is not None:
                for field in ("uid", "creationTimestamp"):
                    meta[field] = current["metadata"].get(field, meta.get(field))
            # objects from older writers may lack them: a real object always has both
            meta.setdefault("uid", str(uuid.uuid4()))
            if not meta.get("creationTimestamp"):
                meta["creationTimestamp"] = sa.now_rfc3339()
            ao.validate(r, new, current)
            if dry_run:
                return self.view(r, new), current is None
            ok, revision, _ = self.etcd.txn(key, kvs[0].mod_revision if kvs else 0,
                                            self.stored(new))
            if ok:
                meta["resourceVersion"] = str(revision)
                return self.view(r, new), current is None
            if wanted:
                raise ao.conflict(r, name)
        raise ao.conflict(r, name)

    def delete(self, r: Resource, namespace: str | None, name: str,
               precondition: str | None = None) -> dict[str, Any]:
        for _ in range(RETRIES):
            obj, kv = self.get(r, namespace, name)
            if precondition and precondition != obj["metadata"]["resourceVersion"]:
                raise ao.conflict(r, name)
            ok, _rev, _ = self.etcd.txn(kv.key, kv.mod_revision, delete=True)
            if ok:
                return obj
        raise ao.conflict(r, name)


class WatchClosed(Exception):
    """The etcd watch stream ended (etcd went away or the watch was closed)."""


class EtcdWatch:
    """One etcd watch over the JSON gateway, read line by line (`/v3/watch` streams JSON)."""

    def __init__(self, etcd: sa.Etcd, prefix: str, start_revision: int) -> None:
        self.conn: http.client.HTTPSConnection | None = None
        errors = []
        body = json.dumps({"create_request": {
            "key": sa._b64(prefix), "range_end": sa._range_end(prefix),
            "start_revision": str(start_revision), "prev_kv": True}})
        for endpoint in etcd.endpoints:
            url = urllib.parse.urlsplit(endpoint)
            conn = http.client.HTTPSConnection(url.hostname or "", url.port or 2379,
                                               context=etcd.ctx, timeout=etcd.timeout)
            try:
                conn.request("POST", "/v3/watch", body=body,
                             headers={"Content-Type": "application/json"})
                self.resp = conn.getresponse()
                if self.resp.status != 200:
                    raise OSError(f"HTTP {self.resp.status}")
                conn.sock.settimeout(None)  # events may be minutes apart
                self.conn = conn
                break
            except OSError as exc:
                errors.append(f"{endpoint}: {exc}")
                conn.close()
        if self.conn is None:
            raise sa.EtcdError("; ".join(errors) or "no etcd endpoints")

    def messages(self) -> Iterator[dict[str, Any]]:
        """The stream's `result` messages until it ends."""
        try:
            while True:
                line = self.resp.readline()
                if not line:
                    raise WatchClosed("the etcd watch stream ended")
                if line.strip():
                    msg = json.loads(line)
                    if "error" in msg:
                        raise WatchClosed(str(msg["error"].get("message", msg["error"])))
                    yield msg.get("result", {})
        except (OSError, ValueError, AttributeError, http.client.HTTPException) as exc:
            raise WatchClosed(str(exc)) from None
        finally:
            self.conn.close()  # the reading thread closes; close() only cuts the socket

    def close(self) -> None:
        """Ends the stream; a thread blocked in `messages()` sees WatchClosed."""
        sock = self.conn.sock if self.conn is not None else None
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def watch_events(store: Store, r: Resource, namespace: str | None, since: int,
                 keep: Callable[[dict[str, Any]], bool], watch: EtcdWatch
                 ) -> Iterator[dict[str, Any]]:
    """Kubernetes watch events (ADDED/MODIFIED/DELETED) after revision `since`."""
    depth = r.collection_key(None).count("/") + (1 if r.namespaced else 0)
    for result in watch.messages():
        if result.get("canceled") or int(result.get("compact_revision", 0) or 0):
            yield {"type": "ERROR", "object": ao.status_object(
                410, "Expired", f"too old resource version: {since} "
                                f"({result.get('compact_revision', '?')})")}
            return
        for event in result.get("events", []):
            kv = sa.Kv.of(event["kv"])
            if kv.key.count("/") != depth:
                continue
            if event.get("type") == "DELETE":
                if not event.get("prev_kv"):
                    continue
                prev = sa.Kv.of(event["prev_kv"])
                obj = store.decorate(r, prev, revision=kv.mod_revision)
                kind = "DELETED"
            else:
                obj = store.decorate(r, kv)
                kind = "ADDED" if kv.create_revision == kv.mod_revision else "MODIFIED"
            if keep(obj):
                yield {"type": kind, "object": obj}


def bookmark(r: Resource, revision: int) -> dict[str, Any]:
    return {"type": "BOOKMARK", "object": {"kind": r.kind, "apiVersion": r.api_version,
                                           "metadata": {"resourceVersion": str(revision)}}}
