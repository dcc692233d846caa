"""Persistent connections (`nornir_k8sha.sshmux`): the next process rides the master the last one
left, a master that dies under a session request costs one direct connection and is replaced,
and nothing persists where it should not (password logins, a control directory not ours)."""

from __future__ import annotations

import os
import socket
import struct
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from nornir_k8sha.connection import SSHTransport
from nornir_k8sha.sshcontrol import control_dir, stop_masters
from tests.sshserver import SSHTestServer

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SSHTestServer]:
    server = SSHTestServer(tmp_path_factory.mktemp("sshd")).start()
    yield server
    server.stop()


@pytest.fixture
def known_hosts(srv: SSHTestServer, tmp_path: Path) -> Path:
    return srv.write_known_hosts(tmp_path / "known_hosts")


def connect(srv: SSHTestServer, known_hosts: Path, **kw: object) -> SSHTransport:
    opts: dict = {"port": srv.port, "key_file": srv.client_key_file, "known_hosts": known_hosts,
                  "connect_timeout": 5.0, "command_timeout": 20.0}
    opts.update(kw)
    return SSHTransport("node1", "127.0.0.1", **opts)  # type: ignore[arg-type]


def test_the_next_process_rides_the_master_without_a_handshake(
        srv: SSHTestServer, known_hosts: Path) -> None:
    before = srv.handshakes
    code = (f"from nornir_k8sha.connection import SSHTransport\n"
            f"c = SSHTransport('node1', '127.0.0.1', port={srv.port}, "
            f"key_file={str(srv.client_key_file)!r}, known_hosts={str(known_hosts)!r})\n"
            f"print(c.run('echo first').stdout, end='')\nc.close()\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                         text=True, timeout=60)
    assert out.stdout == "first\n", out.stderr
    assert srv.handshakes == before + 1  # the process that has ended connected once
    c = connect(srv, known_hosts)
    try:
        assert c.persistent and c._master_starts == 0  # found the master alive: no handshake
        assert c.run("echo second").stdout == "second\n"
        assert [r.stdout for r in c.run_batch(["echo a", "echo b"])] == ["a\n", "b\n"]
        c.put(b"data", str(known_hosts.parent / "f"))
        assert c.get(str(known_hosts.parent / "f")) == b"data"
    finally:
        c.close()
    assert srv.handshakes == before + 1


def _fake_master(path: Path, requests: list[bytes]) -> socket.socket:
    """A control socket that greets like a master, takes one request and dies (unlinking its
    socket, as a master does), as a master whose host rebooted under it would."""
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(path))
    listener.listen(1)

    def packet(conn: socket.socket) -> bytes:
        head = conn.recv(4, socket.MSG_WAITALL)
        size = struct.unpack(">I", head)[0] if len(head) == 4 else 0
        return conn.recv(size, socket.MSG_WAITALL) if size else b""

    def serve() -> None:
        conn, _ = listener.accept()
        with conn:
            hello = struct.pack(">II", 1, 4)  # MUX_MSG_HELLO, protocol version 4
            conn.sendall(struct.pack(">I", len(hello)) + hello)
            packet(conn)  # the client's hello
            alive = packet(conn)  # MUX_C_ALIVE_CHECK, request id: "yes" (MUX_S_ALIVE, id, pid)
            reply = struct.pack(">III", 0x80000005, struct.unpack(">II", alive[:8])[1],
                                os.getpid())
            conn.sendall(struct.pack(">I", len(reply)) + reply)
            requests.append(packet(conn))  # its session request: never answered
            path.unlink()
        listener.close()

    threading.Thread(target=serve, daemon=True).start()
    return listener


def test_a_master_that_dies_under_a_session_request_is_replaced(
        srv: SSHTestServer, known_hosts: Path) -> None:
    c = connect(srv, known_hosts)
    try:
        assert c._master is not None
        c._master.stop()
        requests: list[bytes] = []
        _fake_master(c._master.socket, requests)
        starts, before = c._master_starts, srv.handshakes
        assert c.run("echo survived").stdout == "survived\n"
        assert len(requests) == 1  # it went to the dying master, then connected on its own
        assert c._master_starts == starts and srv.handshakes == before + 1
        assert c.run("echo again").stdout == "again\n"
        assert c._master_starts == starts + 1  # the next command started a new master
        assert c.run("echo rides").stdout == "rides\n" and srv.handshakes == before + 2
    finally:
        c.close()


def test_password_logins_stay_on_paramiko(srv: SSHTestServer, known_hosts: Path) -> None:
    c = connect(srv, known_hosts, key_file=None, username="deploy", password=srv.password)
    try:
        assert not c.persistent and c.run("echo pw").stdout == "pw\n"
    finally:
        c.close()


def test_persist_zero_is_one_connection_of_this_process(
        srv: SSHTestServer, known_hosts: Path) -> None:
    c = connect(srv, known_hosts, persist=0)
    try:
        assert not c.persistent and c.client is not None
    finally:
        c.close()


def test_a_control_directory_that_is_not_ours_is_never_used(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, srv: SSHTestServer,
        known_hosts: Path) -> None:
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / f"nornir-k8sha-ssh-{os.getuid()}").symlink_to(elsewhere)
    assert control_dir() is None
    c = connect(srv, known_hosts)
    try:
        assert not c.persistent and c.run("echo safe").stdout == "safe\n"
    finally:
        c.close()


def test_the_control_directory_is_private(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                          ) -> None:
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    made = tmp_path / f"nornir-k8sha-ssh-{os.getuid()}"
    made.mkdir(mode=0o755)
    made.chmod(0o755)
    assert control_dir() == made and made.stat().st_mode & 0o777 == 0o700


def test_stop_masters_ends_only_the_masters_to_those_addresses(
        srv: SSHTestServer, known_hosts: Path) -> None:
    c = connect(srv, known_hosts)
    try:
        assert c._master is not None and c._master.alive()
        assert stop_masters(["10.88.0.250"]) == 0 and c._master.alive()  # another address
        assert stop_masters(["127.0.0.1"]) >= 1
        assert not c._master.alive()
        assert c.run("echo next").stdout == "next\n"  # the next command starts a new one
        assert c._master.alive()
    finally:
        c.close()
