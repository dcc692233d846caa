"""Shared helpers of the lab stand-ins (pure stdlib: the lab rootfs has python3 and nothing else).

Installed as /usr/lib/k8sha-standins/k8sha_standin.py beside the programs that import it. Holds:
the "[lab stand-in]" log prefix, the file-system root override for tests, a YAML subset reader and
writer (kubeadm configs, kubeconfigs, static-pod manifests), the etcd v3 gRPC-gateway client (the
real etcd, through the external-etcd client certificate), openssl-CLI certificate signing (stdlib
cannot sign X.509), kubeconfig files, bootstrap-token JWS and TLS contexts.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import http.client
import json
import os
import re
import secrets
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import urllib.error
import urllib.request
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn

PREFIX = "[lab stand-in]"
HEADER = "X-K8sha-Lab-Standin"
DEFAULT_VERSION = "1.31.4"
VERSION_FILE = "/etc/k8sha-standins/version"
ROOT_ENV = "K8SHA_STANDIN_ROOT"
TOKEN_RE = re.compile(r"^([a-z0-9]{6})\.([a-z0-9]{16})$")
TOKEN_PREFIX = "/registry/secrets/kube-system/bootstrap-token-"
CERTS_KEY = "/registry/secrets/kube-system/kubeadm-certs"
KUBEADM_CONFIG_KEY = "/registry/configmaps/kube-system/kubeadm-config"
CLUSTER_INFO_KEY = "/registry/configmaps/kube-public/cluster-info"
NODES_PREFIX = "/registry/minions/"
LEASES_PREFIX = "/registry/leases/kube-system/"


# --- output and paths ---------------------------------------------------------------------------


def say(text: str = "", stream: Any = None) -> None:
    """Print each line with the stand-in prefix (journal lines and terminal output alike)."""
    out = stream or sys.stdout
    for line in (text.splitlines() or [""]):
        out.write(f"{PREFIX} {line}".rstrip() + "\n")
    out.flush()


def _excepthook(kind: type[BaseException], value: BaseException, tb: Any) -> None:
    """Uncaught errors reach the journal with the prefix on every line too."""
    say("".join(traceback.format_exception(kind, value, tb)).rstrip(), sys.stderr)


sys.excepthook = _excepthook
# ... and those of threads (the apiserver's watch pumps, its bootstrap thread)
threading.excepthook = lambda args: _excepthook(args.exc_type, args.exc_value,  # type: ignore
                                                args.exc_traceback)


class Parser(argparse.ArgumentParser):
    """argparse whose usage errors carry the stand-in prefix; no abbreviated flags."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        say(f"{self.prog}: error: {message}", sys.stderr)
        sys.exit(2)


def log(component: str, message: str) -> None:
    say(f"{component}: {message}")


def root() -> Path:
    return Path(os.environ.get(ROOT_ENV) or "/")


def host_path(path: str | Path) -> Path:
    """An absolute host path, moved under $K8SHA_STANDIN_ROOT when that is set (tests)."""
    p = Path(path)
    r = root()
    if r == Path("/") or not p.is_absolute() or p.is_relative_to(r):
        return p
    return r / p.relative_to("/")


def write_file(path: str | Path, data: str | bytes, mode: int = 0o644) -> Path:
    """Atomic write (temp + rename) with the mode set before the content lands."""
    target = host_path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data.encode() if isinstance(data, str) else data)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def version() -> str:
    """The Kubernetes version these stand-ins pretend to be (no leading v)."""
    try:
        return host_path(VERSION_FILE).read_text().strip().lstrip("v") or DEFAULT_VERSION
    except OSError:
        return DEFAULT_VERSION


def now_rfc3339() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def rfc3339_micro() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_time(text: str) -> float:
    """Seconds since the epoch of an RFC 3339 UTC time as written above."""
    fmt = "%Y-%m-%dT%H:%M:%S.%fZ" if "." in text else "%Y-%m-%dT%H:%M:%SZ"
    return datetime.strptime(text, fmt).replace(tzinfo=UTC).timestamp()


