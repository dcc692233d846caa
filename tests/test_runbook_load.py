"""LoadProbe against a small Kubernetes-like HTTPS server on 127.0.0.1 (mTLS with the cluster
PKI), which can go down, answer 500, hang, or acknowledge writes it then loses; and against
httpx.MockTransport for the write audit's corner cases.

No assertion is about speed: the server counts what it saw, and the tests wait for counts
(with generous deadlines), never for the clock.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from junitparser import Failure, JUnitXml

from nornir_k8sha.pki import ClusterPKI
from nornir_k8sha.runbook.expect import expectation
from nornir_k8sha.runbook.load import LoadProbe
from nornir_k8sha.runbook.measure import figures, shortfalls
from nornir_k8sha.runbook.results import CaseResult, Mark, RunbookResult, Sample
from nornir_k8sha.runbook.views import junit_xml
from nornir_k8sha.topology import ClusterSpec, load_cluster_spec

from .conftest import LAB_INVENTORY

CM_PREFIX = "/api/v1/namespaces/default/configmaps"


def wait_for(cond: Callable[[], bool], what: str, limit: float = 20.0) -> None:
    """Wait for an event (a count reached); the limit only stops a broken test hanging."""
    deadline = time.monotonic() + limit
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"never happened: {what}")
        time.sleep(0.01)


class FakeAPI(ThreadingHTTPServer):
    """The few Kubernetes API calls the probe makes, with switches for faults."""

    daemon_threads = True

    def __init__(self, ctx: ssl.SSLContext) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.socket = ctx.wrap_socket(self.socket, server_side=True,
                                      do_handshake_on_connect=False)
        self.lock = threading.Lock()
        self.store: dict[str, dict[str, Any]] = {}
        self.mode = "up"  # up | down (close without answer) | error (500) | hang
        self.lose_every = 0  # acknowledge every write, but drop every n-th
        self.dropped: list[str] = []
        self.served: dict[str, int] = {"ok": 0, "refused": 0}
        self.connections: dict[str, int] = {}  # "METHOD path" opening a connection -> count
        self.client_cns: set[str] = set()
        self.release = threading.Event()
        # like HAProxy stopped with a request in flight on a kept-alive connection: the
        # (n+1)-th request on a connection is read, then the connection closes unanswered
        # ("stored": a write is stored first; "other": stored with another seq, not ours)
        self.cut_after = 0
        self.cut_write = ""  # "" (before storing) | "stored" | "other"
        self.cuts: dict[str, int] = {"GET": 0, "POST": 0}

    def count(self, key: str) -> int:
        with self.lock:
            return self.served[key]


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, like kube-apiserver
    server: FakeAPI

    def log_message(self, *args: object) -> None:
        pass

    def setup(self) -> None:
        super().setup()
        self.first = True
        self.answered = 0  # requests answered on this connection

    def _cut(self) -> None:
        """Close this connection without answering (counted per method)."""
        with self.server.lock:
            self.server.cuts[self.command] += 1
        self.close_connection = True
        self.connection.shutdown(socket.SHUT_RDWR)

    def _cuts_now(self) -> bool:
        return bool(self.server.cut_after) and self.answered >= self.server.cut_after

    def _answer(self, status: int, body: Any) -> None:
        self.answered += 1
        data = json.dumps(body).encode() if not isinstance(body, bytes) else body
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _gate(self) -> bool:
        """True when the request may be served normally."""
        srv = self.server
        cert = self.connection.getpeercert() or {}
        with srv.lock:
            for rdn in cert.get("subject", ()):
                srv.client_cns.update(v for k, v in rdn if k == "commonName")
            if self.first:
                key = f"{self.command} {self.path.split('?')[0]}"
                srv.connections[key] = srv.connections.get(key, 0) + 1
                self.first = False
            mode = srv.mode
            srv.served["ok" if mode == "up" else "refused"] += 1
        if mode == "down":
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return False
        if mode == "error":
            self._answer(500, {"kind": "Status", "status": "Failure", "code": 500})
            return False
        if mode == "hang":
            srv.release.wait(10)
            self.close_connection = True
            return False
        if self._cuts_now() and not (self.command == "POST" and srv.cut_write):
            self._cut()
            return False
        return True

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        if not self._gate():
            return
        path = self.path.split("?")[0]
        if path == "/readyz":
            self._answer(200, b"ok")
        elif path == CM_PREFIX:
            with self.server.lock:
                items = list(self.server.store.values())[:1]
            self._answer(200, {"kind": "ConfigMapList", "items": items})
        elif path.startswith(CM_PREFIX + "/"):
            with self.server.lock:
                obj = self.server.store.get(path.rsplit("/", 1)[1])
            self._answer(200, obj) if obj else self._answer(404, {"reason": "NotFound"})
        else:
            self._answer(404, {"reason": "NotFound"})

    def do_POST(self) -> None:  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if not self._gate():
            return
        name = body["metadata"]["name"]
        srv = self.server
        with srv.lock:
            if name in srv.store:
                self._answer(409, {"reason": "AlreadyExists"})
                return
            seq = int(body["data"]["seq"])
            if srv.lose_every and seq % srv.lose_every == 0:
                srv.dropped.append(name)  # acknowledged below, yet never stored
            elif self._cuts_now() and srv.cut_write == "other":
                srv.store[name] = body | {"data": {"seq": str(seq + 1000)}}
            else:
                srv.store[name] = body
        if self._cuts_now():  # cut_write: the write is stored, its answer never sent
            self._cut()
            return
        self._answer(201, body)

    def do_DELETE(self) -> None:  # noqa: N802
        if not self._gate():
            return
        with self.server.lock:
            gone = self.server.store.pop(self.path.rsplit("/", 1)[1], None)
        self._answer(200 if gone else 404, {"kind": "Status"})


@pytest.fixture(scope="module")
def pki_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("state")


@pytest.fixture(scope="module")
def server_ctx(pki_dir: Path) -> ssl.SSLContext:
    return server_context(pki_dir)


def server_context(pki_dir: Path) -> ssl.SSLContext:
    """A server certificate for 127.0.0.1 from the cluster's Kubernetes CA; client certificates
    of that CA required (the probe must present the admin certificate). bench/probe_bench.py
    uses it too."""
    spec = load_cluster_spec(LAB_INVENTORY)
    pki = ClusterPKI(spec, pki_dir)
    pki.ensure()
    ca_cert = x509.load_pem_x509_certificate(pki.kubernetes_ca.cert.read_bytes())
    ca_key = serialization.load_pem_private_key(pki.kubernetes_ca.key.read_bytes(), None)
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kube-apiserver")]))
            .issuer_name(ca_cert.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=1)).not_valid_after(now + timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .sign(ca_key, hashes.SHA256()))  # type: ignore[arg-type]
    cert_file, key_file = pki_dir / "server.crt", pki_dir / "server.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert_file, key_file)
    ctx.load_verify_locations(pki.kubernetes_ca.cert)
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


@pytest.fixture
def api(server_ctx: ssl.SSLContext) -> Iterator[FakeAPI]:
    srv = FakeAPI(server_ctx)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.release.set()
    srv.shutdown()
    srv.server_close()


def spec_for(api: FakeAPI) -> ClusterSpec:
    """The lab's spec with its VIP and port pointed at the fake apiserver."""
    spec = load_cluster_spec(LAB_INVENTORY)
    settings = spec.settings.model_copy(update={
        "vip": ipaddress.IPv4Address("127.0.0.1"), "apiserver_port": api.server_address[1]})
    return dataclasses.replace(spec, settings=settings)


