"""Persistent SSH connections: OpenSSH's ControlMaster/ControlPersist under `k8sha_ssh`.

Why: a new SSH connection is the dearest thing a short command does. Measured on the lab
(2-core VM, 2026-12-04): a handshake costs the controller ~65 ms of CPU and the host ~50 ms
(a container) to ~190 ms (a user-mode-Linux director); a command multiplexed over an open
master costs ~7 ms of wall and ~3 ms of host CPU. Ansible reaches hosts the same way by default
(`ControlPersist=60s`). So, as there, the first command to a host starts a background `ssh`
master that outlives our process by `persist` idle seconds, and every command, batch and SFTP
session after it — in this process or the next `check` or `deploy` — is a local `ssh` client
process riding on that master: no handshake, no authentication, no new sshd process.

Safety:
- A control socket is named by a hash of everything that decides whom it reaches and how
  (user, address, port, key file, known_hosts, strict host-key checks), in a directory of our
  own that must be 0700 and ours; another configuration never shares a master.
- The host key is verified by OpenSSH against the same known_hosts `k8sha_ssh` uses
  (`StrictHostKeyChecking=yes`, no agent forwarding, `-F none`: no user config changes it).
- Commands reach the local `ssh` client's argv exactly as they go over the wire in an exec
  request; the project keeps secrets out of both (stdin or files carry them).
- Password logins cannot ride a master (BatchMode): they stay on paramiko.

A session must open within the connect timeout (`OpenSSHMaster.session`: a marker on stderr):
riding a master skips the connect and its timeout, and a master whose link was cut would hold
a request until its keep-alives give up. One that does not open in time is ended, its master
stopped, and the command runs once more on a new master, which has a connect timeout.
A master that is gone or dies is not fatal. A socket with no master behind it is removed
(`answers`). When a master dies under a session request (its host rebooted: the next packet
meets a reset), the OpenSSH client either connects on its own for that command ("read from
master failed": measured, exit 0 with the command's output) or dies before the session opened
("send fds failed", exit 255, nothing ran): then `SSHTransport` runs it once more on a new
master. Two connections opening at once start one master (a lock file per address).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import select
import socket
import subprocess
import tempfile
import threading
import uuid
from collections.abc import Sequence
from pathlib import Path

from nornir_k8sha import constants as C
from nornir_k8sha.exceptions import ConnectionFailed
from nornir_k8sha.sshcontrol import SSH_BINARY, exit_master, lock_path, socket_path

#: what the OpenSSH client dies with (exit 255) when its master vanished between accepting the
#: session request and receiving the client's stdio: the session never opened, the command
#: never ran (mux.c, mux_client_request_session). Other master failures it survives by itself,
#: connecting on its own; after the session opened a lost master is not safely retried.
NEVER_OPENED = (b"mux_client_request_session: send fds failed",
                b"mux_client_request_session: write packet")
#: what a client riding a master logs at debug1 when the master answers its session request,
#: which the master defers until the host has confirmed the channel open (mux.c: "reply is
#: deferred, sent by mux_session_confirm"): the session is open, whatever runs in it. With
#: what `-v` printed before it (its version line), none of it the command's.
OPENED_BY_CLIENT = re.compile(
    rb"\A[\s\S]*?debug1: mux_client_request_session: master session id: \d+\r?\n")


class OpenSSHMaster:
    """One host's OpenSSH master: starts it when missing, builds the client argv that rides it."""

    def __init__(self, host: str, hostname: str, *, port: int, username: str,
                 key_file: Path | None, known_hosts: Path | None, strict: bool,
                 connect_timeout: float, persist: float, directory: Path) -> None:
        self.host = host
        self.hostname = hostname
        self.persist = persist
        self.connect_timeout = connect_timeout
        self.known_hosts = known_hosts
        who = f"{username}@{hostname}:{port} key={key_file} kh={known_hosts} strict={strict}"
        self.socket = socket_path(directory, hostname, port, who)
        opts = {
            "BatchMode": "yes", "ControlPath": str(self.socket), "Port": str(port),
            "User": username, "ConnectTimeout": str(max(1, round(connect_timeout))),
            "ServerAliveInterval": str(C.SSH_KEEPALIVE_S), "ServerAliveCountMax": "3",
            "LogLevel": "ERROR", "ForwardAgent": "no", "ClearAllForwardings": "yes",
        }
        if key_file is not None:
            opts.update(IdentityFile=str(key_file), IdentitiesOnly="yes")
        if strict:
            opts.update(StrictHostKeyChecking="yes",
                        UserKnownHostsFile=str(known_hosts or "~/.ssh/known_hosts"))
        else:
            opts.update(StrictHostKeyChecking="no", UserKnownHostsFile="/dev/null")
        self._base = [SSH_BINARY, "-F", "none"]
        for key, value in opts.items():
            self._base += ["-o", f"{key}={value}"]

    # --- the master -----------------------------------------------------------------------

    def alive(self) -> bool:
        """The master's socket is there (a master removes it when it exits): the cheap test
        before every session."""
        return self.socket.exists()

    def answers(self) -> bool:
        """A master accepts on the socket. A socket left by a master that was killed is removed
        (OpenSSH would fall back to a new connection for every command, and never bind again)."""
        try:
            with socket.socket(socket.AF_UNIX) as probe:
                probe.connect(str(self.socket))
            return True
        except ConnectionRefusedError:
            with contextlib.suppress(OSError):
                self.socket.unlink()
            return False
        except OSError:
            return False

    def start(self) -> bool:
        """Connect and leave a master in the background for `persist` idle seconds. False when
        another connection or process started one meanwhile (a lock file per address keeps
        two from starting at once: the loser would linger as a plain backgrounded connection)."""
        with open(lock_path(self.socket), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if self.answers():
                return False
            self._start()
            return True

    def _start(self) -> None:
        argv = [*self._base, "-o", "ControlMaster=yes", "-o", f"ControlPersist={self.persist:g}",
                "-f", "-N", "--", self.hostname]
        # -f: the master forks once authenticated and keeps the stderr it was given, so that is
        # a file (a pipe would never see its end), read only when the start failed
        with tempfile.TemporaryFile() as errors:
            try:
                code = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                      stderr=errors, start_new_session=True,
                                      timeout=self.connect_timeout + 5).returncode
            except subprocess.TimeoutExpired:
                raise ConnectionFailed(self.host, f"{self.hostname}: timed out after "
                                       f"{self.connect_timeout:g}s") from None
            if code != 0:
                errors.seek(0)
                raise ConnectionFailed(self.host, f"{self.hostname}: {self._reason(errors.read())}")

    def stop(self) -> None:
        """End the master now, and remove its socket if no master was behind it any more;
        nothing when there is none. The next session starts a new one."""
        if self.alive():
            exit_master(self.socket)
            self.answers()

    def _reason(self, stderr: bytes) -> str:
        """What the failed start means, in the words paramiko's path uses for the same."""
        lines = [ln.strip() for ln in stderr.decode("utf-8", errors="replace").splitlines()
                 if ln.strip()]
        text = lines[-1] if lines else "ssh failed with no message"
        everything = " ".join(lines)
        if "host key is known" in everything:
            return (f"host key is not in {self.known_hosts}; add it (ssh-keyscan) or set "
                    "extras.strict_host_key: false")
        if "REMOTE HOST IDENTIFICATION" in everything or "Host key verification" in text:
            return ("host key does not match known_hosts; the host was reinstalled or someone "
                    "is in the middle — refusing to connect")
        if "Permission denied" in text:
            return f"authentication failed ({text})"
        if "timed out" in text:
            return f"timed out after {self.connect_timeout:g}s ({text})"
        return text

    # --- clients riding it ----------------------------------------------------------------

    def session(self, command: str, *, shell: bool = True) -> ProcessChannel:
        """`command` in a new session of the master, which must open within the connect
        timeout. Riding a master skips the connect, and with it the connect timeout: a master
        whose link was cut (a partition, a host frozen) would hold a session request until its
        keep-alives give up (45 s). So a session not open in time counts as never opened
        (`ProcessChannel.never_opened`). How it is seen open: a shell prints a marker to stderr
        first; a switch's CLI (`shell=False`) cannot, so there the client says it (`-v`: its
        one debug line when the master's peer confirmed the session, OPENED_BY_CLIENT)."""
        if not shell:
            return ProcessChannel(self._exec_argv(command, verbose=True), opened=OPENED_BY_CLIENT,
                                  open_timeout=self.connect_timeout)
        mark = f"K8SHA-OPEN-{uuid.uuid4().hex[:12]}"
        return ProcessChannel(self._exec_argv(f"printf '%s\\n' {mark} >&2; {command}"),
                              opened=f"{mark}\n".encode(), open_timeout=self.connect_timeout)

    def sftp(self) -> ProcessSocket:
        """An SFTP stream riding the master; its first answer must come within the connect
        timeout, for the same reason as `session`."""
        return ProcessSocket(self._sftp_argv(), open_timeout=self.connect_timeout)

    def _exec_argv(self, command: str, *, verbose: bool = False) -> list[str]:
        """A client that runs `command` in a new session of the master (never a master itself);
        `verbose`: it logs at debug1 (`-v` overrides the LogLevel before it)."""
        return [*self._base, *(["-v"] if verbose else []), "-o", "ControlMaster=no", "-T", "--",
                self.hostname, command]

    def _sftp_argv(self) -> list[str]:
        return [*self._base, "-o", "ControlMaster=no", "-T", "-s", "--", self.hostname, "sftp"]


