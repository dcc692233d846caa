"""HTTP clients and parsers shared by every check, wait and probe: one place, bottom layer.

Everything that speaks to a component's HTTP API from this machine builds its client here:
etcd over mTLS with the health-check client certificate, the apiservers with the admin client
certificate, HAProxy's stats page in the clear. httpx 0.28 drops the client certificate when
`verify=<path>` and `cert=` are combined, so the CA and client certificate always travel in one
`ssl.SSLContext` passed as `verify` (DESIGN.md 4).

The parsers turn a component's own output into plain data; the tasks that call them decide what
is healthy.
"""

from __future__ import annotations

import csv
import io
import json
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from nornir_k8sha import constants as C
from nornir_k8sha.pki import ClusterPKI
from nornir_k8sha.topology import ClusterSpec

#: Seconds any one HTTP request of a check or wait may take.
HTTP_TIMEOUT = C.CHECK_TIMEOUT_S
#: Seconds to open a TCP connection in a check.
CONNECT_TIMEOUT = C.CHECK_TIMEOUT_S


def tls_context(ca: Path, cert: Path | None = None, key: Path | None = None) -> ssl.SSLContext:
    """An SSL context trusting `ca`, presenting `cert`/`key` when given."""
    ctx = ssl.create_default_context(cafile=str(ca))
    if cert and key:
        ctx.load_cert_chain(str(cert), str(key))
    return ctx


#: Requests sent once more after the server closed a reused connection without answering.
REPLAYABLE_METHODS = frozenset({"GET", "HEAD"})
#: What httpcore raises when the server closed the connection before sending any response
#: (Go's net/http: errServerClosedIdle / transportReadFromServerError).
NO_RESPONSE = "without sending a response"
#: A request extension: called with the first attempt's error when `ReplayOnDisconnect` sends
#: the request again (the runbooks' load probe counts the reads it sent twice).
ON_REPLAY = "k8sha.on_replay"


class ConnectionTrace:
    """httpx's `trace` extension for one attempt: did it open a new connection (else it went
    on a reused one), and did the response's headers arrive (then nothing is replayed)?
    `then`: a trace callback of the caller's, still called with every event."""

    def __init__(self, then: Callable[[str, dict[str, Any]], None] | None = None) -> None:
        self.connected = False
        self.answered = False
        self.then = then

    def __call__(self, event: str, info: dict[str, Any]) -> None:
        if event.startswith("connection.connect_tcp."):
            self.connected = True
        elif event == "http11.receive_response_headers.complete":
            self.answered = True
        if self.then is not None:
            self.then(event, info)

    def closed_before_answer(self, exc: Exception) -> bool:
        """True when Go's Transport would send the request again: a reused connection the
        server closed (EOF, reset) before any answer."""
        if self.connected or self.answered:
            return False
        if isinstance(exc, httpx.RemoteProtocolError):
            return NO_RESPONSE in str(exc)
        return isinstance(exc, httpx.ReadError | httpx.WriteError)


class ReplayOnDisconnect(httpx.BaseTransport):
    """A GET or HEAD on a reused connection that the server closed before any answer is sent
    once more, on a new connection: what Go's net/http Transport does (transport.go
    `shouldRetryRequest`), so what kubectl and every controller do. An apiserver restarting,
    or a proxy dropping its side, between two requests of one client is never shown to a
    kubectl user; a check that showed it would fail where the cluster serves. Nothing else is
    replayed: not a write, not a fresh connection's failure, not a timeout, not an answer cut
    off after it began. A request whose extensions carry `ON_REPLAY` hears of each replay.
    """

    def __init__(self, inner: httpx.BaseTransport) -> None:
        self.inner = inner

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if request.method not in REPLAYABLE_METHODS:
            return self.inner.handle_request(request)
        trace = ConnectionTrace(request.extensions.get("trace"))
        request.extensions["trace"] = trace
        try:
            return self.inner.handle_request(request)
        except (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError) as exc:
            if not trace.closed_before_answer(exc):
                raise
            on_replay = request.extensions.get(ON_REPLAY)
            if on_replay is not None:
                on_replay(exc)
        return self.inner.handle_request(request)

    def close(self) -> None:
        self.inner.close()


