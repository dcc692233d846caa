"""A real SSH server on 127.0.0.1 for tests: paramiko's ServerInterface, exec through /bin/sh in a
subprocess, SFTP on the local filesystem, and a stand-in `sudo` first on PATH. With `shell` set,
interactive shell channels (with a pty) go to it: tests/fakeswitch.py's scripted switch CLIs.

Every exec request's command line is recorded in `commands` (what went over the wire), so a test
can prove a secret never appeared in argv. `delay` makes every new exec channel slow, like a
real sshd spawning a session (~100 ms).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import paramiko
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from paramiko.common import MSG_CHANNEL_REQUEST

from nornir_k8sha.connection import SSHTransport

FAKE_SUDO = r"""#!/bin/sh
# Test stand-in for sudo: -S (password on stdin, prompt from -p), -n (never ask), then the command.
mode=ask; prompt="[sudo] password: "
while [ $# -gt 0 ]; do
  case "$1" in
    -S) shift;; -n) mode=never; shift;; -p) prompt=$2; shift 2;; --) shift; break;; *) break;;
  esac
done
if [ -n "$FAKE_SUDO_PASSWORD" ]; then
  if [ "$mode" = never ]; then echo "sudo: a password is required" >&2; exit 1; fi
  n=0
  while [ $n -lt 3 ]; do
    printf '%s' "$prompt" >&2
    IFS= read -r pw || exit 1
    [ "$pw" = "$FAKE_SUDO_PASSWORD" ] && exec "$@"
    echo "Sorry, try again." >&2; n=$((n+1))
  done
  echo "sudo: 3 incorrect password attempts" >&2; exit 1
fi
exec "$@"
"""


def make_key(path: Path) -> paramiko.Ed25519Key:
    """A new ed25519 private key in OpenSSH format at `path` (0600)."""
    key = Ed25519PrivateKey.generate()
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.OpenSSH,
                                       serialization.NoEncryption()))
    path.chmod(0o600)
    return paramiko.Ed25519Key.from_private_key_file(str(path))


class _Handle(paramiko.SFTPHandle):
    def stat(self) -> Any:
        return paramiko.SFTPAttributes.from_stat(os.fstat(self.readfile.fileno()))

    def chattr(self, attr: paramiko.SFTPAttributes) -> int:
        paramiko.SFTPServer.set_file_attr(self.filename, attr)
        return paramiko.SFTP_OK


class LocalSFTP(paramiko.SFTPServerInterface):
    """SFTP onto this machine's filesystem (tests use paths under tmp_path)."""

    def _wrap(self, fn: Any, *args: Any) -> Any:
        try:
            return fn(*args)
        except OSError as e:
            return paramiko.SFTPServer.convert_errno(e.errno)

    def stat(self, path: str) -> Any:
        return self._wrap(lambda: paramiko.SFTPAttributes.from_stat(os.stat(path)))

    def lstat(self, path: str) -> Any:
        return self._wrap(lambda: paramiko.SFTPAttributes.from_stat(os.lstat(path)))

    def list_folder(self, path: str) -> Any:
        return self._wrap(lambda: [
            paramiko.SFTPAttributes.from_stat(os.lstat(os.path.join(path, n)), n)
            for n in os.listdir(path)])

    def open(self, path: str, flags: int, attr: paramiko.SFTPAttributes) -> Any:
        def do() -> Any:
            mode = getattr(attr, "st_mode", None)
            fd = os.open(path, flags, mode if mode is not None else 0o666)
            if flags & os.O_WRONLY:
                fstr = "ab" if flags & os.O_APPEND else "wb"
            elif flags & os.O_RDWR:
                fstr = "a+b" if flags & os.O_APPEND else "r+b"
            else:
                fstr = "rb"
            f = os.fdopen(fd, fstr)
            handle = _Handle(flags)
            handle.filename = path
            handle.readfile = f
            handle.writefile = f
            return handle
        return self._wrap(do)

    def remove(self, path: str) -> Any:
        return self._wrap(lambda: os.remove(path) or paramiko.SFTP_OK)

    def rename(self, old: str, new: str) -> Any:
        return self._wrap(lambda: os.rename(old, new) or paramiko.SFTP_OK)

    def posix_rename(self, old: str, new: str) -> Any:
        return self._wrap(lambda: os.rename(old, new) or paramiko.SFTP_OK)

    def mkdir(self, path: str, attr: paramiko.SFTPAttributes) -> Any:
        return self._wrap(lambda: os.mkdir(path, getattr(attr, "st_mode", None) or 0o755)
                          or paramiko.SFTP_OK)

    def rmdir(self, path: str) -> Any:
        return self._wrap(lambda: os.rmdir(path) or paramiko.SFTP_OK)

    def chattr(self, path: str, attr: paramiko.SFTPAttributes) -> Any:
        return self._wrap(lambda: paramiko.SFTPServer.set_file_attr(path, attr)
                          or paramiko.SFTP_OK)