class ProcessChannel:
    """The part of `paramiko.Channel` that `SSHTransport._pump` uses, over a local client process.

    Two reader threads move the process's stdout and stderr into buffers and wake `fileno()`
    (a pipe) whenever there is something new, as paramiko's channels do, so one loop reads both
    kinds of channel.
    """

    def __init__(self, argv: Sequence[str], *, opened: bytes | re.Pattern[bytes] | None = None,
                 open_timeout: float | None = None) -> None:
        self._proc = subprocess.Popen(list(argv), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, start_new_session=True)
        self._lock = threading.Lock()
        # `opened`: the marker the session prints to stderr first; stderr is held back until
        # it is seen (and then passed on without it); not seen within `open_timeout`: the
        # client is ended and the session counts as never opened
        self._mark = (re.compile(re.escape(opened)) if isinstance(opened, bytes) else opened)
        self._held = bytearray()
        self.open_expired = False
        self._timer: threading.Timer | None = None
        if opened is not None and open_timeout is not None:
            self._timer = threading.Timer(open_timeout, self._expire)
            self._timer.daemon = True
            self._timer.start()
        self._bufs = (bytearray(), bytearray())
        self._stderr_seen = bytearray()  # all of it, for `never_opened`
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._open_streams = 2
        self.eof_received = False
        self.closed = False
        self.status_event = threading.Event()
        self._code: int | None = None
        self._readers = [threading.Thread(target=self._read, args=(stream, i), daemon=True)
                         for i, stream in enumerate((self._proc.stdout, self._proc.stderr))]
        for t in self._readers:
            t.start()

    def _read(self, stream: object, index: int) -> None:
        fd = stream.fileno()  # type: ignore[attr-defined]
        while True:
            try:
                data = os.read(fd, 65536)
            except OSError:
                data = b""
            with self._lock:
                if not data:
                    if index == 1:
                        self._unhold()  # never opened: what ssh itself said
                    self._open_streams -= 1
                    self.eof_received = self._open_streams == 0
                elif index == 1:
                    if len(self._stderr_seen) < 65536:
                        self._stderr_seen.extend(data)
                    self._bufs[1].extend(self._unmark(data))
                else:
                    self._bufs[0].extend(data)
                self._wake()
            if not data:
                break
        stream.close()  # type: ignore[attr-defined] # its reader closes it: never under a read
        if self.eof_received and not self.status_event.is_set():
            code = self._proc.wait()
            with self._lock:
                if not self.status_event.is_set():
                    self._code = code
                    self.status_event.set()
                    self._wake()

    def _unmark(self, data: bytes) -> bytes:
        """stderr as the command wrote it: held back until the open marker has been seen, then
        everything but the marker. Callers hold `_lock`."""
        if self._mark is None:
            return data
        self._held.extend(data)
        found = self._mark.search(self._held)
        if found is None:
            return b""
        if self._timer is not None:
            self._timer.cancel()
        out = bytes(self._held[:found.start()] + self._held[found.end():])
        self._held.clear()
        self._mark = None
        return out

    def _unhold(self) -> None:
        """Pass on the stderr held back while waiting for the marker (the session will not open:
        it is ssh's own message). Callers hold `_lock`."""
        self._bufs[1].extend(self._held)
        self._held.clear()

    def _expire(self) -> None:
        """The session did not open in time: end the client; nothing ran (the marker comes
        first), so the caller may try again on a new master."""
        with self._lock:
            if self._mark is None or self.closed:
                return
            self.open_expired = True
        with contextlib.suppress(OSError):
            self._proc.kill()
        code = self._proc.wait()
        # the master still holds the client's stdio (passed to it for the session) and will
        # until it is stopped: no end of stream will come, so say it ended
        with self._lock:
            self._unhold()
            self._code = code
            self.eof_received = True
            self.status_event.set()
            self._wake()

    def _wake(self) -> None:
        """Callers hold `_lock` (so the pipe is never written after `close` closed it)."""
        if self.closed:
            return
        try:
            os.write(self._wake_w, b"x")
        except (BlockingIOError, OSError):
            pass  # already awake

    def fileno(self) -> int:
        return self._wake_r

    def _ready(self, index: int) -> bool:
        with self._lock:
            if self._bufs[index]:
                return True
            if not (self._bufs[0] or self._bufs[1] or self.eof_received):
                try:  # nothing buffered: the wake-ups seen so far are spent
                    while os.read(self._wake_r, 4096):
                        pass
                except (BlockingIOError, OSError):
                    pass
            return False

    def recv_ready(self) -> bool:
        return self._ready(0)

    def recv_stderr_ready(self) -> bool:
        return self._ready(1)

    def _take(self, index: int, n: int) -> bytes:
        with self._lock:
            buf = self._bufs[index]
            data = bytes(buf[:n])
            del buf[:n]
            return data

    def recv(self, n: int) -> bytes:
        return self._take(0, n)

    def recv_stderr(self, n: int) -> bytes:
        return self._take(1, n)

    def exit_status_ready(self) -> bool:
        return self.status_event.is_set()

    def recv_exit_status(self) -> int:
        self.status_event.wait()
        return -1 if self._code is None else self._code

    def never_opened(self) -> bool:
        """The client died before its master opened the session (so nothing ran)."""
        return self.open_expired or (self.status_event.is_set() and self._code == 255
                                     and any(m in self._stderr_seen for m in NEVER_OPENED))

    def sendall(self, data: bytes) -> None:
        stdin = self._proc.stdin
        if stdin is not None and not stdin.closed:
            try:
                stdin.write(data)
                stdin.flush()
            except BrokenPipeError:
                pass  # the command ended without reading it all, as a channel would allow

    def shutdown_write(self) -> None:
        if self._proc.stdin is not None and not self._proc.stdin.closed:
            try:
                self._proc.stdin.close()
            except BrokenPipeError:
                pass

    def close(self) -> None:
        """End the client (a timed-out command's session closes with it) and its threads."""
        if self.closed:
            return
        with self._lock:
            self.closed = True
        if self._timer is not None:
            self._timer.cancel()
        if self._proc.poll() is None:
            self._proc.kill()
        self.shutdown_write()
        self._proc.wait()
        if not self.open_expired:  # else the master holds the streams open until it is stopped
            for t in self._readers:
                t.join(timeout=5)
        with self._lock:  # readers still running wake no more (`_wake`), and close their own
            os.close(self._wake_r)
            os.close(self._wake_w)


