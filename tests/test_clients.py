"""The shared HTTP clients: a GET the server cut without answering is sent once more, as Go's
net/http and client-go do, so a check sees what kubectl would; a write is never sent twice."""

from __future__ import annotations

import socket
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from nornir_k8sha.clients import ReplayOnDisconnect, api_client, plain_client
from nornir_k8sha.pki import ClusterPKI
from nornir_k8sha.tasks import apiserver
from nornir_k8sha.topology import load_cluster_spec

from .conftest import LAB_INVENTORY, read_http_request

CUT = "Server disconnected without sending a response."


class OneAnswerPerConnection:
    """A loopback HTTP/1.1 server that answers the first request on each connection (keeping
    it alive) and closes the connection on the second without a word: an apiserver restarting,
    or a proxy dropping its side, between two requests of one client. `cut_first`: the first
    request on each connection is the one cut."""

    def __init__(self, cut_first: bool = False) -> None:
        self.cut_at = 0 if cut_first else 1
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(8)
        self.port = self.listener.getsockname()[1]
        self.connections = 0
        self.answered: list[str] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._one, args=(conn,), daemon=True).start()

    def _one(self, conn: socket.socket) -> None:
        with conn, conn.makefile("rb") as reader:
            for n in range(2):
                method = read_http_request(reader)
                if not method or n == self.cut_at:
                    return  # the client left, or closed unanswered
                self.answered.append(method)
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")

    def close(self) -> None:
        self.listener.close()


@pytest.fixture
def server() -> Iterator[OneAnswerPerConnection]:
    srv = OneAnswerPerConnection()
    yield srv
    srv.close()


def test_a_get_on_a_connection_the_server_closed_is_sent_again_on_a_new_one(server) -> None:
    url = f"http://127.0.0.1:{server.port}/livez"
    with httpx.Client(transport=ReplayOnDisconnect(httpx.HTTPTransport())) as client:
        assert [client.get(url).text for _ in range(3)] == ["ok", "ok", "ok"]
    assert server.connections == 3  # each second request was cut and replayed on a new one
    with httpx.Client(transport=httpx.HTTPTransport()) as plain, pytest.raises(
            httpx.RemoteProtocolError, match="without sending a response"):
        for _ in range(2):
            plain.get(url)


def test_a_get_cut_on_a_fresh_connection_is_not_sent_again() -> None:
    """Go replays only on a reused connection: a fresh one cut is a path that does not serve."""
    server = OneAnswerPerConnection(cut_first=True)
    try:
        with httpx.Client(transport=ReplayOnDisconnect(httpx.HTTPTransport())) as client, \
                pytest.raises(httpx.RemoteProtocolError):
            client.get(f"http://127.0.0.1:{server.port}/livez")
        assert server.connections == 1
    finally:
        server.close()


def test_a_write_the_server_cut_is_never_sent_twice(server) -> None:
    url = f"http://127.0.0.1:{server.port}/api/v1/namespaces/default/configmaps"
    with httpx.Client(transport=ReplayOnDisconnect(httpx.HTTPTransport())) as client:
        assert client.post(url, json={}).text == "ok"
        with pytest.raises(httpx.RemoteProtocolError):
            client.post(url, json={})
    assert server.answered == ["POST"] and server.connections == 1


def _leases_cut(times: int) -> tuple[httpx.MockTransport, list[str]]:
    """The lease of kube-scheduler is cut `times` times, then answered."""
    asked: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        name = request.url.path.rsplit("/", 1)[-1]
        asked.append(name)
        if name == "kube-scheduler" and asked.count(name) <= times:
            raise httpx.RemoteProtocolError(CUT, request=request)
        return httpx.Response(200, json={"spec": {"holderIdentity": "master1"}})

    return httpx.MockTransport(handler), asked


def test_the_lease_check_reads_through_one_cut_and_reports_two() -> None:
    spec = load_cluster_spec(LAB_INVENTORY)
    transport, asked = _leases_cut(1)
    rows = apiserver.check_leases(spec, transport=transport)
    assert [(r.status, r.message) for r in rows] == [("ok", "leader master1")] * 2
    assert asked == ["kube-controller-manager", "kube-scheduler", "kube-scheduler"]
    transport, _ = _leases_cut(2)
    rows = apiserver.check_leases(spec, transport=transport)
    assert rows[1].status == "failed" and rows[1].message == f"lease unreadable: {CUT}"


def test_the_api_client_replays_on_its_own_transport(tmp_path: Path) -> None:
    """No transport given: the real one (the cluster CA in its TLS context) is wrapped too."""
    spec = load_cluster_spec(LAB_INVENTORY)
    ClusterPKI(spec, tmp_path).ensure()
    with api_client(spec, tmp_path) as client:
        assert isinstance(client._transport, ReplayOnDisconnect)


def test_the_plain_client_goes_straight_replays_and_trusts_no_ca(
        server: OneAnswerPerConnection, monkeypatch: pytest.MonkeyPatch) -> None:
    """HAProxy's stats page: no proxy from the environment (a dead one is set), a cut GET sent
    again like every other client's, and no CA loaded: an https URL is never trusted."""
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")
    monkeypatch.setenv("ALL_PROXY", "http://127.0.0.1:9")
    url = f"http://127.0.0.1:{server.port}/stats;csv"
    with plain_client() as client:
        assert isinstance(client._transport, ReplayOnDisconnect)
        assert [client.get(url).text for _ in range(3)] == ["ok", "ok", "ok"]
        context = client._transport.inner._pool._ssl_context
        assert context.verify_mode == ssl.CERT_REQUIRED and context.cert_store_stats()["x509"] == 0
    assert server.connections == 3