def probe_for(api: FakeAPI, pki_dir: Path, **kw: Any) -> LoadProbe:
    kw = {"read_interval": 0.02, "write_interval": 0.02, "request_timeout": 0.5} | kw
    return LoadProbe(spec_for(api), pki_dir, **kw)


def outage(api: FakeAPI, probe: LoadProbe, requests: int) -> tuple[list[Sample], list[Mark]]:
    """Run the probe: `requests` served, the apiserver down for `requests` refused ones (the
    fault mark after it went down), up again (the lift mark after) for `requests` more."""
    with probe:
        wait_for(lambda: api.count("ok") >= requests, "requests served before the fault")
        api.mode = "down"
        probe.mark("apiserver down", "fault")
        wait_for(lambda: api.count("refused") >= requests, "requests refused")
        api.mode = "up"
        probe.mark("apiserver up", "lift")
        served = api.count("ok")
        wait_for(lambda: api.count("ok") >= served + requests, "requests served after the lift")
    return probe.stop()


def test_outage_shows_as_failures_inside_the_fault_window(api: FakeAPI, pki_dir: Path) -> None:
    probe = probe_for(api, pki_dir)
    samples, marks = outage(api, probe, 30)
    fault, lift = (m.at for m in marks)
    assert [m.kind for m in marks] == ["fault", "lift"]
    assert {s.kind for s in samples} == {"read-fresh", "read-keepalive", "write"}
    assert api.client_cns == {"kubernetes-admin"}  # the admin client certificate, over mTLS
    inside = [s for s in samples if s.start > fault and s.end < lift]
    after = [s for s in samples if s.start > lift]
    assert inside and not any(s.ok for s in inside)
    assert all(s.error and s.status is None for s in inside)
    assert len(after) >= 10 and all(s.ok for s in after)  # 30 served; a few were in flight
    assert all(s.ok for s in samples if s.end < fault)
    fig = figures(samples, fault_at=fault, lifted_at=lift, acknowledged=0, lost=0)
    assert fig.failed == sum(not s.ok for s in samples) > 0
    assert fig.downtime_s > 0 and fig.recover_s is not None and fig.detect_s is not None
    # every write acknowledged is there: read back, nothing lost; then cleaned up
    acknowledged, lost = probe.audit_writes(timeout=5)
    assert acknowledged == sum(1 for s in samples if s.kind == "write" and s.ok) > 0
    assert lost == 0
    assert probe.cleanup() >= acknowledged
    assert api.store == {}