# --- a YAML subset: block mappings and sequences, plain/quoted scalars, flow [] {} -------------


class YamlError(ValueError):
    pass


def _strip_comment(line: str) -> str:
    quote = ""
    for i, ch in enumerate(line):
        if quote:
            if ch == quote:
                quote = ""
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1] in " \t"):
            return line[:i].rstrip()
    return line.rstrip()


def _scalar(text: str) -> Any:
    text = text.strip()
    if text == "" or text in ("~", "null", "Null", "NULL"):
        return None
    if text[0] == '"':
        return json.loads(text)
    if text[0] == "'":
        return text[1:-1].replace("''", "'")
    if text[0] == "[" and text[-1] == "]":
        inner = text[1:-1].strip()
        return [_scalar(p) for p in _split_flow(inner)] if inner else []
    if text[0] == "{" and text[-1] == "}":
        inner = text[1:-1].strip()
        out = {}
        for part in _split_flow(inner) if inner else []:
            k, _, v = part.partition(":")
            out[str(_scalar(k))] = _scalar(v)
        return out
    if text in ("true", "True", "TRUE"):
        return True
    if text in ("false", "False", "FALSE"):
        return False
    if re.fullmatch(r"[-+]?\d+", text):
        return int(text)
    if re.fullmatch(r"[-+]?(\d+\.\d*|\.\d+)([eE][-+]?\d+)?", text):
        return float(text)
    return text


def _split_flow(text: str) -> list[str]:
    parts, depth, quote, cur = [], 0, "", ""
    for ch in text:
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
            continue
        cur += ch
    if cur.strip():
        parts.append(cur)
    return parts


_KEY = re.compile(r"^((?:\"[^\"]*\"|'[^']*'|[^:#'\"][^:]*?)):(?:\s+(.*))?$")


def _parse(lines: list[tuple[int, str]], i: int, indent: int) -> tuple[Any, int]:
    """The node starting at lines[i] with exactly `indent` spaces."""
    if lines[i][1].startswith("- ") or lines[i][1] == "-":
        items: list[Any] = []
        while i < len(lines) and lines[i][0] == indent and (
                lines[i][1].startswith("- ") or lines[i][1] == "-"):
            rest = lines[i][1][1:].lstrip()
            if not rest:
                value, i = _parse(lines, i + 1, lines[i + 1][0])
                items.append(value)
                continue
            # "- key: v" opens a mapping whose keys sit at indent + 2
            sub_indent = indent + (len(lines[i][1]) - len(rest))
            if _KEY.match(rest) and not rest.startswith(("[", "{", '"', "'")):
                lines[i] = (sub_indent, rest)
                value, i = _parse(lines, i, sub_indent)
            else:
                value, i = _scalar(rest), i + 1
            items.append(value)
        return items, i
    mapping: dict[str, Any] = {}
    while i < len(lines) and lines[i][0] == indent:
        m = _KEY.match(lines[i][1])
        if not m:
            raise YamlError(f"cannot read line: {lines[i][1]!r}")
        key, rest = str(_scalar(m.group(1))), (m.group(2) or "").strip()
        i += 1
        if rest in ("|", ">", "|-", ">-"):
            raise YamlError("block scalars are not supported by the stand-in reader")
        if rest:
            mapping[key] = _scalar(rest)
        elif i < len(lines) and (lines[i][0] > indent or (
                lines[i][0] == indent and lines[i][1].startswith("-"))):
            mapping[key], i = _parse(lines, i, lines[i][0])
        else:
            mapping[key] = None
    return mapping, i


