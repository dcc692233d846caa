"""Persistent connections (`nornir_k8sha.sshmux`): the next process rides the master the last one
left, a master that dies under a session request costs one direct connection and is replaced,
and nothing persists where it should not (password logins, a control directory not ours)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from nornir_k8sha.connection import SSHTransport
from nornir_k8sha.exceptions import CommandFailed, ConnectionFailed
from nornir_k8sha.sshcontrol import SSH_BINARY, control_dir, stop_masters
from nornir_k8sha.transport import CommandResult
from tests.sshserver import SSHD, RealSSHD, SSHTestServer, connect

REPO = Path(__file__).resolve().parent.parent


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
        marker = known_hosts.parent / "ran"
        before = srv.handshakes
        c.run(f"echo once >> {marker}")
        assert len(requests) == 1  # the request went to the dying master first
        # then either OpenSSH connected on its own ("read from master failed") or, when the
        # client died passing its stdio ("send fds failed"), we ran it again on a new master:
        assert marker.read_text() == "once\n"  # either way it ran exactly once
        assert c.run("echo rides").stdout == "rides\n" and c._master.alive()
        settled = srv.handshakes
        assert settled in (before + 1, before + 2)
        assert c.run("echo still").stdout == "still\n" and srv.handshakes == settled
    finally:
        c.close()


def test_sessions_riding_a_master_start_no_local_process(
        srv: SSHTestServer, known_hosts: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A command, a batch and SFTP riding a master are sessions we ask the master for over its
    control socket (OpenSSH's mux protocol), not `ssh` client processes: each process cost
    the controller ~6 ms of CPU, ten of them per fresh worker."""
    c = connect(srv, known_hosts)
    try:
        assert c.persistent
        spawned: list[object] = []
        real_popen = subprocess.Popen

        def recorded(argv: object, *args: object, **kwargs: object) -> object:
            if isinstance(argv, list) and argv[:1] == [SSH_BINARY]:  # not the test server's
                spawned.append(argv)
            return real_popen(argv, *args, **kwargs)  # type: ignore[call-overload]

        monkeypatch.setattr(subprocess, "Popen", recorded)
        assert c.run("echo one").stdout == "one\n"
        assert [r.stdout for r in c.run_batch(["echo a", "echo b"])] == ["a\n", "b\n"]
        failed = c.run("echo oops >&2; exit 7", check=False)
        assert (failed.exit_code, failed.stderr) == (7, "oops\n")
        assert c.run("cat", stdin=b"fed").stdout == "fed"
        path = str(known_hosts.parent / "f")
        c.put(b"data", path)
        assert c.get(path) == b"data"
        assert spawned == []
    finally:
        c.close()


def test_a_command_that_writes_before_it_reads_a_large_stdin_does_not_stall(
        srv: SSHTestServer, known_hosts: Path) -> None:
    """Sessions riding a master have no reader thread: while the command's stdin pipe is
    full, its output must still be taken in, or a command that writes a lot before it reads
    (both pipes full) would wait on us while we wait on it."""
    c = connect(srv, known_hosts)
    try:
        assert c.persistent
        fed = os.urandom(4 << 20)  # more than the SSH channel's window and the pipes hold
        got: list[object] = []
        runner = threading.Thread(target=lambda: got.append(c.run(
            "head -c 8000000 /dev/zero; wc -c; echo done >&2", stdin=fed)), daemon=True)
        runner.start()
        runner.join(60)  # a stall would hang here for good: bounded, and fails
        assert got, "the command stalled: its output was not taken in while stdin was fed"
        r = got[0]
        assert isinstance(r, CommandResult) and len(r.stdout) == 8000000 + len("4194304\n")
        assert r.stdout.endswith("4194304\n") and r.stderr == "done\n"
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