def test_an_outage_measured_beyond_a_tight_bound_fails_in_junit(api: FakeAPI, pki_dir: Path,
                                                                tmp_path: Path) -> None:
    """Probe -> figures -> expectation -> shortfalls -> JUnit, as a runbook run chains them:
    an outage where the configuration promises none ("none": 0 s) fails the case, and the
    failure says what was measured and what was expected."""
    probe = probe_for(api, pki_dir)
    samples, marks = outage(api, probe, 15)
    acknowledged, lost = probe.audit_writes(timeout=5)
    fig = figures(samples, fault_at=marks[0].at, lifted_at=marks[1].at,
                  acknowledged=acknowledged, lost=lost, marks=marks)
    expected = expectation("none", spec_for(api))
    problems = shortfalls(expected, fig)
    assert problems == [f"downtime {fig.downtime_s:.2f} s > bound 0.00 s"]
    case = CaseResult("apiserver-down", "the apiserver refuses", verdict="failed",
                      reason="; ".join(problems), expectation=expected, figures=fig,
                      samples=samples, marks=marks)
    report = tmp_path / "junit.xml"
    report.write_text(junit_xml(RunbookResult("t", "t.yaml", "lab", cases=[case])))
    (tc,) = next(iter(JUnitXml.fromfile(str(report))))
    (failure,) = tc.result
    assert isinstance(failure, Failure)
    assert f"measured downtime {fig.downtime_s:.2f} s" in failure.message
    assert "expected no failure" in failure.message
    probe.cleanup()


def test_fresh_reads_use_a_new_connection_each_the_keepalive_reader_one(
        api: FakeAPI, pki_dir: Path) -> None:
    # a generous request timeout: on a busy machine a slow handshake must not count as a read
    # that never reached the server
    probe = probe_for(api, pki_dir, write_interval=10, request_timeout=10)
    with probe:
        wait_for(lambda: api.count("ok") >= 40, "40 requests served")
    samples, _ = probe.stop()
    fresh = sum(1 for s in samples if s.kind == "read-fresh")
    keep = sum(1 for s in samples if s.kind == "read-keepalive")
    assert keep >= 5
    assert api.connections["GET /readyz"] == fresh  # one TLS connection per fresh read
    assert api.connections[f"GET {CM_PREFIX}"] == 1  # every kept-alive read on one connection


def cut_kept_alive(api: FakeAPI, pki_dir: Path, cuts: int = 3) -> tuple[list[Sample], LoadProbe]:
    """Run the probe until `cuts` kept-alive reads and writes each met a connection closed
    unanswered (every 4th request on a connection)."""
    api.cut_after = 3
    probe = probe_for(api, pki_dir, read_interval=0.05, request_timeout=10)
    with probe:
        wait_for(lambda: min(api.cuts.values()) >= cuts, f"{cuts} reads and writes cut")
    samples, _ = probe.stop()
    return samples, probe