def yaml_load_all(text: str) -> list[Any]:
    """Every document of a YAML stream (the subset kubeadm configs and kubeconfigs use)."""
    docs: list[Any] = []
    current: list[tuple[int, str]] = []
    for raw in text.splitlines() + ["---"]:
        if raw.strip() in ("---", "..."):
            if current:
                value, end = _parse(current, 0, current[0][0])
                if end != len(current):
                    raise YamlError(f"unexpected indentation at: {current[end][1]!r}")
                docs.append(value)
            current = []
            continue
        line = _strip_comment(raw)
        if line.strip():
            current.append((len(line) - len(line.lstrip(" ")), line.strip()))
    return docs


def yaml_load(text: str) -> Any:
    docs = yaml_load_all(text)
    return docs[0] if docs else None


_PLAIN = re.compile(r"^[A-Za-z0-9_/.][A-Za-z0-9_ ./:=+@-]*$")


def _dump_scalar(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    text = str(value)
    if _PLAIN.match(text) and not text.endswith(" ") and ": " not in text and not isinstance(
            _scalar(text), bool | int | float | type(None)):
        return text
    return json.dumps(text)


def yaml_dump(value: Any, indent: int = 0) -> str:
    """Block YAML of dicts, lists and scalars (strings quoted only when they must be)."""
    pad = " " * indent
    if isinstance(value, dict):
        if not value:
            return pad + "{}\n"
        out = ""
        for k, v in value.items():
            if isinstance(v, dict | list) and v:
                child = indent if isinstance(v, list) else indent + 2
                out += f"{pad}{k}:\n{yaml_dump(v, child)}"
            elif isinstance(v, dict | list):
                out += f"{pad}{k}: {'{}' if isinstance(v, dict) else '[]'}\n"
            else:
                out += f"{pad}{k}: {_dump_scalar(v)}\n"
        return out
    if isinstance(value, list):
        if not value:
            return pad + "[]\n"
        out = ""
        for item in value:
            if isinstance(item, dict | list) and item:
                body = yaml_dump(item, indent + 2)
                out += f"{pad}- {body[indent + 2:]}"
            else:
                out += f"{pad}- {_dump_scalar(item)}\n"
        return out
    return pad + _dump_scalar(value) + "\n"


# --- the etcd v3 gRPC gateway (JSON over HTTPS, keys and values base64) ------------------------


class EtcdError(RuntimeError):
    """etcd unreachable or refused; the message never carries key material."""


def _b64(data: str | bytes) -> str:
    return base64.b64encode(data.encode() if isinstance(data, str) else data).decode()


def _range_end(prefix: str) -> str:
    raw = bytearray(prefix.encode())
    raw[-1] += 1
    return _b64(bytes(raw))


class Etcd:
    """A tiny client of etcd's JSON gateway (`/v3/...`); tries the endpoints in turn."""

    def __init__(self, endpoints: list[str], ca: str, cert: str, key: str,
                 timeout: float = 3.0) -> None:
        self.endpoints = [e.rstrip("/") for e in endpoints]
        self.timeout = timeout
        self.ctx = ssl.create_default_context(cafile=str(host_path(ca)))
        self.ctx.load_cert_chain(str(host_path(cert)), str(host_path(key)))

    def call(self, path: str, body: dict[str, Any], timeout: float | None = None
             ) -> dict[str, Any]:
        """POST to the first endpoint that answers, within `timeout` seconds in all.

        The endpoint that answered last is tried first next time: a dead member costs its
        timeout once, not on every request. An endpoint that did not answer at all (refused,
        timed out) goes to the back: a member that is alive but silent (partitioned from its
        peers, its reads waiting for a quorum) would otherwise keep every request of this
        client waiting on it until the partition heals, where the real apiserver's etcd client
        spreads its requests over the members (runbooks/verify-ha.yaml's partition case).
        """
        errors = []
        deadline = time.monotonic() + (timeout or self.timeout)
        for endpoint in list(self.endpoints):
            remaining = deadline - time.monotonic()
            if remaining <= 0.05:
                errors.append(f"{endpoint}: not tried (time is up)")
                continue
            req = urllib.request.Request(endpoint + path, data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(req, timeout=remaining, context=self.ctx) as resp:
                    text = resp.read().decode()
                self._prefer(endpoint)
                # keepalive streams one JSON object per message; the first is enough
                return json.loads(text.splitlines()[0]) if text.strip() else {}
            except urllib.error.HTTPError as exc:
                try:
                    detail = json.loads(exc.read().decode()).get("error", str(exc))
                except ValueError:
                    detail = str(exc)
                if exc.code < 500:
                    raise EtcdError(f"{endpoint}: {detail}") from None
                errors.append(f"{endpoint}: {detail}")
            except http.client.HTTPException as exc:
                # an answer cut off (IncompleteRead) or garbled (BadStatusLine) by a member
                # stopping mid-request: like a refused one, the next member is asked, instead
                # of the error leaving the apiserver's request handler
                errors.append(f"{endpoint}: {exc!r}")
                self._demote(endpoint)
            except (OSError, ValueError) as exc:
                reason = getattr(exc, "reason", exc)
                errors.append(f"{endpoint}: {reason}")
                if isinstance(exc, OSError):
                    self._demote(endpoint)
        raise EtcdError("; ".join(errors) or "no etcd endpoints")

    def _prefer(self, endpoint: str) -> None:
        if self.endpoints[0] != endpoint:
            self.endpoints = [endpoint] + [e for e in self.endpoints if e != endpoint]

    def _demote(self, endpoint: str) -> None:
        if endpoint in self.endpoints and self.endpoints[-1] != endpoint:
            self.endpoints = [e for e in self.endpoints if e != endpoint] + [endpoint]

    def get(self, key: str, timeout: float | None = None) -> dict[str, Any] | None:
        """The JSON value at `key` (None when absent). Linearizable: needs quorum."""
        kvs = self.call("/v3/kv/range", {"key": _b64(key)}, timeout).get("kvs", [])
        return json.loads(base64.b64decode(kvs[0].get("value", ""))) if kvs else None

    def prefix(self, prefix: str) -> dict[str, dict[str, Any]]:
        resp = self.call("/v3/kv/range", {"key": _b64(prefix), "range_end": _range_end(prefix)})
        return {base64.b64decode(kv["key"]).decode(): json.loads(base64.b64decode(kv["value"]))
                for kv in resp.get("kvs", [])}

    def put(self, key: str, value: Any, lease: int = 0) -> None:
        body: dict[str, Any] = {"key": _b64(key), "value": _b64(json.dumps(value))}
        if lease:
            body["lease"] = str(lease)
        self.call("/v3/kv/put", body)

    def delete(self, key: str) -> int:
        return int(self.call("/v3/kv/deleterange", {"key": _b64(key)}).get("deleted", 0))

    def grant(self, ttl: int) -> int:
        return int(self.call("/v3/lease/grant", {"TTL": str(ttl)})["ID"])

    def range(self, key: str, *, prefix: bool = False, timeout: float | None = None
              ) -> tuple[int, list[Kv]]:
        """(store revision, key-values with their revisions) of a key or a prefix."""
        body = {"key": _b64(key)}
        if prefix:
            body["range_end"] = _range_end(key)
        resp = self.call("/v3/kv/range", body, timeout)
        return (int(resp.get("header", {}).get("revision", 0)),
                [Kv.of(kv) for kv in resp.get("kvs", [])])

    def txn(self, key: str, mod_revision: int, value: Any = None, *, delete: bool = False
            ) -> tuple[bool, int, Kv | None]:
        """Put `value` (or delete) only if the key's mod revision is `mod_revision` (0: absent).

        (succeeded, revision after the write, the current key-value when it failed): the
        optimistic concurrency of the real apiserver's etcd3 store.
        """
        op: dict[str, Any] = ({"request_delete_range": {"key": _b64(key)}} if delete else
                              {"request_put": {"key": _b64(key),
                                               "value": _b64(json.dumps(value))}})
        resp = self.call("/v3/kv/txn", {
            "compare": [{"target": "MOD", "key": _b64(key), "result": "EQUAL",
                         "mod_revision": str(mod_revision)}],
            "success": [op], "failure": [{"request_range": {"key": _b64(key)}}]})
        revision = int(resp.get("header", {}).get("revision", 0))
        if resp.get("succeeded"):
            return True, revision, None
        kvs = (resp.get("responses") or [{}])[0].get("response_range", {}).get("kvs", [])
        return False, revision, Kv.of(kvs[0]) if kvs else None


class Kv:
    """One etcd key-value with its revisions (the value decoded from JSON)."""

    __slots__ = ("key", "value", "mod_revision", "create_revision")

    def __init__(self, key: str, value: Any, mod_revision: int, create_revision: int) -> None:
        self.key, self.value = key, value
        self.mod_revision, self.create_revision = mod_revision, create_revision

    @classmethod
    def of(cls, kv: dict[str, Any]) -> Kv:
        """From the gateway's JSON (base64 key/value, revisions as strings)."""
        raw = base64.b64decode(kv.get("value", ""))
        return cls(base64.b64decode(kv["key"]).decode(), json.loads(raw) if raw else None,
                   int(kv.get("mod_revision", 0)), int(kv.get("create_revision", 0)))


def object_metadata(name: str, namespace: str | None = None, **extra: Any) -> dict[str, Any]:
    """metadata of a new object as the apiserver stores it: uid and creationTimestamp."""
    meta: dict[str, Any] = {"name": name}
    if namespace:
        meta["namespace"] = namespace
    return {**meta, "uid": str(uuid.uuid4()), "creationTimestamp": now_rfc3339(), **extra}


def etcd_from_flags(flags: dict[str, str], timeout: float = 3.0) -> Etcd:
    """An Etcd from kube-apiserver style flags (--etcd-servers, --etcd-cafile, ...)."""
    return Etcd(flags["etcd-servers"].split(","), flags["etcd-cafile"], flags["etcd-certfile"],
                flags["etcd-keyfile"], timeout)


# --- static-pod manifests: the stand-in daemons read their flags from them ----------------------


def manifest_flags(path: str | Path) -> tuple[dict[str, str], str]:
    """The `--name=value` flags of a static-pod manifest's command, and its image tag."""
    pod = yaml_load(host_path(path).read_text())
    container = pod["spec"]["containers"][0]
    flags = {}
    for arg in container.get("command", [])[1:]:
        name, _, value = str(arg).lstrip("-").partition("=")
        flags[name] = value
    return flags, str(container.get("image", "")).rpartition(":")[2].lstrip("v")


# --- certificates via the openssl CLI -----------------------------------------------------------


def openssl(*args: str, data: bytes | None = None) -> bytes:
    proc = subprocess.run(["openssl", *args], input=data, capture_output=True)
    if proc.returncode != 0:
        raise RuntimeError(f"openssl {args[0]} failed: {proc.stderr.decode().strip()[-300:]}")
    return proc.stdout


def new_key(path: str | Path) -> Path:
    """An ECDSA P-256 key (SEC1 PEM, like the project's PKI), mode 0600."""
    return write_file(path, openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout"), 0o600)


def make_csr(key: str | Path, subject: str) -> bytes:
    return openssl("req", "-new", "-key", str(host_path(key)), "-subj", subject)


def sign_csr(csr_pem: bytes, ca_cert: str | Path, ca_key: str | Path, *, server: bool = False,
             sans: list[str] | None = None, days: int = 365) -> bytes:
    """Sign a CSR with the cluster CA; the serial is random, nothing is left on disk."""
    ext = ["basicConstraints=critical,CA:FALSE",
           "keyUsage=critical,digitalSignature,keyEncipherment",
           f"extendedKeyUsage={'serverAuth' if server else 'clientAuth'}"]
    if sans:
        ext.append("subjectAltName=" + ",".join(sans))
    with tempfile.TemporaryDirectory(prefix="k8sha-standin-") as tmp:
        (Path(tmp) / "csr.pem").write_bytes(csr_pem)
        (Path(tmp) / "ext.cnf").write_text("\n".join(ext) + "\n")
        return openssl("x509", "-req", "-in", f"{tmp}/csr.pem", "-CA", str(host_path(ca_cert)),
                       "-CAkey", str(host_path(ca_key)), "-set_serial",
                       "0x" + secrets.token_hex(16), "-days", str(days), "-sha256",
                       "-extfile", f"{tmp}/ext.cnf")


def csr_subject(csr_pem: bytes) -> dict[str, str]:
    """CN and O of a CSR (RFC 2253 subject)."""
    text = openssl("req", "-noout", "-subject", "-nameopt", "RFC2253", data=csr_pem).decode()
    parts = dict(p.split("=", 1) for p in text.strip().removeprefix("subject=").split(",") if "="
                 in p)
    return {"CN": parts.get("CN", ""), "O": parts.get("O", "")}


def ca_cert_hash(ca_pem: bytes) -> str:
    """`sha256:<hex>` of the CA's SubjectPublicKeyInfo: kubeadm's discovery pin."""
    pub = openssl("x509", "-noout", "-pubkey", data=ca_pem).decode()
    der = base64.b64decode("".join(ln for ln in pub.splitlines() if "-----" not in ln))
    return "sha256:" + hashlib.sha256(der).hexdigest()


def self_signed_ca(cert: str | Path, key: str | Path, cn: str = "kubernetes") -> None:
    new_key(key)
    pem = openssl("req", "-x509", "-new", "-key", str(host_path(key)), "-subj", f"/CN={cn}",
                  "-days", "3650", "-sha256", "-addext", "basicConstraints=critical,CA:TRUE",
                  "-addext", "keyUsage=critical,digitalSignature,keyCertSign,cRLSign")
    write_file(cert, pem)


# --- kubeconfig files ---------------------------------------------------------------------------


def kubeconfig(server: str, ca_pem: bytes, user: str, *, cert_data: bytes | None = None,
               key_data: bytes | None = None, cert_file: str | None = None,
               cluster: str = "kubernetes") -> str:
    """A kubeconfig like kubeadm writes (inline data or file references for the client)."""
    creds: dict[str, Any] = {}
    if cert_data is not None and key_data is not None:
        creds = {"client-certificate-data": _b64(cert_data), "client-key-data": _b64(key_data)}
    elif cert_file:
        creds = {"client-certificate": cert_file, "client-key": cert_file}
    context = f"{user}@{cluster}"
    return yaml_dump({
        "apiVersion": "v1",
        "clusters": [{"cluster": {"certificate-authority-data": _b64(ca_pem), "server": server},
                      "name": cluster}],
        "contexts": [{"context": {"cluster": cluster, "user": user}, "name": context}],
        "current-context": context,
        "kind": "Config",
        "preferences": {},
        "users": [{"name": user, "user": creds}],
    })


class KubeClient:
    """HTTPS to an apiserver as a kubeconfig's user (client cert), or with a bearer token."""

    def __init__(self, server: str, ca_pem: bytes | None, *, cert: str | None = None,
                 key: str | None = None, token: str | None = None, timeout: float = 5.0) -> None:
        self.server = server.rstrip("/")
        self.token = token
        self.timeout = timeout
        if ca_pem is None:  # discovery before the CA is known: the pin is checked afterwards
            self.ctx = ssl._create_unverified_context()  # noqa: S323
        else:
            self.ctx = ssl.create_default_context(cadata=ca_pem.decode())
        if cert:
            self.ctx.load_cert_chain(str(host_path(cert)), str(host_path(key or cert)))

    def request(self, method: str, path: str, body: Any = None,
                content_type: str = "application/json") -> tuple[int, Any]:
        headers = {"Accept": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = content_type
        req = urllib.request.Request(self.server + path, data=data, method=method,
                                     headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout, context=self.ctx) as resp:
                raw, code = resp.read(), resp.status
        except urllib.error.HTTPError as exc:
            raw, code = exc.read(), exc.code
        try:
            return code, json.loads(raw)
        except ValueError:
            return code, raw.decode(errors="replace")


def load_kubeconfig(path: str | Path) -> tuple[str, bytes, str | None, str | None]:
    """(server, CA PEM, client cert file, client key file) of a kubeconfig's current context.

    Inline client data is written to a private temp file so ssl can load it.
    """
    cfg = yaml_load(host_path(path).read_text())
    cluster = cfg["clusters"][0]["cluster"]
    user = cfg["users"][0]["user"]
    ca = base64.b64decode(cluster["certificate-authority-data"])
    cert, key = user.get("client-certificate"), user.get("client-key")
    if "client-certificate-data" in user:
        tmp_dir = host_path("/run/k8sha-standins")
        tmp_dir.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix="k8sha-standin-client-", dir=tmp_dir)
        with os.fdopen(fd, "wb") as fh:
            fh.write(base64.b64decode(user["client-certificate-data"]) + b"\n"
                     + base64.b64decode(user["client-key-data"]))
        cert = key = tmp
    return cluster["server"], ca, cert, key


# --- bootstrap tokens ---------------------------------------------------------------------------


def new_token() -> str:
    alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"
    pick = "".join(secrets.choice(alphabet) for _ in range(22))
    return f"{pick[:6]}.{pick[6:]}"


def token_secret(token_id: str, secret: str, ttl: int, description: str) -> dict[str, Any]:
    """A bootstrap-token Secret as kubeadm creates it (kube-system/bootstrap-token-<id>)."""
    expires = datetime.fromtimestamp(time.time() + ttl, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {"apiVersion": "v1", "kind": "Secret", "type": "bootstrap.kubernetes.io/token",
            "metadata": object_metadata(f"bootstrap-token-{token_id}", "kube-system"),
            "stringData": {"token-id": token_id, "token-secret": secret, "expiration": expires,
                           "description": description,
                           "usage-bootstrap-authentication": "true",
                           "usage-bootstrap-signing": "true",
                           "auth-extra-groups": "system:bootstrappers:kubeadm:default-node-token"}}


def token_valid(etcd: Etcd, token: str) -> bool:
    """The token exists in etcd, matches, and has not expired."""
    m = TOKEN_RE.match(token or "")
    if not m:
        return False
    secret = etcd.get(TOKEN_PREFIX + m.group(1))
    if not secret:
        return False
    data = secret.get("stringData", {})
    return (hmac.compare_digest(data.get("token-secret", ""), m.group(2))
            and parse_time(data.get("expiration", "1970-01-01T00:00:00Z")) > time.time())


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def jws_detached(content: str, token_id: str, secret: str) -> str:
    """HS256 detached JWS of `content` keyed by the token secret (bootstrap signer style)."""
    header = _b64url(json.dumps({"alg": "HS256", "kid": token_id}, separators=(",", ":"))
                     .encode())
    payload = _b64url(content.encode())
    sig = hmac.new(secret.encode(), f"{header}.{payload}".encode(), hashlib.sha256).digest()
    return f"{header}..{_b64url(sig)}"


def certificate_key_check(key: str) -> str:
    """What etcd keeps of an uploaded certificate key: a MAC, never the key itself."""
    return hmac.new(bytes.fromhex(key), b"kubeadm-certs", hashlib.sha256).hexdigest()