class ProcessSocket:
    """A byte stream over a client process running the `sftp` subsystem: what paramiko's
    `SFTPClient` needs of its socket (send, recv, close; the rest are no-ops)."""

    def __init__(self, argv: Sequence[str], *, open_timeout: float | None = None) -> None:
        self._proc = subprocess.Popen(list(argv), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                      stderr=subprocess.DEVNULL, start_new_session=True)
        self._closed = False
        self._first_within = open_timeout  # the first answer's deadline (see OpenSSHMaster.sftp)
        self.open_expired = False

    @property
    def closed(self) -> bool:
        """Closed by us, or the client ended (its master or host went away)."""
        return self._closed or self._proc.poll() is not None

    def send(self, data: bytes) -> int:
        assert self._proc.stdin is not None
        try:
            return os.write(self._proc.stdin.fileno(), data)
        except OSError:
            return 0  # SFTPClient reads 0 as the end of the stream

    def recv(self, n: int) -> bytes:
        assert self._proc.stdout is not None
        if self._first_within is not None:
            wait, self._first_within = self._first_within, None
            if not select.select([self._proc.stdout], [], [], wait)[0]:
                self.open_expired = True  # the session never opened: end it, read as EOF
                self._proc.kill()
                return b""
        try:
            return os.read(self._proc.stdout.fileno(), n)
        except OSError:
            return b""

    def recv_ready(self) -> bool:
        assert self._proc.stdout is not None
        return bool(select.select([self._proc.stdout], [], [], 0)[0])

    def get_name(self) -> str:
        return "sftp"

    def settimeout(self, timeout: float | None) -> None:
        """No-op: SFTPClient only sets it for file reads; the process ends when the host does."""

    def gettimeout(self) -> float | None:
        return None

    def setblocking(self, blocking: bool) -> None:
        """No-op (always blocking)."""

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for stream in (self._proc.stdin, self._proc.stdout):
            if stream is not None:
                try:
                    stream.close()
                except OSError:
                    pass
        try:
            self._proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