def test_kept_alive_reads_are_resent_like_kubectl_when_a_reused_connection_closes_unanswered(
        api: FakeAPI, pki_dir: Path) -> None:
    # what HAProxy's stop does to a kept-alive connection with a request in flight: kubectl
    # (Go's net/http, client-go) sends a GET again on a new connection; a write it never
    # resends (client-go: writes are not idempotent), so a cut write is a failed request
    samples, probe = cut_kept_alive(api, pki_dir)
    reads = [s for s in samples if s.kind == "read-keepalive"]
    assert reads and [s for s in reads if not s.ok] == []
    retried = [s for s in samples if s.retried]
    assert retried and {s.kind for s in retried} == {"read-keepalive"}
    assert all("without sending a response" in s.retried for s in retried)
    cut_writes = [s for s in samples if s.kind == "write" and not s.ok]
    assert cut_writes and all("without sending a response" in s.error for s in cut_writes)
    acknowledged = sum(1 for s in samples if s.kind == "write" and s.ok)
    assert probe.audit_writes(timeout=5) == (acknowledged, 0)


def test_a_cut_write_that_had_landed_is_still_a_failed_request_and_not_acknowledged(
        api: FakeAPI, pki_dir: Path) -> None:
    # the write was stored but its answer lost: the client saw an error, so it is not
    # acknowledged (and not "lost" either: the audit only holds acknowledged writes to account)
    api.cut_write = "stored"
    samples, probe = cut_kept_alive(api, pki_dir)
    landed = [s for s in samples if s.kind == "write" and not s.ok]
    assert landed and not any(s.retried for s in landed)
    assert not {f"{probe.prefix}-{probe.run_id}-{s.seq}" for s in landed} & set(probe.acknowledged)
    assert probe.audit_writes(timeout=5)[1] == 0


def test_the_probe_is_settled_only_once_the_api_answers_again_for_a_while(
        api: FakeAPI, pki_dir: Path) -> None:
    """What the runbook engine waits for before it stops a case's probe: a disruption the
    lift causes is measured to its end instead of as an outage that never ended."""
    probe = probe_for(api, pki_dir)
    with probe:
        wait_for(lambda: api.count("ok") >= 5, "requests served")
        assert probe.settled(quiet=0.3)  # nothing failed yet
        api.mode = "down"
        wait_for(lambda: not probe.settled(quiet=0.3), "a failure recorded")
        api.mode = "up"
        wait_for(lambda: probe.settled(quiet=0.3), "settled after the API came back")
        assert not probe.settled(quiet=30)  # back, but the last failure is not 30 s old
    samples, _ = probe.stop()
    last_failure = max(s.end for s in samples if not s.ok)
    assert any(s.ok and s.end > last_failure for s in samples)
    assert figures(samples, fault_at=None, lifted_at=None, acknowledged=0,
                   lost=0).api_recover_s is not None


def test_lost_writes_are_found_by_the_audit(api: FakeAPI, pki_dir: Path) -> None:
    api.lose_every = 3
    probe = probe_for(api, pki_dir, read_interval=1.0)
    with probe:
        wait_for(lambda: len(api.store) + len(api.dropped) >= 12, "12 writes acknowledged")
    samples, _ = probe.stop()
    acknowledged, lost = probe.audit_writes(timeout=5)
    assert acknowledged == sum(1 for s in samples if s.kind == "write" and s.ok)
    assert lost == len(api.dropped) >= 4
    seqs = sorted(s.seq for s in samples if s.kind == "write")
    assert seqs == list(range(1, len(seqs) + 1))  # numbered 1, 2, 3, ...


def test_http_500_is_a_failure_and_no_write_is_acknowledged(api: FakeAPI, pki_dir: Path) -> None:
    api.mode = "error"
    probe = probe_for(api, pki_dir, request_timeout=10)  # every request gets its answer
    with probe:
        wait_for(lambda: api.count("refused") >= 20, "20 requests answered 500")
    samples, _ = probe.stop()
    assert samples and all(not s.ok and s.status == 500 and s.error == "HTTP 500"
                           for s in samples)
    assert probe.audit_writes(timeout=1) == (0, 0)


def test_a_hanging_api_gives_timeouts_and_stop_still_returns(api: FakeAPI, pki_dir: Path) -> None:
    api.mode = "hang"
    probe = probe_for(api, pki_dir, request_timeout=0.2, max_inflight=4)
    with probe:
        wait_for(lambda: api.count("refused") >= 6, "6 requests hanging")
        wait_for(lambda: probe.acknowledged == {} and len(probe._samples) >= 3,
                 "3 requests timed out")
    samples, _ = probe.stop()
    assert samples and all(not s.ok and "timed out" in s.error for s in samples)
    assert not any(s.retried for s in samples)  # a timeout is never sent again
    assert not any(t.is_alive() for t in probe._threads)


