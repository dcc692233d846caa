"""Persistent SSH connections: OpenSSH's ControlMaster/ControlPersist under `k8sha_ssh`.

Why: a new SSH connection is the dearest thing a short command does. Measured on the lab
(2-core VM, 2026-12-04): a handshake costs the controller ~65 ms of CPU and the host ~50 ms
(a container) to ~190 ms (a user-mode-Linux director). Ansible reaches hosts the same way by
default (`ControlPersist=60s`). So, as there, the first command to a host starts a background
`ssh` master that outlives our process by `persist` idle seconds, and every command, batch and
SFTP session after it — in this process or the next `check` or `deploy` — is a session of that
master: no handshake, no authentication, no new connection for sshd. We ask the master for
those sessions ourselves over its control socket (`muxclient`: OpenSSH's mux protocol), so a
session costs no local process either.

Safety:
- A control socket is named by a hash of everything that decides whom it reaches and how
  (user, address, port, key file, known_hosts, strict host-key checks), in a directory of our
  own that must be 0700 and ours; another configuration never shares a master.
- The host key is verified by OpenSSH against the same known_hosts `k8sha_ssh` uses
  (`StrictHostKeyChecking=yes`, no agent forwarding, `-F none`: no user config changes it).
- Commands go to the master over its private control socket exactly as they go over the wire
  in an exec request; the project keeps secrets out of both (stdin or files carry them).
- Password logins cannot ride a master (BatchMode): they stay on paramiko.

A session must open within the connect timeout (the master's MUX_S_SESSION_OPENED): riding a
master skips the connect and its timeout, and a master whose link was cut would hold a request
until its keep-alives give up. One that does not open in time is closed, its master stopped,
and the command runs once more on a new master, which has a connect timeout. A master that is
gone or dies before the session opened is not fatal either (nothing ran): `SSHTransport` runs
the command once more on a new master. A socket with no master behind it is removed
(`answers`). Two connections opening at once start one master (a lock file per address).
"""

from __future__ import annotations

import contextlib
import fcntl
import socket
import subprocess
import tempfile
from pathlib import Path

from nornir_k8sha import constants as C
from nornir_k8sha.exceptions import ConnectionFailed
from nornir_k8sha.muxclient import MuxSession, MuxStream
from nornir_k8sha.sshcontrol import SSH_BINARY, exit_master, lock_path, socket_path


class OpenSSHMaster:
    """One host's OpenSSH master: starts it when missing, and opens sessions that ride it."""

    def __init__(self, host: str, hostname: str, *, port: int, username: str,
                 key_file: Path | None, known_hosts: Path | None, strict: bool,
                 connect_timeout: float, persist: float, directory: Path,
                 kex_algorithms: str | None = None) -> None:
        self.host = host
        self.hostname = hostname
        self.persist = persist
        self.connect_timeout = connect_timeout
        self.known_hosts = known_hosts
        who = f"{username}@{hostname}:{port} key={key_file} kh={known_hosts} strict={strict}"
        if kex_algorithms:  # a master of weaker key exchanges must not carry a stricter config
            who += f" kex={kex_algorithms}"
        self.socket = socket_path(directory, hostname, port, who)
        opts = {
            "BatchMode": "yes", "ControlPath": str(self.socket), "Port": str(port),
            "User": username, "ConnectTimeout": str(max(1, round(connect_timeout))),
            "ServerAliveInterval": str(C.SSH_KEEPALIVE_S), "ServerAliveCountMax": "3",
            "LogLevel": "ERROR", "ForwardAgent": "no", "ClearAllForwardings": "yes",
        }
        if key_file is not None:
            opts.update(IdentityFile=str(key_file), IdentitiesOnly="yes")
        if kex_algorithms:
            opts["KexAlgorithms"] = kex_algorithms
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

    # --- sessions riding it ---------------------------------------------------------------

    def session(self, command: str) -> MuxSession:
        """`command` in a new session of the master, which must open within the connect
        timeout: riding a master skips the connect, and with it the connect timeout, and a
        master whose link was cut (a partition, a host frozen) would hold a session request
        until its keep-alives give up (45 s). Not open in time: closed, and it counts as never
        opened (`MuxSession.never_opened`). Raises `NotOpened` when the master is gone."""
        return MuxSession(self.socket, command, open_timeout=self.connect_timeout)

    def sftp(self) -> MuxStream:
        """An SFTP stream riding the master, open within the connect timeout (as `session`)."""
        return MuxStream(self.socket, "sftp", open_timeout=self.connect_timeout)