def _client(transport: httpx.BaseTransport) -> httpx.Client:
    """Every client of this module: its transport explicit, so proxies from the environment are
    never used (every request goes straight to the cluster's own addresses), and replaying as
    kubectl does (`ReplayOnDisconnect`)."""
    return httpx.Client(transport=ReplayOnDisconnect(transport), timeout=HTTP_TIMEOUT)


def _tls_client(ca: Path, cert: Path | None, key: Path | None,
                transport: httpx.BaseTransport | None) -> httpx.Client:
    """`transport` is the test seam (httpx.MockTransport): then no TLS material is read."""
    return _client(transport or httpx.HTTPTransport(verify=tls_context(ca, cert, key)))


def etcd_http_client(spec: ClusterSpec, state_dir: Path,
                     transport: httpx.BaseTransport | None = None) -> httpx.Client:
    """httpx client for etcd's HTTP API with the health-check client certificate (mTLS)."""
    pki = ClusterPKI(spec, state_dir)
    client = pki.healthcheck_client
    return _tls_client(pki.etcd_ca.cert, client.cert, client.key, transport)


def api_client(spec: ClusterSpec, state_dir: Path,
               transport: httpx.BaseTransport | None = None) -> httpx.Client:
    """httpx client for the apiservers: the cluster CA, the admin client certificate."""
    pki = ClusterPKI(spec, state_dir)
    admin = pki.admin_client
    return _tls_client(pki.kubernetes_ca.cert, admin.cert, admin.key, transport)


def registry_client(spec: ClusterSpec, state_dir: Path,
                    transport: httpx.BaseTransport | None = None) -> httpx.Client:
    """httpx client for the registry's v2 API, trusting the cluster's registry CA."""
    pki = ClusterPKI(spec, state_dir)
    return _tls_client(pki.registry_ca.cert, None, None, transport)


def plain_client(transport: httpx.BaseTransport | None = None) -> httpx.Client:
    """httpx client for plain-HTTP pages (HAProxy's stats). It trusts no CA at all: it never
    speaks TLS, and httpx's default context parses certifi's ~140 CAs, ~20 ms of CPU for every
    client (two per `check`, one per HAProxy node)."""
    return _client(transport or httpx.HTTPTransport(
        verify=ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)))


def error_text(exc: BaseException) -> str:
    """One short line for an exception, for a check's message."""
    text = str(exc) or type(exc).__name__
    return text.splitlines()[0][:200]


# --- parsers -----------------------------------------------------------------------------------


def etcd_reports_healthy(health: dict[str, Any]) -> bool:
    """etcd's `/health` body says healthy (`{"health": "true"}`; 3.4 sends a string)."""
    return str(health.get("health")) == "true"


def parse_haproxy_csv(text: str, backend: str = "apiserver") -> dict[str, str]:
    """server name → status (UP/DOWN/...) of one backend, from HAProxy's `stats;csv`."""
    rows = csv.DictReader(io.StringIO(text.lstrip("# ")))
    return {
        r["svname"]: r["status"]
        for r in rows
        if r.get("pxname") == backend and r.get("svname") not in ("FRONTEND", "BACKEND")
    }


def parse_bgp_summary(text: str) -> dict[str, dict[str, Any]]:
    """peer address → {state, pfxSnt, pfxRcd} from FRR's `show bgp ipv4 unicast summary json`."""
    data = json.loads(text or "{}")
    peers = data.get("peers") or data.get("ipv4Unicast", {}).get("peers") or {}
    return {addr: {"state": p.get("state", "?"), "pfxSnt": p.get("pfxSnt", 0),
                   "pfxRcd": p.get("pfxRcd", 0)} for addr, p in peers.items()}


def parse_ipvs_routes(text: str) -> list[str]:
    """Real servers of DR ("Route") entries in `ipvsadm -Ln` output."""
    return [ln.split()[1] for ln in text.splitlines() if "Route" in ln and "->" in ln]


def node_readiness(items: list[dict[str, Any]]) -> dict[str, bool]:
    """node name → Ready, from a NodeList's items."""
    ready = {}
    for node in items:
        conds = {c.get("type"): c.get("status") for c in node.get("status", {}).get(
            "conditions", [])}
        ready[node.get("metadata", {}).get("name")] = conds.get("Ready") == "True"
    return ready
