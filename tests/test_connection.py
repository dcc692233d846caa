"""The `k8sha_ssh` connection against a real SSH server on loopback (tests/sshserver.py)."""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import paramiko
import pytest
import yaml
from nornir import InitNornir
from nornir.core.task import Result, Task

from nornir_k8sha.connection import K8shaSSH, SSHTransport
from nornir_k8sha.exceptions import CommandFailed, ConnectionFailed
from nornir_k8sha.transport import CommandTimeout, Transport
from tests.sshserver import SSHD, LocalSFTP, RealSSHD, SSHTestServer, connect, make_key

#: the two ways `k8sha_ssh` carries sessions: paramiko in this process, or an OpenSSH master
#: (sshmux) that outlives it; every test on `conn` runs on both
TRANSPORTS = [pytest.param(0, id="paramiko"), pytest.param(60, id="openssh-master")]


@pytest.fixture(params=TRANSPORTS)
def persist(request: pytest.FixtureRequest) -> float:
    return request.param


@pytest.fixture
def conn(srv: SSHTestServer, known_hosts: Path, persist: float) -> Iterator[SSHTransport]:
    c = connect(srv, known_hosts, persist=persist)
    assert c.persistent == (persist > 0)
    yield c
    c.close()


# --- commands ---------------------------------------------------------------------------


def test_exit_code_and_separate_streams(conn: SSHTransport) -> None:
    r = conn.run("echo out; echo err >&2; exit 3", check=False)
    assert (r.exit_code, r.stdout, r.stderr) == (3, "out\n", "err\n")
    assert r.command == "echo out; echo err >&2; exit 3" and r.duration > 0
    assert isinstance(conn, Transport)


def test_failure_names_host_command_code_and_stderr(conn: SSHTransport) -> None:
    with pytest.raises(CommandFailed) as info:
        conn.run("echo boom >&2; exit 5")
    e = info.value
    assert (e.host, e.command, e.exit_code, e.stderr) == ("node1", "echo boom >&2; exit 5", 5,
                                                         "boom\n")
    assert "node1" in str(e) and "exited 5" in str(e) and "boom" in str(e)


def test_stdin_reaches_the_command(conn: SSHTransport) -> None:
    assert conn.run("cat", stdin=b"hello\x00world").stdout == "hello\x00world"
    assert conn.run("wc -c", stdin="").stdout.strip() == "0"


def test_batch_runs_in_one_channel_with_per_command_codes(
        conn: SSHTransport, srv: SSHTestServer) -> None:
    before = len(srv.commands)
    cmds = ["echo a", "printf 'no newline'", "echo 'it''s' \"$HOME\" | tr a-z A-Z",
            "cat <<'EOF'\nheredoc $x\nEOF", "exit 0; echo never", "echo e >&2; false"]
    results = conn.run_batch(cmds, check=False)
    assert len(srv.commands) == before + 1
    assert [r.command for r in results] == cmds
    assert [r.exit_code for r in results] == [0, 0, 0, 0, 0, 1]
    assert results[0].stdout == "a\n"
    assert results[1].stdout == "no newline"
    assert results[2].stdout.startswith("ITS ")
    assert results[3].stdout == "heredoc $x\n"
    assert results[4].stdout == ""
    assert (results[5].stdout, results[5].stderr) == ("", "e\n")


def test_batch_stops_at_a_failing_middle_command(conn: SSHTransport, tmp_path: Path) -> None:
    marker = tmp_path / "third-ran"
    cmds = ["echo one", "echo bad >&2; exit 7", f"touch {marker}"]
    results = conn.run_batch(cmds, check=False)
    assert [r.exit_code for r in results] == [0, 7]
    assert results[1].stderr == "bad\n" and not marker.exists()
    with pytest.raises(CommandFailed) as info:
        conn.run_batch(cmds)
    assert info.value.command == "echo bad >&2; exit 7" and info.value.exit_code == 7
    results = conn.run_batch(cmds, stop_on_error=False, check=False)
    assert [r.exit_code for r in results] == [0, 7, 0] and marker.exists()