class _Interface(paramiko.ServerInterface):
    def __init__(self, server: SSHTestServer) -> None:
        self.server = server

    def get_allowed_auths(self, username: str) -> str:
        return "publickey,password"

    def check_auth_password(self, username: str, password: str) -> int:
        ok = password == self.server.password
        return paramiko.AUTH_SUCCESSFUL if ok else paramiko.AUTH_FAILED

    def check_auth_publickey(self, username: str, key: paramiko.PKey) -> int:
        ok = key == self.server.client_key
        return paramiko.AUTH_SUCCESSFUL if ok else paramiko.AUTH_FAILED

    def check_channel_request(self, kind: str, chanid: int) -> int:
        if kind == "session":
            return paramiko.OPEN_SUCCEEDED
        return paramiko.OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED

    def check_channel_pty_request(self, channel: paramiko.Channel, *args: Any) -> bool:
        return self.server.shell is not None

    def check_channel_shell_request(self, channel: paramiko.Channel) -> bool:
        if self.server.shell is None:
            return False
        self.server.spawn(self.server.shell, channel)
        return True

    def check_channel_exec_request(self, channel: paramiko.Channel, command: bytes) -> bool:
        # Start only after paramiko has sent the request's success reply (see _after_request):
        # like OpenSSH, never let the channel close before the client saw the reply.
        channel._k8sha_exec = (self.server.exec, command.decode())  # type: ignore[attr-defined]
        return True


def _handle_request_then_exec(chan: paramiko.Channel, m: paramiko.Message) -> None:
    """paramiko's channel-request handler, then the exec it accepted (after the reply)."""
    paramiko.Channel._handle_request(chan, m)
    pending = chan.__dict__.pop("_k8sha_exec", None)
    if pending is not None:
        fn, command = pending
        fn.__self__.spawn(fn, chan, command)


# Transport dispatches channel messages through this class-level table (tests only).
paramiko.Transport._channel_handler_table[MSG_CHANNEL_REQUEST] = _handle_request_then_exec


class SSHTestServer:
    """Start with `start()`, stop with `stop()` (joins every thread it started)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.host_key = make_key(directory / "host_key")
        self.client_key_file = directory / "client_key"
        self.client_key = make_key(self.client_key_file)
        self.password = "s3cr3t-Pa55"
        self.delay = 0.0
        self.sudo_password = ""  # non-empty: the stand-in sudo asks for this password
        self.commands: list[str] = []
        #: Interactive shells (a switch CLI, tests/fakeswitch.py): called with each shell channel.
        self.shell: Any = None
        #: A login without a shell (a switch CLI): called with each exec request's channel and
        #: command instead of /bin/sh.
        self.cli: Any = None
        self.fakebin = directory / "bin"
        self.fakebin.mkdir(exist_ok=True)
        (self.fakebin / "sudo").write_text(FAKE_SUDO)
        (self.fakebin / "sudo").chmod(0o755)
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._transports: list[paramiko.Transport] = []
        self._procs: list[subprocess.Popen[bytes]] = []
        self._lock = threading.Lock()
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]

    def known_hosts_line(self, key: paramiko.PKey | None = None) -> str:
        key = key or self.host_key
        return f"[127.0.0.1]:{self.port} {key.get_name()} {key.get_base64()}\n"

    def write_known_hosts(self, path: Path, key: paramiko.PKey | None = None) -> Path:
        path.write_text(self.known_hosts_line(key))
        return path

    def netmiko_key_login(self) -> dict[str, Any]:
        """netmiko's extras for logging in here with the client key alone, checking the host
        key against a known_hosts file written beside the server's keys."""
        known = self.write_known_hosts(self.directory / "known_hosts")
        return {"use_keys": True, "key_file": str(self.client_key_file), "ssh_strict": True,
                "alt_host_keys": True, "alt_key_file": str(known)}

    # --- lifecycle ---
    def start(self) -> SSHTestServer:
        self.sock.listen(32)
        self.sock.settimeout(0.1)
        self.spawn(self._accept_loop)
        return self

    def stop(self) -> None:
        self._stop.set()
        self.sock.close()
        with self._lock:
            transports, procs = list(self._transports), list(self._procs)
        for t in transports:
            t.close()
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while True:
            with self._lock:
                threads = [t for t in self._threads if t.is_alive()]
            if not threads or time.monotonic() > deadline:
                break
            threads[0].join(timeout=max(0.0, deadline - time.monotonic()))
        for p in procs:
            p.wait(timeout=5)

    @property
    def handshakes(self) -> int:
        """SSH connections accepted so far (each one a handshake)."""
        with self._lock:
            return len(self._transports)

    def drop_connections(self) -> None:
        """Cut every client connection, as a host reboot would."""
        with self._lock:
            transports = list(self._transports)
        for t in transports:
            t.close()

    def spawn(self, fn: Any, *args: Any) -> None:
        t = threading.Thread(target=fn, args=args, daemon=True)
        with self._lock:
            self._threads.append(t)
        t.start()

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except (TimeoutError, OSError):
                continue
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # no Nagle stalls
            self.spawn(self._serve, conn)

    def _serve(self, conn: socket.socket) -> None:
        t = paramiko.Transport(conn)
        with self._lock:
            self._transports.append(t)
        t.add_server_key(self.host_key)
        t.set_subsystem_handler("sftp", paramiko.SFTPServer, LocalSFTP)
        try:
            t.start_server(server=_Interface(self))
        except (paramiko.SSHException, EOFError, OSError):
            t.close()
            return
        while t.is_active() and not self._stop.is_set():
            time.sleep(0.05)
        t.close()

    # --- exec ---
    def exec(self, chan: paramiko.Channel, command: str) -> None:
        with self._lock:
            self.commands.append(command)
        if self.cli is not None:
            self.cli(chan, command)
            return
        time.sleep(self.delay)
        env = {"PATH": f"{self.fakebin}:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8",
               "FAKE_SUDO_PASSWORD": self.sudo_password, "HOME": str(self.directory)}
        proc = subprocess.Popen(["/bin/sh", "-c", command], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                                start_new_session=True)
        with self._lock:
            self._procs.append(proc)
        pumps = [threading.Thread(target=_pump_out, args=(proc.stdout, chan.sendall)),
                 threading.Thread(target=_pump_out, args=(proc.stderr, chan.sendall_stderr))]
        for p in pumps:
            p.start()
        self.spawn(_pump_in, chan, proc)
        while proc.poll() is None:
            if chan.closed or self._stop.is_set():
                os.killpg(proc.pid, signal.SIGKILL)
            try:
                proc.wait(timeout=0.05)
            except subprocess.TimeoutExpired:
                pass
        for p in pumps:
            p.join(timeout=5)
        if not chan.closed:
            try:
                # exit-status, then EOF, then close: sshd's order (session.c). EOF first made
                # OpenSSH's ControlMaster lose the status now and then (the client exits 255)
                chan.send_exit_status(proc.returncode)
                chan.shutdown_write()
            except (OSError, EOFError, paramiko.SSHException):
                pass
        try:
            chan.close()
        except (OSError, EOFError, paramiko.SSHException):
            pass  # the client is gone already