def _masters(sock: Path) -> list[int]:
    """PIDs of ssh processes started as a master on this control socket."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"ControlPath={sock}".encode() in argv and b"ControlMaster=yes" in argv:
            pids.append(int(proc.name))
    return pids


def test_connections_opened_at_once_start_one_master(srv: SSHTestServer,
                                                    known_hosts: Path) -> None:
    """Check rows open their own connection to one host at the same moment: one master is
    started, and no loser lingers as a plain background connection."""
    before = srv.handshakes
    conns: list[SSHTransport] = []
    lock = threading.Lock()

    def open_one() -> None:
        c = connect(srv, known_hosts)
        with lock:
            conns.append(c)

    threads = [threading.Thread(target=open_one) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    try:
        assert len(conns) == 6 and srv.handshakes == before + 1
        assert sum(c.handshake for c in conns) == 1
        assert all(c.run("echo one").stdout == "one\n" for c in conns)
        sock = conns[0]._master.socket  # type: ignore[union-attr]
        assert len(_masters(sock)) == 1
        # one lock file per address and port, however many configurations reach it
        assert sorted(p.name for p in sock.parent.glob(f"127.0.0.1~{srv.port}*.lock")) == [
            f"127.0.0.1~{srv.port}.lock"]
    finally:
        for c in conns:
            c.close()


def test_a_socket_left_by_a_killed_master_is_replaced(srv: SSHTestServer,
                                                      known_hosts: Path) -> None:
    c = connect(srv, known_hosts)
    sock = c._master.socket  # type: ignore[union-attr]
    c.close()
    for pid in _masters(sock):
        os.kill(pid, signal.SIGKILL)  # no chance to remove its socket
    deadline = time.monotonic() + 5
    while _masters(sock) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sock.exists()
    before = srv.handshakes
    again = connect(srv, known_hosts)
    try:
        assert again.handshake and srv.handshakes == before + 1
        assert again.run("echo fresh").stdout == "fresh\n"
        assert len(_masters(sock)) == 1
    finally:
        again.close()


needs_sshd = pytest.mark.skipif(not SSHD.exists() or os.geteuid() != 0,
                                reason="needs root and /usr/sbin/sshd (openssh-server)")


def _children(pid: int) -> list[int]:
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and int((proc / "stat").read_text().rsplit(")", 1)[1]
                                           .split()[1]) == pid:
                found.append(int(proc.name))
        except OSError:
            continue
    return found


@needs_sshd
@pytest.mark.parametrize("shell", [True, False], ids=["shell", "cli"])
def test_a_master_whose_host_stopped_answering_is_replaced_within_the_connect_timeout(
        tmp_path: Path, shell: bool) -> None:
    """Riding a master skips the connect and its timeout. When the far end of a master stops
    answering (a cut link, a frozen host), a session must still fail or move on within the
    connect timeout, not hang until keep-alives give up (45 s). Also for a login without a
    shell (a switch CLI: the client, not a marker the shell prints, says the session opened)."""
    sshd = RealSSHD(tmp_path / "sshd").start()
    assert sshd.proc is not None
    frozen: list[int] = []
    try:
        c = SSHTransport("real", "127.0.0.1", port=sshd.port, key_file=sshd.client_key_file,
                         known_hosts=sshd.write_known_hosts(tmp_path / "kh"),
                         connect_timeout=1.0, command_timeout=30.0, shell=shell)
        assert c.persistent and c.run("echo up").stdout == "up\n"
        c.put(b"x", str(tmp_path / "f"))
        frozen = _children(sshd.proc.pid)  # the sshd serving the master: it stops answering
        assert frozen
        for pid in frozen:
            os.kill(pid, signal.SIGSTOP)
        t0 = time.monotonic()
        assert c.run("echo moved").stdout == "moved\n"  # on a new master, the listener answers
        assert time.monotonic() - t0 < 10
        assert c._master_starts == 2
        fresh = SSHTransport("real", "127.0.0.1", port=sshd.port,
                             key_file=sshd.client_key_file, known_hosts=tmp_path / "kh",
                             connect_timeout=1.0)
        assert not fresh.handshake  # it found the new master
        more = [p for p in _children(sshd.proc.pid) if p not in frozen]
        for pid in more:  # that one stops answering too: SFTP must not wait for it either
            os.kill(pid, signal.SIGSTOP)
        frozen += more
        t0 = time.monotonic()
        assert fresh.get(str(tmp_path / "f")) == b"x"
        assert time.monotonic() - t0 < 10
        fresh.close()
        c.close()
    finally:
        for pid in frozen:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGCONT)
        sshd.stop()


@needs_sshd
def test_sessions_the_host_refuses_are_asked_again(tmp_path: Path) -> None:
    """sshd allows MaxSessions sessions per connection. Every process riding a master shares
    them, so the host may refuse one: nothing ran, and it is asked for again until a session
    ends (for up to a connect timeout), not failed."""
    sshd = RealSSHD(tmp_path / "sshd").start(extra_config="MaxSessions 2\n")
    try:
        c = SSHTransport("real", "127.0.0.1", port=sshd.port, key_file=sshd.client_key_file,
                         known_hosts=sshd.write_known_hosts(tmp_path / "kh"),
                         connect_timeout=5.0, max_sessions=6)
        assert c.persistent
        with ThreadPoolExecutor(6) as pool:
            outs = list(pool.map(lambda i: c.run(f"sleep 0.3; echo {i}").stdout, range(6)))
        assert outs == [f"{i}\n" for i in range(6)]
        c.close()
    finally:
        sshd.stop()


@needs_sshd
@pytest.mark.parametrize("kex", [None, "curve25519-sha256"])
def test_the_key_exchange_is_the_clients_default_unless_kex_algorithms_says(
        tmp_path: Path, kex: str | None) -> None:
    """OpenSSH 9.2's default key exchange is post-quantum (sntrup761x25519-sha512), ~60 ms of
    the controller's CPU per handshake on the lab's VM; `kex_algorithms` lets an operator
    trade it for a classical one (~10 ms). The host sees what was negotiated."""
    sshd = RealSSHD(tmp_path / "sshd").start(extra_config="LogLevel DEBUG1\n")
    try:
        c = SSHTransport("real", "127.0.0.1", port=sshd.port, key_file=sshd.client_key_file,
                         known_hosts=sshd.write_known_hosts(tmp_path / "kh"),
                         kex_algorithms=kex)
        assert c.persistent and c.run("echo up").stdout == "up\n"
        c.close()
        assert c._master is not None
        c._master.stop()
        paramiko_login = SSHTransport("real", "127.0.0.1", port=sshd.port,
                                      key_file=sshd.client_key_file,
                                      known_hosts=tmp_path / "kh", persist=0, kex_algorithms=kex)
        assert paramiko_login.run("echo pm").stdout == "pm\n"
        paramiko_login.close()
    finally:
        sshd.stop()
    log = (tmp_path / "sshd" / "sshd.log").read_text(errors="replace")
    agreed = [line.split("kex: algorithm: ")[1].split()[0] for line in log.splitlines()
              if "kex: algorithm: " in line]
    # the master's, then paramiko's (which offers no post-quantum exchange at all)
    assert agreed == [kex or "sntrup761x25519-sha512", "curve25519-sha256@libssh.org"]


def test_a_login_without_a_shell_gets_each_command_as_it_is(
        srv: SSHTestServer, known_hosts: Path) -> None:
    """A switch's CLI (`shell: false`) runs what it is sent: no marker, no sudo, no batch
    script; its output and errors come back alone, without the client's own lines. A session
    seen open may run longer than the connect timeout."""
    c = connect(srv, known_hosts, shell=False, sudo=True, connect_timeout=1.0)
    try:
        assert c.run("sleep 1.5; echo late").stdout == "late\n"
        sent = len(srv.commands)
        res = c.run("echo plain; echo oops >&2; exit 3", check=False)
        assert (res.exit_code, res.stdout, res.stderr) == (3, "plain\n", "oops\n")
        assert srv.commands[sent:] == ["echo plain; echo oops >&2; exit 3"]
        with pytest.raises(CommandFailed, match="needs a shell"):
            c.run_batch(["echo a", "echo b"])
    finally:
        c.close()


def test_a_master_that_cannot_reconnect_names_the_inventory_host(
        srv: SSHTestServer, known_hosts: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The plugin opens by address and the task layer renames the connection to the inventory
    host; a later reconnect (the link was cut) must fail under that name, as paramiko's does."""
    c = connect(srv, known_hosts)
    try:
        c.host = "haproxy2"
        assert c._master is not None
        c._master.stop()

        def unreachable() -> bool:
            raise ConnectionFailed("127.0.0.1", "127.0.0.1: timed out after 1s")

        monkeypatch.setattr(c._master, "start", unreachable)
        with pytest.raises(ConnectionFailed) as info:
            c.run("true")
        assert info.value.host == "haproxy2"
        assert str(info.value).startswith("haproxy2: cannot connect: 127.0.0.1: timed out")
    finally:
        c.close()