def test_batching_beats_one_channel_per_command(conn: SSHTransport, srv: SSHTestServer) -> None:
    """A batch is one session (one exec request on the wire), whatever it holds; what that
    saves in time is measured in bench/, never asserted here."""
    srv.delay = 0.1  # what sshd costs per new session on a real host
    cmds = [f"echo {i}" for i in range(20)]
    before = len(srv.commands)
    t0 = time.monotonic()
    batch = conn.run_batch(cmds)
    t_batch = time.monotonic() - t0
    sessions_for_batch = len(srv.commands) - before
    t0 = time.monotonic()
    separate = [conn.run(c) for c in cmds]
    t_separate = time.monotonic() - t0
    print(f"\n20 commands: one channel {t_batch:.2f}s, separate channels {t_separate:.2f}s")
    assert [r.stdout for r in batch] == [r.stdout for r in separate] == [f"{i}\n"
                                                                         for i in range(20)]
    assert sessions_for_batch == 1 and len(srv.commands) - before == 21


def test_command_timeout_and_connection_still_usable(conn: SSHTransport) -> None:
    t0 = time.monotonic()
    with pytest.raises(CommandTimeout) as info:
        conn.run("sleep 10", timeout=0.5)
    assert time.monotonic() - t0 < 3
    assert info.value.exit_code == 124 and "timed out after 0.5s" in str(info.value)
    with pytest.raises(CommandTimeout) as info:
        conn.run_batch(["true", "sleep 10", "true"], timeout=0.5)
    assert info.value.command == "sleep 10"
    assert conn.run("echo still here").stdout == "still here\n"


def test_concurrent_use_from_eight_threads(conn: SSHTransport, tmp_path: Path) -> None:
    errors: list[BaseException] = []

    def worker(n: int) -> None:
        try:
            for round_ in range(3):
                cmds = [f"echo t{n}-r{round_}-c{i}; echo e{n}-{i} >&2" for i in range(10)]
                res = conn.run_batch(cmds)
                assert [r.stdout for r in res] == [f"t{n}-r{round_}-c{i}\n" for i in range(10)]
                assert [r.stderr for r in res] == [f"e{n}-{i}\n" for i in range(10)]
                assert conn.run(f"echo {n}").stdout == f"{n}\n"
                path = str(tmp_path / f"f{n}")
                conn.put(f"content {n} {round_}".encode(), path, 0o640)
                assert conn.get(path) == f"content {n} {round_}".encode()
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads)
    assert errors == []


def test_reconnects_after_the_connection_dropped(
        conn: SSHTransport, srv: SSHTestServer, tmp_path: Path) -> None:
    conn.put(b"before", str(tmp_path / "f"))
    srv.drop_connections()
    deadline = time.monotonic() + 5
    if conn.persistent:  # the master exits when its connection drops, and removes its socket
        while conn._master.alive() and time.monotonic() < deadline:  # type: ignore[union-attr]
            time.sleep(0.01)
    else:
        while (conn.client.get_transport().is_active()  # type: ignore[union-attr]
               and time.monotonic() < deadline):
            time.sleep(0.01)
    assert conn.run("echo back").stdout == "back\n"
    assert conn.get(str(tmp_path / "f")) == b"before"


# --- host keys and authentication -----------------------------------------------------------


def test_changed_host_key_is_refused(srv: SSHTestServer, tmp_path: Path,
                                     persist: float) -> None:
    other = make_key(tmp_path / "other")
    kh = srv.write_known_hosts(tmp_path / "known_hosts", other)
    with pytest.raises(ConnectionFailed) as info:
        connect(srv, kh, persist=persist)
    assert "does not match known_hosts" in str(info.value) and "node1" in str(info.value)


def test_unknown_host_is_refused_by_default(srv: SSHTestServer, tmp_path: Path,
                                            persist: float) -> None:
    kh = tmp_path / "known_hosts"
    kh.write_text("")
    with pytest.raises(ConnectionFailed) as info:
        connect(srv, kh, persist=persist)
    assert "not in" in str(info.value) and "strict_host_key" in str(info.value)
    with pytest.raises(ConnectionFailed, match="does not exist"):
        connect(srv, tmp_path / "missing", persist=persist)
    c = connect(srv, None, strict_host_key=False, persist=persist)  # the explicit opt-out
    assert c.persistent == (persist > 0)
    assert c.run("echo ok").stdout == "ok\n"
    c.close()


def test_bad_password_is_a_clear_error_without_the_secret(
        srv: SSHTestServer, known_hosts: Path) -> None:
    with pytest.raises(ConnectionFailed) as info:
        connect(srv, known_hosts, key_file=None, password="wrong-Secret-9")
    assert "authentication failed" in str(info.value)
    assert "wrong-Secret-9" not in str(info.value)