def test_the_probe_ends_by_itself_at_max_seconds_and_at_the_sample_cap(
        api: FakeAPI, pki_dir: Path) -> None:
    capped = probe_for(api, pki_dir, max_samples=25)
    capped.start()
    wait_for(lambda: not any(t.is_alive() for t in capped._threads), "the capped probe ended")
    assert len(capped.stop()[0]) == 25
    short = probe_for(api, pki_dir, max_seconds=0.3)
    short.start()
    wait_for(lambda: not any(t.is_alive() for t in short._threads), "max_seconds reached")
    samples, _ = short.stop()
    assert samples and all(s.ok for s in samples)


# --- the write audit's corner cases, over httpx.MockTransport -------------------------------


def mock_probe(tmp_path: Path, handler: Callable[[httpx.Request], httpx.Response]) -> LoadProbe:
    spec = load_cluster_spec(LAB_INVENTORY)
    return LoadProbe(spec, tmp_path, transport=httpx.MockTransport(handler),
                     read_interval=0.01, write_interval=0.01)


def test_audit_over_mock_transport(tmp_path: Path) -> None:
    """200 for a POST is not an acknowledgement; a read-back with another seq is a loss; a
    read-back that fails is retried."""
    calls: dict[str, int] = {}

    def handler(request: httpx.Request) -> httpx.Response:
        assert request.url.host == "10.88.0.100" and request.url.port == 6443  # the VIP
        if request.method == "POST":
            seq = int(json.loads(request.content)["data"]["seq"])
            return httpx.Response(200 if seq == 1 else 201, json={})
        if not request.url.path.startswith(CM_PREFIX + "/"):
            return httpx.Response(200, json={"items": []})  # the readers
        name = request.url.path.rsplit("/", 1)[1]
        calls[name] = calls.get(name, 0) + 1
        if name.endswith("-2"):
            return httpx.Response(200, json={"data": {"seq": "99"}})
        if name.endswith("-3") and calls[name] <= 2:
            raise httpx.ConnectError("refused")  # twice, then it answers
        return httpx.Response(200, json={"data": {"seq": name.rsplit("-", 1)[1]}})

    probe = mock_probe(tmp_path, handler)
    with probe:
        wait_for(lambda: len(probe.acknowledged) >= 5, "5 writes acknowledged")
    samples, _ = probe.stop()
    writes = sorted((s for s in samples if s.kind == "write"), key=lambda s: s.seq or 0)
    assert writes[0].ok is False and writes[0].status == 200  # not 201: not acknowledged
    acknowledged, lost = probe.audit_writes(timeout=10)
    assert acknowledged == len(probe.acknowledged) == sum(s.ok for s in writes)
    assert lost == 1  # seq 2 (wrong data); seq 3 was read back on the third try
    assert calls[f"k8sha-verify-{probe.run_id}-3"] == 3


def test_audit_is_bounded_when_the_api_stays_down(tmp_path: Path) -> None:
    """Past the audit's timeout nothing more is asked; the unreadable writes count as lost."""
    down = threading.Event()
    asked: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if down.is_set():
            asked.append(request.url.path.rsplit("/", 1)[1])
            raise httpx.ConnectError("refused")
        return httpx.Response(201 if request.method == "POST" else 200, json={})

    probe = mock_probe(tmp_path, handler)
    with probe:
        wait_for(lambda: len(probe.acknowledged) >= 5, "5 writes acknowledged")
    probe.stop()
    down.set()
    acknowledged, lost = probe.audit_writes(timeout=0.2)
    assert acknowledged == lost >= 5
    first = f"k8sha-verify-{probe.run_id}-1"
    assert set(asked) == {first}  # the first used up the timeout; no other was asked


def test_bad_probe_settings_are_refused(tmp_path: Path) -> None:
    spec = load_cluster_spec(LAB_INVENTORY)
    for bad in ({"read_interval": 0}, {"max_seconds": -1}, {"request_timeout": 0}):
        with pytest.raises(ValueError, match="must be > 0"):
            LoadProbe(spec, tmp_path, **bad)  # type: ignore[arg-type]


def test_mark_kinds_are_checked(tmp_path: Path) -> None:
    probe = mock_probe(tmp_path, lambda r: httpx.Response(200))
    with pytest.raises(ValueError, match="mark kind 'flt'"):
        probe.mark("x", "flt")
    probe.mark("VIP on lvs2", "holder")
    assert probe.stop()[1][0].label == "VIP on lvs2"


def test_samples_are_plain_data() -> None:
    s = Sample("write", 1.0, 1.1, True, 201, seq=4)
    assert dataclasses.asdict(s)["seq"] == 4
