"""A deploy opens the hosts it will reach while it takes the cluster lock (`H.open_ahead`):
the openings overlap, the next opener waits for a host's opening instead of opening it again,
and a host that could not be opened costs its connect timeout once."""

from __future__ import annotations

import threading
import time
from collections import Counter
from typing import Any

import pytest
from nornir.core.inventory import Host

from nornir_k8sha.budget import BUDGET
from nornir_k8sha.cli.deploy import hosts_reached_first
from nornir_k8sha.exceptions import ConnectionFailed
from nornir_k8sha.inventory import open_nornir
from nornir_k8sha.tasks import host as H
from nornir_k8sha.topology import load_cluster_spec

from .conftest import LAB_INVENTORY


class _Conn:
    """A connection as the budget holds it (weakly)."""


def test_hosts_opened_ahead_overlap_and_a_failure_is_handed_on_once(
        monkeypatch: pytest.MonkeyPatch) -> None:
    nr = open_nornir(LAB_INVENTORY)
    together = threading.Barrier(2, timeout=5)  # haproxy1 and haproxy2 open at the same time
    calls: Counter[str] = Counter()
    release = threading.Event()  # the openings last until the next openers are waiting

    def fake_open(self: Host, connection: str, configuration: object, **kw: Any) -> None:
        calls[self.name] += 1
        if self.name == "etcd1":
            raise ConnectionFailed("10.88.0.31", "10.88.0.31: timed out after 10s")
        together.wait()
        release.wait(5)
        self.connections[connection] = type("P", (), {"connection": _Conn()})()

    monkeypatch.setattr(Host, "open_connection", fake_open)
    handshakes = BUDGET.handshakes
    H.open_ahead(nr, ["haproxy1", "haproxy2", "etcd1"])
    deadline = time.monotonic() + 10
    while len(calls) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    hosts = nr.inventory.hosts
    waiting = [threading.Thread(target=H.open_connection, args=(hosts[name], nr.config))
               for name in ("haproxy1", "haproxy2")]  # wait for the openings, open nothing
    for t in waiting:
        t.start()
    time.sleep(0.2)
    release.set()
    for t in waiting:
        t.join(10)
    with pytest.raises(ConnectionFailed) as info:  # the failure, not a second timeout
        H.open_connection(hosts["etcd1"], nr.config)
    assert info.value.host == "etcd1" and "timed out" in info.value.reason
    assert calls == {"haproxy1": 1, "haproxy2": 1, "etcd1": 1}
    assert BUDGET.handshakes == handshakes + 2  # counted by their opener alone
    with pytest.raises(ConnectionFailed):  # handed on once: the next one tries again
        H.open_connection(hosts["etcd1"], nr.config)
    assert calls["etcd1"] == 2


def test_a_deploy_opens_ahead_its_limit_or_every_linux_host_of_a_whole_run() -> None:
    spec = load_cluster_spec(LAB_INVENTORY)
    linux = {h.name for h in spec.hosts} - {"switch1", "switch2"}
    assert hosts_reached_first(spec, frozenset({"haproxy1", "switch1"}), ["lb"]) == {"haproxy1"}
    assert hosts_reached_first(spec, None, None) == linux
    assert hosts_reached_first(spec, None, ["lb"]) == set()
