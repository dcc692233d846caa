"""The bounded load a runbook case runs through the VIP while it breaks something.

Three kinds of client, because an outage looks different to each (DESIGN.md's hand probe was
the first kind):

- fresh-TLS reads: `GET /readyz` on a new TLS connection every `read_interval` (the request
  says `Connection: close`, so no connection is ever reused). They are started on a clock, a
  few at once at most: a read stuck on a dead path does not delay the next one, so the first
  success after a failover is seen within one interval;
- one kept-alive reader, like kubectl or a controller: one persistent client listing one
  ConfigMap, one request after the other;
- one writer creating ConfigMaps `<prefix>-<run>-<seq>` with data `{seq: "<n>"}`; a write is
  acknowledged only by `201 Created`. `audit_writes()` reads every acknowledged write back
  after recovery: an acknowledged write that is gone is a lost write.

The kept-alive reader retries as kubectl and client-go do: a GET sent on a *reused* connection
that the server closed (EOF or reset) before any answer began is sent once more on a new
connection (Go's net/http Transport: transport.go `shouldRetryRequest`, request.go
`isReplayable`; client-go's rest.Request also retries GETs on a reset or EOF). The writer is
never retried: client-go does not retry writes ("they are not idempotent", request.go), so a
create cut before its answer is a failed request here as it is an error for kubectl. Nothing
else is retried: not a timeout, not a fresh connection's failure (a fresh read never reuses
one), not an answer cut off after it began. The replay is every API client's
(`clients.ReplayOnDisconnect`); the probe only listens (`clients.ON_REPLAY`), and the sample
keeps the first attempt's error (`retried`).

Every request becomes a `Sample` (time.monotonic() start/end, ok, status, error). Each request
is bounded by a short timeout, the whole probe by `max_seconds` and a sample cap; `stop()`
joins with a timeout and never hangs.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from pathlib import Path
from types import TracebackType
from typing import Any, cast, get_args

import httpx

from nornir_k8sha import constants as C
from nornir_k8sha.clients import ON_REPLAY, api_client, error_text
from nornir_k8sha.runbook import measure
from nornir_k8sha.runbook.results import Mark, MarkKind, Sample, SampleKind
from nornir_k8sha.topology import ClusterSpec

#: The readiness endpoint the fresh reads ask (kube-apiserver answers 200 "ok" when ready).
READYZ_PATH = "/readyz"
#: The collection of ConfigMaps of a namespace.
CONFIGMAPS_PATH = "/api/v1/namespaces/{namespace}/configmaps"
#: Label on every ConfigMap the writer creates: which run wrote it (for people and cleanup).
RUN_LABEL = "k8sha.io/verify-run"
MARK_KINDS: tuple[str, ...] = get_args(MarkKind)
class LoadProbe:
    """Fresh-TLS reads, one kept-alive reader and one writer through the VIP, in threads."""

    def __init__(self, spec: ClusterSpec, state_dir: Path, *,
                 read_interval: float = C.PROBE_READ_INTERVAL_S,
                 write_interval: float = C.PROBE_WRITE_INTERVAL_S,
                 max_seconds: float = C.PROBE_MAX_SECONDS,
                 transport: httpx.BaseTransport | None = None,
                 namespace: str = "default", prefix: str = "k8sha-verify",
                 request_timeout: float = C.PROBE_REQUEST_TIMEOUT_S,
                 max_samples: int = C.PROBE_MAX_SAMPLES,
                 max_inflight: int = C.PROBE_MAX_INFLIGHT) -> None:
        if min(read_interval, write_interval, max_seconds, max_samples, request_timeout) <= 0:
            raise ValueError("load probe intervals, max_seconds, max_samples and "
                             "request_timeout must be > 0")
        self.spec = spec
        self.state_dir = Path(state_dir)
        self.read_interval = read_interval
        self.write_interval = write_interval
        self.max_seconds = max_seconds
        self.request_timeout = request_timeout
        self.max_samples = max_samples
        self.max_inflight = max(1, max_inflight)
        self.namespace = namespace
        self.prefix = prefix
        self.run_id = uuid.uuid4().hex[:8]
        self.base = f"https://{spec.api_endpoint}"
        self._transport = transport
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._samples: list[Sample] = []
        self._marks: list[Mark] = []
        self._acknowledged: dict[str, int] = {}  # name -> seq, only for 201 Created
        self._attempted: list[str] = []  # every name the writer sent (some may exist unacked)
        self._threads: list[threading.Thread] = []
        self._pool: ThreadPoolExecutor | None = None
        self._inflight: set[Future[None]] = set()
        self._clients: list[httpx.Client] = []
        self._started = False
        self._closed = False

    # --- public --------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the three loads; they end on stop(), after max_seconds or at the sample cap."""
        if self._started:
            raise RuntimeError("a LoadProbe runs once; make a new one per case")
        self._started = True
        deadline = time.monotonic() + self.max_seconds
        fresh, keep, write = self._client(), self._client(), self._client()
        self._pool = ThreadPoolExecutor(self.max_inflight, thread_name_prefix="k8sha-fresh")
        loops: list[tuple[str, Callable[..., None], tuple[Any, ...]]] = [
            ("k8sha-fresh-clock", self._fresh_loop, (fresh, deadline)),
            ("k8sha-keepalive", self._keepalive_loop, (keep, deadline)),
            ("k8sha-writer", self._write_loop, (write, deadline)),
        ]
        for name, target, args in loops:
            thread = threading.Thread(target=target, args=args, name=name, daemon=True)
            self._threads.append(thread)
            thread.start()

    def mark(self, label: str, kind: str = "note") -> None:
        """Put an event on the timeline (fault applied/lifted, VIP holder changed, ...)."""
        if kind not in MARK_KINDS:
            raise ValueError(f"mark kind {kind!r} is not one of {', '.join(MARK_KINDS)}")
        with self._lock:
            self._marks.append(Mark(time.monotonic(), label, cast(MarkKind, kind)))

    def stop(self) -> tuple[list[Sample], list[Mark]]:
        """Stop every thread (bounded wait) and return the samples (by start) and marks."""
        self._stop.set()
        bound = self.request_timeout * 3 + 1.0  # connect + write + read phases, each bounded
        until = time.monotonic() + bound
        for thread in self._threads:
            thread.join(max(0.0, until - time.monotonic()))
        if self._pool is not None:
            with self._lock:
                pending = set(self._inflight)
            wait_futures(pending, timeout=max(0.0, until - time.monotonic()))
            self._pool.shutdown(wait=False, cancel_futures=True)
        with self._lock:
            self._closed = True  # a request still stuck past the bound is not recorded
            samples = sorted(self._samples, key=lambda s: (s.start, s.end))
            marks = sorted(self._marks, key=lambda m: m.at)
            clients, self._clients = self._clients, []
        for client in clients:
            client.close()
        return samples, marks

    def settled(self, quiet: float = C.PROBE_SETTLE_S) -> bool:
        """True when the API looks back for good: no request failed, or one succeeded after the
        newest failure and none has failed for `quiet` seconds. The engine waits for this
        before it stops the probe, so that a disruption is measured to its end."""
        now = time.monotonic()
        with self._lock:
            samples = list(self._samples)
        failed_at = measure.last_failure(samples)
        if failed_at is None:
            return True
        return (now - failed_at >= quiet
                and measure.first_success_after(samples, failed_at) is not None)

    @property
    def acknowledged(self) -> dict[str, int]:
        """Name -> sequence number of every write the API acknowledged (201)."""
        with self._lock:
            return dict(self._acknowledged)

    def audit_writes(self, timeout: float = C.PROBE_AUDIT_TIMEOUT_S) -> tuple[int, int]:
        """(acknowledged, lost): read every acknowledged write back through the VIP.

        A write is lost when the API says 404 (a quorum read: authoritative) or the object
        carries another sequence number; one still unreadable when `timeout` runs out (the API
        not back) counts as lost too, since it cannot be shown to be there. The whole audit
        takes at most `timeout` plus one request.
        """
        wanted = self.acknowledged
        if not wanted:
            return 0, 0
        deadline = time.monotonic() + timeout
        lost = 0
        with self._client() as client:
            for name, seq in sorted(wanted.items(), key=lambda kv: kv[1]):
                if not self._read_back(client, name, seq, deadline):
                    lost += 1
        return len(wanted), lost

    def cleanup(self, timeout: float = C.PROBE_CLEANUP_TIMEOUT_S) -> int:
        """Delete every ConfigMap the writer tried to create (acknowledged or not: an
        unacknowledged write may still have been stored). Bounded by `timeout`; returns how
        many are known gone."""
        with self._lock:
            names = list(self._attempted)
        deadline = time.monotonic() + timeout
        gone = 0
        with self._client() as client:
            for name in names:
                if time.monotonic() >= deadline:
                    break
                try:
                    resp = client.delete(self._configmap_url(name))
                except httpx.HTTPError:
                    continue
                gone += resp.status_code in (200, 202, 404)
        return gone

    def __enter__(self) -> LoadProbe:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    # --- the loads -----------------------------------------------------------------------------

    def _client(self) -> httpx.Client:
        client = api_client(self.spec, self.state_dir, self._transport)
        client.timeout = httpx.Timeout(self.request_timeout)
        with self._lock:
            self._clients.append(client)
        return client

    def _running(self, deadline: float) -> bool:
        return not self._stop.is_set() and time.monotonic() < deadline

    def _record(self, sample: Sample) -> None:
        with self._lock:
            if self._closed or len(self._samples) >= self.max_samples:
                return
            self._samples.append(sample)
            if len(self._samples) >= self.max_samples:
                self._stop.set()

    def _request(self, kind: SampleKind, send: Callable[[dict[str, Any]], httpx.Response],
                 ok_status: int = 200, seq: int | None = None) -> bool:
        """One request (`send` gets httpx's request extensions); True when it succeeded. A read
        the client sent twice (module docstring) is one sample, with its first error."""
        start = time.monotonic()
        replayed: list[tuple[str, float]] = []  # (the first attempt's error, when it came)
        try:
            resp = send({ON_REPLAY: lambda exc: replayed.append((error_text(exc),
                                                                 time.monotonic()))})
            status, ok = resp.status_code, resp.status_code == ok_status
            error = "" if ok else f"HTTP {status}"
        except Exception as exc:  # noqa: BLE001 - any error is a failed request
            status, ok, error = None, False, error_text(exc)
        first, first_at = replayed[0] if replayed else ("", None)
        self._record(Sample(kind, start, time.monotonic(), ok, status, error, seq, first,
                            first_at))
        return ok

    def _fresh_read(self, client: httpx.Client) -> None:
        self._request("read-fresh", lambda ext: client.get(
            self.base + READYZ_PATH, headers={"Connection": "close"}, extensions=ext))

    def _fresh_loop(self, client: httpx.Client, deadline: float) -> None:
        """Start a fresh read every interval, unless max_inflight are still running."""
        assert self._pool is not None
        tick = time.monotonic()
        while self._running(deadline):
            with self._lock:
                self._inflight = {f for f in self._inflight if not f.done()}
                busy = len(self._inflight) >= self.max_inflight
            if not busy:
                try:
                    future = self._pool.submit(self._fresh_read, client)
                except RuntimeError:  # the pool was shut down by stop()
                    return
                with self._lock:
                    self._inflight.add(future)
            tick += self.read_interval
            self._stop.wait(max(0.0, tick - time.monotonic()))

    def _keepalive_loop(self, client: httpx.Client, deadline: float) -> None:
        url = self.base + CONFIGMAPS_PATH.format(namespace=self.namespace)
        self._paced(deadline, self.read_interval, lambda: self._request(
            "read-keepalive", lambda ext: client.get(url, params={"limit": "1"}, extensions=ext)))

    def _write_loop(self, client: httpx.Client, deadline: float) -> None:
        url = self.base + CONFIGMAPS_PATH.format(namespace=self.namespace)
        seq = 0

        def write() -> None:
            nonlocal seq
            seq += 1
            name = f"{self.prefix}-{self.run_id}-{seq}"
            body = {"apiVersion": "v1", "kind": "ConfigMap",
                    "metadata": {"name": name, "namespace": self.namespace,
                                 "labels": {RUN_LABEL: self.run_id}},
                    "data": {"seq": str(seq)}}
            with self._lock:
                self._attempted.append(name)
            if self._request("write", lambda ext: client.post(url, json=body, extensions=ext),
                             201, seq):
                with self._lock:
                    self._acknowledged[name] = seq

        self._paced(deadline, self.write_interval, write)

    def _paced(self, deadline: float, interval: float, step: Callable[[], object]) -> None:
        """Run `step` one after the other, starting at most once per interval."""
        while self._running(deadline):
            began = time.monotonic()
            step()
            self._stop.wait(max(0.0, began + interval - time.monotonic()))

    # --- audit ---------------------------------------------------------------------------------

    def _configmap_url(self, name: str) -> str:
        return f"{self.base}{CONFIGMAPS_PATH.format(namespace=self.namespace)}/{name}"

    def _read_back(self, client: httpx.Client, name: str, seq: int, deadline: float) -> bool:
        """True when the ConfigMap is there with its sequence number; retries errors until
        `deadline` (past it, nothing more is asked: the audit stays bounded)."""
        while time.monotonic() < deadline:
            try:
                resp = client.get(self._configmap_url(name))
            except httpx.HTTPError:
                resp = None
            if resp is not None and resp.status_code == 404:
                return False
            if resp is not None and resp.status_code == 200:
                try:
                    return _seq_of(resp) == str(seq)
                except ValueError:  # not JSON: not our ConfigMap
                    return False
            time.sleep(min(self.read_interval * 3, max(0.0, deadline - time.monotonic())))
        return False


def _seq_of(resp: httpx.Response) -> str | None:
    """The `seq` of the ConfigMap in a response (ValueError when it is not JSON)."""
    return ((resp.json() or {}).get("data") or {}).get("seq")