def _pump_out(stream: Any, send: Any) -> None:
    try:
        while data := os.read(stream.fileno(), 65536):
            send(data)
    except (OSError, EOFError, paramiko.SSHException):
        pass
    finally:
        stream.close()


def _pump_in(chan: paramiko.Channel, proc: subprocess.Popen[bytes]) -> None:
    assert proc.stdin is not None
    try:
        while data := chan.recv(65536):
            proc.stdin.write(data)
            proc.stdin.flush()
    except (OSError, EOFError, paramiko.SSHException):
        pass
    finally:
        try:
            proc.stdin.close()
        except OSError:
            pass


SSHD = Path("/usr/sbin/sshd")


class RealSSHD:
    """OpenSSH's own sshd on 127.0.0.1 (root only): the real exec, sftp-server and MaxSessions."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.host_key = make_key(directory / "host_key")
        self.client_key_file = directory / "client_key"
        client = make_key(self.client_key_file)
        auth = directory / "authorized_keys"
        auth.write_text(f"{client.get_name()} {client.get_base64()}\n")
        auth.chmod(0o600)
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0

    def start(self, attempts: int = 3, *, extra_config: str = "") -> RealSSHD:
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege separation dir
        for _ in range(attempts):
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                self.port = s.getsockname()[1]
            cfg = self.directory / "sshd_config"
            cfg.write_text(
                f"ListenAddress 127.0.0.1\nPort {self.port}\nHostKey {self.directory}/host_key\n"
                f"AuthorizedKeysFile {self.directory}/authorized_keys\n"
                "PermitRootLogin prohibit-password\nPasswordAuthentication no\n"
                "KbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\nPidFile none\n"
                "UseDNS no\nSubsystem sftp /usr/lib/openssh/sftp-server\n" + extra_config)
            log = self.directory / "sshd.log"
            self.proc = subprocess.Popen([str(SSHD), "-D", "-e", "-f", str(cfg)],
                                         stdout=subprocess.DEVNULL, stderr=log.open("wb"))
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and self.proc.poll() is None:
                if "Server listening" in log.read_text(errors="replace"):
                    return self
                time.sleep(0.05)
            self.stop()
        raise RuntimeError(f"sshd did not start: {(self.directory / 'sshd.log').read_text()}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        self.proc = None

    def write_known_hosts(self, path: Path) -> Path:
        key = self.host_key
        path.write_text(f"[127.0.0.1]:{self.port} {key.get_name()} {key.get_base64()}\n")
        return path


def connect(srv: SSHTestServer, known_hosts: Path | None, **kw: Any) -> SSHTransport:
    """An `SSHTransport` as "node1" to the test server, with test-sized timeouts."""
    opts: dict[str, Any] = {"port": srv.port, "key_file": srv.client_key_file,
                            "known_hosts": known_hosts, "connect_timeout": 5.0,
                            "command_timeout": 20.0}
    opts.update(kw)
    return SSHTransport("node1", "127.0.0.1", **opts)