def test_connect_timeout(tmp_path: Path, known_hosts: Path, srv: SSHTestServer) -> None:
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(1)  # the kernel completes the handshake; nobody ever speaks SSH
    try:
        t0 = time.monotonic()
        with pytest.raises(ConnectionFailed):
            connect(srv, known_hosts, port=silent.getsockname()[1], connect_timeout=0.5)
        assert time.monotonic() - t0 < 3
    finally:
        silent.close()


# --- sudo ---------------------------------------------------------------------------------


def test_sudo_password_goes_on_stdin_only(srv: SSHTestServer, known_hosts: Path,
                                          caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    srv.sudo_password = srv.password
    before = len(srv.commands)
    c = connect(srv, known_hosts, key_file=None, username="deploy", password=srv.password)
    try:
        assert c.run("cat", sudo=True, stdin=b"payload").stdout == "payload"
        assert c.run("echo x").stdout == "x\n"  # non-root: sudo by default
        assert c.run("echo plain", sudo=False).stdout == "plain\n"
        with pytest.raises(CommandFailed) as info:
            c.run("echo failing >&2; exit 4", sudo=True)
        assert info.value.exit_code == 4 and info.value.stderr == "failing\n"
        batch = c.run_batch(["echo a", "cat; echo b"])
        assert [r.stdout for r in batch] == ["a\n", "b\n"]
        texts = [str(info.value)]
    finally:
        c.close()
    wire = srv.commands[before:]
    assert any(w.startswith("sudo -S") for w in wire)
    assert not [w for w in wire if srv.password in w]
    assert not [t for t in texts if srv.password in t]
    assert "`cat` -> 0" in caplog.text and srv.password not in caplog.text


def test_wrong_sudo_password_fails_without_leaking(srv: SSHTestServer, known_hosts: Path) -> None:
    srv.sudo_password = "the-real-one"
    before = len(srv.commands)
    c = connect(srv, known_hosts, key_file=None, username="deploy", password=srv.password)
    try:
        with pytest.raises(CommandFailed) as info:
            c.run("id", sudo=True, timeout=5)
    finally:
        c.close()
    assert "incorrect password" in str(info.value)
    assert srv.password not in str(info.value) and srv.password not in repr(info.value.args)
    assert not [w for w in srv.commands[before:] if srv.password in w]


def test_passwordless_sudo_never_feeds_the_password_to_the_command(
        srv: SSHTestServer, known_hosts: Path) -> None:
    srv.sudo_password = ""  # NOPASSWD: sudo does not read stdin
    c = connect(srv, known_hosts, key_file=None, username="deploy", password=srv.password)
    try:
        assert c.run("cat", sudo=True, stdin=b"only this").stdout == "only this"
    finally:
        c.close()


def test_sudo_without_a_password_says_so(srv: SSHTestServer, known_hosts: Path) -> None:
    srv.sudo_password = "needed"
    c = connect(srv, known_hosts, username="deploy")  # key auth, no password known
    try:
        with pytest.raises(CommandFailed, match="a password is required"):
            c.run("id", sudo=True)
    finally:
        c.close()


# --- files --------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, 32768, 32769, 300_000])
def test_get_reads_files_of_every_size_and_prefetches_only_big_ones(
        conn: SSHTransport, tmp_path: Path, size: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """A file that fits one SFTP read request is read in one, without paramiko's prefetch
    (a thread per file, and a reader spinning on a lock until the thread catches up); a bigger
    one is prefetched."""
    prefetched: list[int] = []
    real = paramiko.SFTPFile.prefetch
    monkeypatch.setattr(paramiko.SFTPFile, "prefetch",
                        lambda f, size=None, *a, **k: prefetched.append(size) or real(f, size,
                                                                                     *a, **k))
    path = tmp_path / "f"
    data = os.urandom(size)
    path.write_bytes(data)
    assert conn.get(str(path)) == data
    assert prefetched == ([size] if size > 32768 else [])


def test_get_reads_a_file_that_does_not_say_its_size(conn: SSHTransport) -> None:
    """/proc files report size 0 and still have content."""
    assert b"Name:" in (conn.get("/proc/self/status") or b"")


def test_put_get_round_trip_and_mode(conn: SSHTransport, tmp_path: Path) -> None:
    path = tmp_path / "deep" / "dir" / "secret.key"
    data = bytes(range(256)) * 100
    conn.put(data, str(path), 0o600)
    assert path.read_bytes() == data
    assert path.stat().st_mode & 0o777 == 0o600
    assert conn.get(str(path)) == data
    info = conn.stat(str(path))
    assert info is not None and info.mode == 0o600
    conn.put("v2\n", str(path), 0o644)
    assert path.read_text() == "v2\n" and path.stat().st_mode & 0o777 == 0o644
    assert [p.name for p in path.parent.iterdir()] == ["secret.key"]  # no temp left behind
    assert conn.get(str(tmp_path / "missing")) is None
    assert conn.stat(str(tmp_path / "missing")) is None
    conn.rename(str(path), str(tmp_path / "moved"))
    assert (tmp_path / "moved").read_text() == "v2\n" and not path.exists()
    conn.remove(str(tmp_path / "moved"))
    conn.remove(str(tmp_path / "moved"))  # absent: fine
    assert not (tmp_path / "moved").exists()


def test_a_stat_right_after_a_get_costs_no_round_trip(conn: SSHTransport, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """`host.file` reads a file and then its mode and owner: the read's own fstat answers the
    second question (issue 12.3); after a write through the connection the server is asked."""
    path, other = str(tmp_path / "f"), str(tmp_path / "other")
    conn.put("x\n", path, 0o640)
    conn.put("y\n", other, 0o600)
    asked: list[str] = []
    real = LocalSFTP.stat
    monkeypatch.setattr(LocalSFTP, "stat", lambda self, p: asked.append(p) or real(self, p))
    assert conn.get(path) == b"x\n"
    info = conn.stat(path)
    assert info is not None and info.mode == 0o640 and asked == []
    assert conn.stat(path) is not None and asked == [path]  # once only
    conn.get(path)
    assert conn.stat(other) is not None and asked == [path, other]  # another file
    conn.get(path)
    conn.put("z\n", path, 0o600)  # written since it was read: ask again
    info = conn.stat(path)
    assert info is not None and info.mode == 0o600 and asked.count(path) == 2


@pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")
def test_put_with_owner(conn: SSHTransport, tmp_path: Path) -> None:
    path = tmp_path / "owned"
    conn.put(b"x", str(path), 0o640, owner="nobody:nogroup")
    info = conn.stat(str(path))
    assert info is not None and (info.owner, info.group, info.mode) == ("nobody", "nogroup",
                                                                        0o640)
    conn.put(b"y", str(path), 0o600, owner="root")
    conn.put(b"z", str(path) + "2", 0o600, owner="nobody")  # the user's primary group
    assert conn.stat(str(path)) == type(info)(0o600, "root", "root")
    assert conn.stat(str(path) + "2") == type(info)(0o600, "nobody", "nogroup")


def test_files_through_sudo(srv: SSHTestServer, known_hosts: Path, tmp_path: Path) -> None:
    srv.sudo_password = srv.password
    c = connect(srv, known_hosts, key_file=None, username="deploy", password=srv.password)
    path = tmp_path / "etc" / "app.conf"
    try:
        c.put(b"a=1\n", str(path), 0o600)
        assert path.read_bytes() == b"a=1\n" and path.stat().st_mode & 0o777 == 0o600
        assert c.get(str(path)) == b"a=1\n"
        assert c.get(str(tmp_path / "nope")) is None
        info = c.stat(str(path))
        assert info is not None and info.mode == 0o600
        c.rename(str(path), str(path) + ".new")
        assert c.get(str(path)) is None
        c.remove(str(path) + ".new")
        assert not (tmp_path / "etc" / "app.conf.new").exists()
    finally:
        c.close()


# --- the Nornir plugin ---------------------------------------------------------------------


def _nornir(tmp_path: Path, srv: SSHTestServer, extras: dict) -> object:
    inv = tmp_path / "inv"
    inv.mkdir()
    (inv / "hosts.yaml").write_text(yaml.safe_dump({"node1": {
        "hostname": "127.0.0.1", "port": srv.port, "username": "root",
        "connection_options": {"k8sha_ssh": {"extras": extras}}}}))
    (inv / "groups.yaml").write_text("{}\n")
    (inv / "defaults.yaml").write_text("{}\n")
    return InitNornir(inventory={"plugin": "SimpleInventory", "options": {
        "host_file": str(inv / "hosts.yaml"), "group_file": str(inv / "groups.yaml"),
        "defaults_file": str(inv / "defaults.yaml")}}, logging={"enabled": False})


def _hostname_task(task: Task) -> Result:
    conn = task.host.get_connection("k8sha_ssh", task.nornir.config)
    return Result(host=task.host, result=conn.run("echo hi from $0").stdout)


def test_nornir_plugin_with_relative_paths(
        srv: SSHTestServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    state = tmp_path / ".k8sha" / "ssh"
    state.mkdir(parents=True)
    (state / "id").write_bytes(srv.client_key_file.read_bytes())
    (state / "id").chmod(0o600)
    srv.write_known_hosts(state / "known_hosts")
    monkeypatch.chdir(tmp_path)
    nr = _nornir(tmp_path, srv, {"key_file": ".k8sha/ssh/id",
                                 "known_hosts": ".k8sha/ssh/known_hosts"})
    try:
        res = nr.run(task=_hostname_task)  # type: ignore[attr-defined]
        assert not res.failed, res["node1"].exception
        assert res["node1"].result.startswith("hi from")
        plugin = nr.inventory.hosts["node1"].connections["k8sha_ssh"]  # type: ignore[attr-defined]
        assert isinstance(plugin, K8shaSSH)
    finally:
        nr.close_connections()  # type: ignore[attr-defined]


def test_nornir_plugin_rejects_unknown_extras(srv: SSHTestServer, tmp_path: Path) -> None:
    nr = _nornir(tmp_path, srv, {"keyfile": "typo"})
    res = nr.run(task=_hostname_task)  # type: ignore[attr-defined]
    assert res.failed
    assert "unknown k8sha_ssh extras: ['keyfile']" in str(res["node1"].exception)


# --- against OpenSSH's own sshd ----------------------------------------------------------

needs_sshd = pytest.mark.skipif(not SSHD.exists() or os.geteuid() != 0,
                                reason="needs root and /usr/sbin/sshd (openssh-server)")


@pytest.fixture(scope="module")
def openssh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SSHTransport]:
    directory = tmp_path_factory.mktemp("openssh")
    sshd = RealSSHD(directory).start()
    conn = SSHTransport("real", "127.0.0.1", port=sshd.port, key_file=sshd.client_key_file,
                        known_hosts=sshd.write_known_hosts(directory / "known_hosts"),
                        connect_timeout=5.0, command_timeout=30.0)
    yield conn
    conn.close()
    sshd.stop()


@needs_sshd
def test_openssh_commands_and_batches(openssh: SSHTransport) -> None:
    r = openssh.run("echo out; echo err >&2; exit 3", check=False)
    assert (r.exit_code, r.stdout, r.stderr) == (3, "out\n", "err\n")
    res = openssh.run_batch(["echo a", "echo b >&2; exit 2", "echo c"], check=False)
    assert [(x.exit_code, x.stdout, x.stderr) for x in res] == [(0, "a\n", ""), (2, "", "b\n")]


@needs_sshd
def test_openssh_sftp_files(openssh: SSHTransport, tmp_path: Path) -> None:
    path = tmp_path / "etc" / "pki" / "server.key"
    openssh.put(b"KEY", str(path), 0o600, owner="nobody")
    info = openssh.stat(str(path))
    assert info is not None and (info.mode, info.owner, info.group) == (0o600, "nobody",
                                                                        "nogroup")
    assert openssh.get(str(path)) == b"KEY" and openssh.get(str(tmp_path / "no")) is None
    openssh.rename(str(path), str(path) + ".bak")
    assert openssh.get(str(path)) is None and (tmp_path / "etc/pki/server.key.bak").exists()


@needs_sshd
def test_openssh_more_threads_than_sessions(openssh: SSHTransport, tmp_path: Path) -> None:
    """12 threads on one connection: OpenSSH allows 10 sessions; the plugin must queue."""
    errors: list[BaseException] = []

    def worker(n: int) -> None:
        try:
            for k in range(3):
                res = openssh.run_batch([f"echo {n}-{k}-{i}" for i in range(5)])
                assert [x.stdout for x in res] == [f"{n}-{k}-{i}\n" for i in range(5)]
                openssh.put(f"{n}{k}".encode(), str(tmp_path / f"f{n}"))
                assert openssh.get(str(tmp_path / f"f{n}")) == f"{n}{k}".encode()
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads) and errors == []
