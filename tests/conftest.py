"""Shared test helpers: paths to the shipped inventories and a builder for small inventories."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

import pytest
import yaml

from nornir_k8sha import polling
from tests.sshserver import SSHTestServer

REPO = Path(__file__).resolve().parent.parent
LAB_INVENTORY = REPO / "inventory" / "lab"
EXAMPLE_INVENTORY = REPO / "inventory" / "example"


def load_lab_inventory() -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """hosts, groups, defaults of the lab inventory as plain data, to modify in a test."""
    return tuple(  # type: ignore[return-value]
        yaml.safe_load((LAB_INVENTORY / f).read_text())
        for f in ("hosts.yaml", "groups.yaml", "defaults.yaml")
    )


InventoryFactory = Callable[..., Path]


@pytest.fixture
def make_inventory(tmp_path: Path) -> InventoryFactory:
    """Write an inventory dir: the lab's, changed by `edit(hosts, groups, defaults)`."""
    counter = iter(range(1000))

    def factory(edit: Callable[[dict, dict, dict], None] | None = None) -> Path:
        hosts, groups, defaults = load_lab_inventory()
        if edit:
            edit(hosts, groups, defaults)
        directory = tmp_path / f"inv{next(counter)}"
        directory.mkdir()
        for name, data in (("hosts.yaml", hosts), ("groups.yaml", groups),
                           ("defaults.yaml", defaults)):
            (directory / name).write_text(yaml.safe_dump(data, sort_keys=False))
        return directory

    return factory


def read_http_request(reader: BinaryIO) -> str:
    """One HTTP/1.1 request read whole from a loopback test server's socket (its head and its
    Content-Length body, so that closing the socket then sends a FIN, not a reset): its method,
    '' when the client had closed the connection."""
    line = reader.readline()
    length = 0
    while (header := reader.readline()) not in (b"\r\n", b""):
        name, _, value = header.decode().partition(":")
        if name.lower() == "content-length":
            length = int(value)
    reader.read(length)
    return line.decode().split()[0] if line.strip() else ""


def is_root() -> bool:
    return os.geteuid() == 0


_LOOPBACK = ("127.", "::1", "localhost")


@pytest.fixture(autouse=True)
def no_network_outside_loopback(request: pytest.FixtureRequest,
                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Unit tests reach nothing but loopback: a connect elsewhere fails the test at once
    (lab tests, marked `lab`, talk to the lab's own namespaces and are exempt)."""
    if request.node.get_closest_marker("lab"):
        return
    # the commands' "is the lab up?" guard: unit tests talk to fakes, never to the lab
    monkeypatch.setattr("nornir_k8sha.cli.common.lab_is_down", lambda spec: False)
    real_connect = socket.socket.connect

    def connect(self: socket.socket, address: object) -> None:
        host = address[0] if isinstance(address, tuple) else str(address)
        if self.family in (socket.AF_INET, socket.AF_INET6) and not str(host).startswith(
                _LOOPBACK):
            raise AssertionError(f"a unit test tried to connect to {address}: use the fake "
                                 "fleet or httpx.MockTransport")
        return real_connect(self, address)

    monkeypatch.setattr(socket.socket, "connect", connect)


def fake_opener(fleet: Any) -> Callable[..., Any]:
    """A stand-in for a CLI module's `open_nornir`: the inventory's Nornir, every host talking to
    its FakeHost of `fleet` (monkeypatch it over `<cli module>.open_nornir`)."""
    from nornir_k8sha.inventory import open_nornir
    from nornir_k8sha.testing import install_fake

    def opener(directory: Path, **kw: object) -> Any:
        nr = open_nornir(directory, **kw)
        install_fake(nr, fleet)
        return nr

    return opener


class FakeTime:
    """A clock that moves only when slept on: a poll's timeout passes in no real time, and the
    sleeps it took are counted (`slept`)."""

    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


@pytest.fixture
def fake_time(monkeypatch: pytest.MonkeyPatch) -> FakeTime:
    """Every `polling` wait on a FakeTime (for waits a test reaches only through the CLI)."""
    fake = FakeTime()
    monkeypatch.setattr(polling, "time", fake)
    return fake


# --- the SSH test server (tests/sshserver.py) ---------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SSHTestServer]:
    srv = SSHTestServer(tmp_path_factory.mktemp("sshd")).start()
    yield srv
    srv.stop()


@pytest.fixture
def srv(server: SSHTestServer) -> Iterator[SSHTestServer]:
    """The shared server, reset to its defaults after each test."""
    yield server
    server.delay = 0.0
    server.sudo_password = ""


@pytest.fixture
def known_hosts(srv: SSHTestServer, tmp_path: Path) -> Path:
    return srv.write_known_hosts(tmp_path / "known_hosts")
