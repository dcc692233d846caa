"""Nornir connection plugin `k8sha_ssh`: exec channels, SFTP, sudo and batching.

`task.host.get_connection("k8sha_ssh", task.nornir.config)` returns an `SSHTransport` (the
`nornir_k8sha.transport.Transport` protocol): one SSH connection per host, a new session per
command with its real exit code and separate stdout/stderr, SFTP for files.

The connection is a persistent OpenSSH master (`nornir_k8sha.sshmux`: ControlPersist, as
Ansible does) that the next process reuses without a handshake, or — with `persist: 0`, a
password login, or no `ssh` client installed — a paramiko connection of this process alone.
Both carry the same sessions; everything below the session (sudo, batches, files) is shared.

Connection options (inventory `connection_options.k8sha_ssh`; hostname/port/username/password
come from the host as usual):

    extras:
      key_file: .k8sha/lab/ssh/id_ed25519   # private key; relative paths are resolved against cwd
      known_hosts: ~/.ssh/known_hosts       # host keys are verified against this file (default)
      strict_host_key: true                 # false: accept unknown/changed host keys (opt-out)
      connect_timeout: 10                   # seconds for TCP + SSH handshake + auth
      command_timeout: 300                  # default per-command timeout, seconds
      sudo: null                            # default for run(sudo=None): become root when the
                                            #   login user is not root (null), or always/never
      sudo_password: null                   # defaults to the host password
      max_sessions: 8                       # concurrent channels (OpenSSH allows 10 per conn)
      persist: 60                           # idle seconds the OpenSSH master outlives this
                                            #   process for the next one; 0: paramiko, no reuse
      kex_algorithms: null                  # key exchanges allowed, comma-separated (OpenSSH's
                                            #   KexAlgorithms); null: the client's defaults

Without `key_file` and password, the SSH agent and ~/.ssh keys are tried, as `ssh` does.

Sudo: `sudo -S` with a unique prompt; the password is written to the channel's stdin only when
that prompt appears (never in argv, logs or exceptions), and the command's own stdin follows
only after sudo has started it, so a passwordless sudo never feeds the password to the command.

Thread safety: several Nornir tasks may use one host's connection at once. Channels are opened
under a lock and limited by a semaphore; each call reads only its own channel; SFTP calls are
serialised. Batches (`run_batch`) are framed with per-call random markers, so concurrent batches
never mix.
"""

from __future__ import annotations

import logging
import os
import select
import shlex
import shutil
import socket
import stat as statmod
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path, PurePosixPath
from typing import Any, TypeVar

import paramiko

from nornir_k8sha import constants as C
from nornir_k8sha.budget import BUDGET
from nornir_k8sha.exceptions import CommandFailed, ConnectionFailed
from nornir_k8sha.muxclient import NotOpened
from nornir_k8sha.sshcontrol import MAX_SOCKET_PATH, SSH_BINARY, control_dir
from nornir_k8sha.sshmux import OpenSSHMaster
from nornir_k8sha.transport import (
    BatchScript,
    CommandResult,
    CommandTimeout,
    FileInfo,
    raise_for_batch,
)

log = logging.getLogger(__name__)
_T = TypeVar("_T")

DEFAULT_CONNECT_TIMEOUT = 10.0
DEFAULT_COMMAND_TIMEOUT = 300.0
DEFAULT_MAX_SESSIONS = 8
_MISSING_EXIT = 44  # exit code of our own "file is missing" probes under sudo
#: the RFC 8731 name paramiko knows by libssh's older one
_PARAMIKO_KEX_NAMES = {"curve25519-sha256": "curve25519-sha256@libssh.org"}
_REFUSED_PAUSE_S = 0.05  # first pause before asking again for a session the host refused


class SSHTransport:
    """One SSH connection to one host. Implements `nornir_k8sha.transport.Transport`."""

    def __init__(
        self,
        host: str,
        hostname: str,
        *,
        port: int = 22,
        username: str = "root",
        password: str | None = None,
        key_file: str | os.PathLike[str] | None = None,
        known_hosts: str | os.PathLike[str] | None = None,
        strict_host_key: bool = True,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        command_timeout: float = DEFAULT_COMMAND_TIMEOUT,
        sudo: bool | None = None,
        sudo_password: str | None = None,
        max_sessions: int = DEFAULT_MAX_SESSIONS,
        persist: float = C.DEFAULT_SSH_PERSIST_S,
        shell: bool = True,
        kex_algorithms: str | None = None,
    ) -> None:
        self.host = host
        self.hostname = hostname
        self.port = port
        self.username = username
        self.command_timeout = command_timeout
        #: the login runs a command in a POSIX shell (False: a switch's CLI, which gets each
        #: command as it is: no sudo, no batches)
        self.shell = shell
        self.sudo_default = shell and ((username != "root") if sudo is None else bool(sudo))
        self._sudo_password = sudo_password if sudo_password is not None else password
        self._open_lock = threading.Lock()
        self._sessions = threading.BoundedSemaphore(max_sessions)
        self._sftp_lock = threading.Lock()
        # what the calling thread's last `get` learnt of its file (the handle's fstat, which
        # the read needs anyway): a `stat` of that path right after it costs no round trip;
        # any write through this connection since makes it stale (`_writes` counts them)
        self._read_attrs = threading.local()
        self._writes = 0
        self._sftp: paramiko.SFTPClient | None = None
        self._ids: dict[str, dict[int, str]] | None = None  # u: uid->name, g: gid->name,
        #                                                   pg: uid->primary gid
        self._kex = [k.strip() for k in (kex_algorithms or "").split(",") if k.strip()]
        self.connect_timeout = connect_timeout
        self._connect_args = (password, key_file, known_hosts, strict_host_key, connect_timeout)
        self._master = self._master_for(persist, password, key_file, known_hosts,
                                        strict_host_key, connect_timeout)
        self._master_starts = 0  # masters this object had to start (0: it found one alive)
        self.client: paramiko.SSHClient | None = None
        if self._master is not None:
            self._start_master()  # unless one answers already: then no handshake at all
        else:
            self.client = self._connect(*self._connect_args)
        #: opening this connection cost an SSH handshake (no persistent master was waiting)
        self.handshake = self._master is None or self._master_starts > 0

    @property
    def persistent(self) -> bool:
        """The sessions ride an OpenSSH master that outlives this process."""
        return self._master is not None

    # --- connecting ---------------------------------------------------------------------

    def _paths(self, key_file: Any, known_hosts: Any, strict: bool
               ) -> tuple[Path | None, Path | None]:
        """The key file and known_hosts to use, both checked to exist."""
        kh = None
        if strict:
            kh = resolve_path(known_hosts) if known_hosts else Path("~/.ssh/known_hosts"
                                                                    ).expanduser()
            if not kh.is_file():
                raise ConnectionFailed(self.host, f"known_hosts file {kh} does not exist "
                                       "(set extras.strict_host_key: false to skip host key "
                                       "checks)")
        key = resolve_path(key_file) if key_file else None
        if key is not None and not key.is_file():
            raise ConnectionFailed(self.host, f"key_file {key} does not exist")
        return key, kh

    def _master_for(self, persist: float, password: str | None, key_file: Any,
                    known_hosts: Any, strict: bool, timeout: float) -> OpenSSHMaster | None:
        """An OpenSSH master when one can be used: persist > 0, a key login (BatchMode cannot
        type passwords), an `ssh` client installed and a control directory that is ours."""
        if persist <= 0 or password is not None or shutil.which(SSH_BINARY) is None:
            return None
        directory = control_dir()
        if directory is None:
            log.debug("%s: no private directory for SSH control sockets; not persisting",
                      self.host)
            return None
        key, kh = self._paths(key_file, known_hosts, strict)
        master = OpenSSHMaster(self.host, self.hostname, port=self.port, username=self.username,
                               key_file=key, known_hosts=kh, strict=strict,
                               connect_timeout=timeout, persist=persist, directory=directory,
                               kex_algorithms=",".join(self._kex) or None)
        if len(str(master.socket)) > MAX_SOCKET_PATH:
            log.debug("%s: control socket path %s too long; not persisting", self.host,
                      master.socket)
            return None
        return master

    def _start_master(self) -> None:
        """Connect, unless a master answers already (the handshake this whole design saves
        the next process). Callers hold `_open_lock`, or run in `__init__`."""
        assert self._master is not None
        try:
            started = self._master.start()
        except ConnectionFailed as exc:  # the master knows the address; we know the host's name
            raise ConnectionFailed(self.host, exc.reason) from None
        if started:
            self._master_starts += 1

    def _connect(self, password: str | None, key_file: Any, known_hosts: Any, strict: bool,
                 timeout: float) -> paramiko.SSHClient:
        client = paramiko.SSHClient()
        key_path, kh = self._paths(key_file, known_hosts, strict)
        if kh is not None:
            client.load_host_keys(str(kh))
            client.set_missing_host_key_policy(_RejectUnknown(kh))
        else:
            client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
        kwargs: dict[str, Any] = {}
        if self._kex:  # paramiko offers what it knows: take away what was not allowed
            known = paramiko.Transport._preferred_kex  # noqa: SLF001 - its list of names
            allowed = {_PARAMIKO_KEX_NAMES.get(k, k) for k in self._kex}
            kwargs["disabled_algorithms"] = {"kex": [k for k in known if k not in allowed]}
        if key_path is not None:
            kwargs.update(key_filename=str(key_path), look_for_keys=False, allow_agent=False)
        elif password is not None:
            kwargs.update(look_for_keys=False, allow_agent=False)
        started = time.monotonic()
        try:
            client.connect(
                self.hostname, port=self.port, username=self.username, password=password,
                timeout=timeout, banner_timeout=timeout, auth_timeout=timeout,
                channel_timeout=timeout, **kwargs,
            )
        except paramiko.BadHostKeyException as exc:
            client.close()
            raise ConnectionFailed(
                self.host, f"host key of {self.hostname}:{self.port} does not match known_hosts "
                f"(got {exc.key.get_name()} {exc.key.fingerprint}); the host was reinstalled or "
                "someone is in the middle — refusing to connect") from None
        except paramiko.AuthenticationException:
            client.close()
            raise ConnectionFailed(self.host, f"authentication failed for user "
                                   f"{self.username!r}") from None
        except _UnknownHostKey as exc:
            client.close()
            raise ConnectionFailed(self.host, str(exc)) from None
        except (paramiko.SSHException, OSError) as exc:
            client.close()
            reason = str(exc) or type(exc).__name__
            if isinstance(exc, socket.timeout | TimeoutError):
                reason = f"timed out after {timeout:g}s"
            elif time.monotonic() - started >= timeout:
                # paramiko words a banner/auth timeout differently per release ("Error reading
                # SSH protocol banner", "No existing session"): what happened is the time ran out
                reason = f"timed out after {timeout:g}s ({reason})"
            raise ConnectionFailed(self.host, f"{self.hostname}:{self.port}: {reason}") from None
        transport = client.get_transport()
        if transport is not None:
            transport.set_keepalive(C.SSH_KEEPALIVE_S)
        return client

    def _ensure_alive(self) -> None:
        """Reconnect once when the SSH transport died (host rebooted, link cut and restored):
        a long-lived Nornir keeps working after a fault. Callers hold `_open_lock`."""
        if self._master is not None:
            if not self._master.alive():
                log.debug("%s: no SSH master (idle too long, or it died), starting one",
                          self.host)
                self._start_master()
            return
        assert self.client is not None
        transport = self.client.get_transport()
        if transport is not None and transport.is_active():
            return
        log.debug("%s: SSH transport is gone, reconnecting", self.host)
        self._sftp = None  # belonged to the dead transport
        self.client.close()
        self.client = self._connect(*self._connect_args)

    def close(self) -> None:
        with self._sftp_lock:
            if self._sftp is not None:
                self._sftp.close()
                self._sftp = None
        if self.client is not None:
            self.client.close()
        BUDGET.closed(self)  # a master stays for the next process: `persist` idle seconds

    # --- commands -----------------------------------------------------------------------

    def run(self, command: str, *, sudo: bool | None = None, stdin: bytes | str | None = None,
            timeout: float | None = None, check: bool = True) -> CommandResult:
        """Run one command in its own exec channel."""
        data = stdin.encode() if isinstance(stdin, str) else stdin
        start = time.monotonic()
        code, out, err = self._exec(command, self._use_sudo(sudo), data, timeout)
        result = CommandResult(command, code, _text(out), _text(err), time.monotonic() - start)
        log.debug("%s: `%s` -> %d (%.3fs)", self.host, command, code, result.duration)
        if check and code != 0:
            raise CommandFailed(self.host, command, code, result.stderr)
        return result

    def run_batch(self, commands: Sequence[str], *, sudo: bool | None = None,
                  stop_on_error: bool = True, timeout: float | None = None,
                  check: bool = True) -> list[CommandResult]:
        """Run `commands` in ONE channel; one CommandResult per command that ran."""
        if not commands:
            return []
        if not self.shell:
            raise CommandFailed(self.host, f"<batch of {len(commands)}>", 1,
                                "a batch needs a shell; this login has none (shell: false)")
        script = BatchScript.build(commands, stop_on_error)
        start = time.monotonic()
        try:
            _, out, err = self._exec(script.text, self._use_sudo(sudo), None, timeout,
                                     shown=f"<batch of {len(commands)}>")
        except CommandTimeout as exc:
            partial = getattr(exc, "partial_stdout", b"")
            cmd = script.unfinished(_text(partial)) or f"<batch of {len(commands)}>"
            raise CommandTimeout(self.host, cmd, exc.timeout) from None
        results = script.parse(_text(out), _text(err), time.monotonic() - start)
        if len(results) < len(commands) and (not results or results[-1].ok or
                                              not stop_on_error):
            # The script itself died (e.g. sudo refused): report that, not a silent short list.
            raise CommandFailed(self.host, f"<batch of {len(commands)}>", 1, _text(err))
        log.debug("%s: batch of %d -> %s", self.host, len(commands),
                  [r.exit_code for r in results])
        if check:
            raise_for_batch(self.host, results)
        return results

    def _use_sudo(self, sudo: bool | None) -> bool:
        wanted = self.sudo_default if sudo is None else sudo
        return wanted and self.shell and self.username != "root"

    def _exec(self, command: str, sudo: bool, stdin: bytes | None, timeout: float | None,
              shown: str | None = None) -> tuple[int, bytes, bytes]:
        """Run `command` (through sudo when asked); (exit code, stdout, stderr)."""
        shown = shown or command
        limit = self.command_timeout if timeout is None else timeout
        nonce = uuid.uuid4().hex
        prompt, ready = f"[k8sha-sudo {nonce}] ", f"K8SHA-READY-{nonce}"
        wire = command
        if sudo:
            flag = f"-S -p {shlex.quote(prompt)}" if self._sudo_password else "-n"
            wrapper = 'printf "%s\\n" "$1" >&2; exec /bin/sh -c "$2"'
            wire = (f"sudo {flag} -- /bin/sh -c {shlex.quote(wrapper)} k8sha "
                    f"{ready} {shlex.quote(command)}")
        return self._ride(lambda: self._session(wire, shown, stdin, limit, sudo, prompt, ready),
                          "a session", self._drop_master)

    def _ride(self, attempt: Callable[[], _T], what: str, new_master: Callable[[], None]) -> _T:
        """`attempt()`, which opens `what` on the master (or runs on paramiko, which never
        raises NotOpened). Not opened — the master vanished under the request (the host went
        away and came back), or could not open it in time (its link is cut) — nothing ran:
        once more, after `new_master()`, on a new master, which has a connect timeout of its
        own. Refusals are waited out each time (`_refusals_waited`)."""
        try:
            return self._refusals_waited(attempt)
        except NotOpened as exc:
            log.debug("%s: no %s from the SSH master (%s); once more on a new one", self.host,
                      what, exc)
        new_master()
        try:
            return self._refusals_waited(attempt)
        except NotOpened as exc:
            raise ConnectionFailed(self.host, f"cannot open {what}: {exc}") from None

    def _refusals_waited(self, attempt: Callable[[], _T]) -> _T:
        """`attempt()`, asked again while the host refuses the session (its MaxSessions: other
        processes ride this master too; nothing ran), for up to a connect timeout."""
        until = time.monotonic() + self.connect_timeout
        pause = _REFUSED_PAUSE_S
        while True:
            try:
                return attempt()
            except NotOpened as exc:
                if not exc.refused:
                    raise
                if time.monotonic() >= until:
                    raise ConnectionFailed(self.host, str(exc)) from None
                time.sleep(pause)
                pause = min(pause * 2, 0.5)

    def _drop_master(self) -> None:
        """End a master that failed a session (a hung one would fail the next one too)."""
        assert self._master is not None
        with self._open_lock:
            self._master.stop()

    def _session(self, wire: str, shown: str, stdin: bytes | None, limit: float, sudo: bool,
                 prompt: str, ready: str) -> tuple[int, bytes, bytes]:
        """One session running `wire`, riding the master or on paramiko's transport."""
        with self._sessions:
            with self._open_lock:
                self._ensure_alive()
                if self._master is not None:
                    chan: Any = self._master.session(wire)  # NotOpened: the master is gone
                else:
                    try:
                        chan = self.client.get_transport().open_session(  # type: ignore
                            timeout=limit)
                    except (paramiko.SSHException, OSError, AttributeError) as exc:
                        raise ConnectionFailed(self.host,
                                               f"cannot open a channel: {exc}") from None
            try:
                if self._master is None:
                    chan.exec_command(wire)
                failure: CommandFailed | None = None
                try:
                    result = self._pump(chan, shown, stdin, limit, sudo,
                                        prompt.encode(), (ready + "\n").encode())
                except CommandFailed as exc:  # e.g. "sudo refused": sudo may never have started
                    failure = exc
                if self._master is not None and chan.never_opened():
                    raise chan.refusal or NotOpened("not opened within the connect timeout"
                                                    if chan.open_expired else "master went away")
                if failure is not None:
                    raise failure
                return result
            finally:
                chan.close()

    def _pump(self, chan: Any, shown: str, stdin: bytes | None, limit: float,
              sudo: bool, prompt: bytes, ready: bytes) -> tuple[int, bytes, bytes]:
        """Read both streams until exit; answer sudo's prompt; enforce the deadline."""
        deadline = time.monotonic() + limit
        out, err = bytearray(), bytearray()
        waiting_for_sudo, password_sent = sudo, False
        poller = select.poll()
        poller.register(chan.fileno(), select.POLLIN)
        if not sudo:
            _send_stdin(chan, stdin)
        while True:
            if chan.recv_ready():
                out += chan.recv(65536)
                continue
            if chan.recv_stderr_ready():
                err += chan.recv_stderr(65536)
                if waiting_for_sudo:
                    if ready in err:
                        # sudo has started our wrapper: now the command's own stdin may follow
                        err = err.replace(ready, b"", 1).replace(prompt, b"")
                        waiting_for_sudo = False
                        _send_stdin(chan, stdin)
                    elif err.count(prompt) > 1:
                        raise CommandFailed(self.host, shown, 1, "sudo: incorrect password "
                                            f"for {self.username!r}")
                    elif prompt in err and not password_sent:
                        password_sent = True
                        chan.sendall((self._sudo_password or "").encode() + b"\n")
                continue
            if chan.exit_status_ready() and (chan.eof_received or chan.closed):
                break
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                exc = CommandTimeout(self.host, shown, limit)
                exc.partial_stdout = bytes(out)  # type: ignore[attr-defined]
                raise exc
            if chan.eof_received:
                chan.status_event.wait(min(remaining, 0.05))  # data done, exit status pending
            else:
                # poll, not select: fine with fds >= 1024. Short cap: paramiko's OrPipe can lose
                # a wakeup when stdout drains while stderr arrives.
                poller.poll(min(remaining, 0.1) * 1000)
        while chan.recv_ready() or chan.recv_stderr_ready():  # raced in before the EOF
            out += chan.recv(65536) if chan.recv_ready() else b""
            err += chan.recv_stderr(65536) if chan.recv_stderr_ready() else b""
        code = chan.recv_exit_status()
        if waiting_for_sudo and ready in err:
            err = err.replace(ready, b"", 1).replace(prompt, b"")
            waiting_for_sudo = False
        if waiting_for_sudo:
            # sudo never started our wrapper: it refused (no password, not allowed, ...)
            detail = _text(bytes(err).replace(prompt, b"")).strip()
            raise CommandFailed(self.host, shown, code or 1,
                                detail or "sudo refused to run the command")
        return code, bytes(out), bytes(err)

    # --- files --------------------------------------------------------------------------

    def put(self, content: bytes | str, path: str, mode: int = 0o644, *,
            owner: str | None = None) -> None:
        """Write `content` to `path` atomically: temp file in the same dir, chmod/chown, rename.

        Missing parent directories are created (0755). `owner` is "user" or "user:group".
        """
        data = content.encode() if isinstance(content, str) else content
        self._wrote()
        if self._use_sudo(None):
            self._put_sudo(data, path, mode, owner)
            return
        target = PurePosixPath(path)
        tmp = str(target.parent / f".{target.name}.k8sha-{uuid.uuid4().hex[:12]}")
        with self._sftp_lock:
            sftp = self._sftp_client()
            try:
                try:  # the directory is almost always there: no stat to ask first
                    opened = sftp.open(tmp, "wb")
                except FileNotFoundError:
                    self._mkdirs(sftp, str(target.parent))
                    opened = sftp.open(tmp, "wb")
                with opened as f:
                    f.chmod(mode)  # before any byte is written: secrets are never world-readable
                    f.set_pipelined(True)
                    f.write(data)
                if owner:
                    uid, gid = self._resolve_owner(sftp, owner)
                    sftp.chown(tmp, uid, gid)
                sftp.posix_rename(tmp, path)
            except (OSError, paramiko.SSHException) as exc:
                try:
                    sftp.remove(tmp)
                except (OSError, paramiko.SSHException):
                    pass
                raise CommandFailed(self.host, f"sftp put {path}", 1, str(exc)) from None

    def get(self, path: str) -> bytes | None:
        """The file's bytes, or None when it does not exist."""
        if self._use_sudo(None):
            q = shlex.quote(path)
            code, out, err = self._exec(f"[ -e {q} ] || exit {_MISSING_EXIT}; cat -- {q}",
                                        True, None, None)
            if code == _MISSING_EXIT:
                return None
            if code != 0:
                raise CommandFailed(self.host, f"cat {path}", code, _text(err))
            return out
        self._read_attrs.last = None
        with self._sftp_lock:
            sftp = self._sftp_client()
            try:
                with sftp.open(path, "rb") as f:
                    attrs = f.stat()
                    data = _read_whole(f, attrs.st_size or 0)
                self._read_attrs.last = (path, self._writes, attrs)
                return data
            except FileNotFoundError:
                return None
            except (OSError, paramiko.SSHException) as exc:
                raise CommandFailed(self.host, f"sftp get {path}", 1, str(exc)) from None

    def stat(self, path: str) -> FileInfo | None:
        """Mode bits and owner/group names, or None when the path does not exist."""
        if self._use_sudo(None):
            q = shlex.quote(path)
            r = self.run(f"[ -e {q} ] || exit {_MISSING_EXIT}; stat -c '%a %U %G' -- {q}",
                         sudo=True, check=False)
            if r.exit_code == _MISSING_EXIT:
                return None
            if r.exit_code != 0:
                raise CommandFailed(self.host, f"stat {path}", r.exit_code, r.stderr)
            mode, user, group = r.stdout.split()
            return FileInfo(int(mode, 8), user, group)
        last, self._read_attrs.last = getattr(self._read_attrs, "last", None), None
        with self._sftp_lock:
            sftp = self._sftp_client()
            try:
                if last is not None and last[0] == path and last[1] == self._writes:
                    st = last[2]  # read with the file a moment ago, nothing written since
                else:
                    st = sftp.stat(path)
            except FileNotFoundError:
                return None
            except (OSError, paramiko.SSHException) as exc:
                raise CommandFailed(self.host, f"sftp stat {path}", 1, str(exc)) from None
            users, groups = self._id_maps(sftp, st.st_uid, st.st_gid)
            return FileInfo(statmod.S_IMODE(st.st_mode or 0),
                            users.get(st.st_uid or 0, str(st.st_uid)),
                            groups.get(st.st_gid or 0, str(st.st_gid)))

    def rename(self, src: str, dst: str) -> None:
        """Atomically move `src` over `dst`."""
        self._wrote()
        if self._use_sudo(None):
            self.run(f"mv -f -- {shlex.quote(src)} {shlex.quote(dst)}", sudo=True)
            return
        with self._sftp_lock:
            try:
                self._sftp_client().posix_rename(src, dst)
            except (OSError, paramiko.SSHException) as exc:
                raise CommandFailed(self.host, f"sftp rename {src} {dst}", 1, str(exc)) from None

    def remove(self, path: str) -> None:
        """Remove a file if it exists."""
        self._wrote()
        if self._use_sudo(None):
            self.run(f"rm -f -- {shlex.quote(path)}", sudo=True)
            return
        with self._sftp_lock:
            try:
                self._sftp_client().remove(path)
            except FileNotFoundError:
                pass
            except (OSError, paramiko.SSHException) as exc:
                raise CommandFailed(self.host, f"sftp remove {path}", 1, str(exc)) from None

    def _wrote(self) -> None:
        with self._sftp_lock:
            self._writes += 1

    def _put_sudo(self, data: bytes, path: str, mode: int, owner: str | None) -> None:
        q = shlex.quote(path)
        script = (
            f"umask 077; d=$(dirname -- {q}); mkdir -p -- \"$d\" && "
            f"t=$(mktemp \"$d/.k8sha-XXXXXXXX\") || exit 1; "
            f"if cat > \"$t\" && chmod {mode:o} \"$t\" && "
            f"chown {shlex.quote(owner or 'root')} \"$t\" && mv -f -- \"$t\" {q}; "
            "then exit 0; else rc=$?; rm -f -- \"$t\"; exit $rc; fi"
        )
        code, _, err = self._exec(script, True, data, None, shown=f"sudo put {path}")
        if code != 0:
            raise CommandFailed(self.host, f"put {path}", code, _text(err))

    def _sftp_client(self) -> paramiko.SFTPClient:
        """The connection's SFTP session (callers hold `_sftp_lock`)."""
        if self._sftp is not None and not self._sftp.sock.closed:
            return self._sftp
        self._sftp = None
        with self._sessions, self._open_lock:
            self._ensure_alive()
            try:
                if self._master is not None:
                    self._sftp = self._master_sftp()
                else:
                    self._sftp = self.client.open_sftp()  # type: ignore[union-attr]
            except (paramiko.SSHException, OSError) as exc:
                raise ConnectionFailed(self.host, f"cannot open SFTP: {exc}") from None
        return self._sftp

    def _master_sftp(self) -> paramiko.SFTPClient:
        """SFTP riding the master; once more on a new master when it never opened (a master
        gone or hung: see `_ride`). Callers hold `_open_lock`."""
        master = self._master
        assert master is not None

        def new_master() -> None:  # `_drop_master` would take the `_open_lock` we hold
            master.stop()
            self._ensure_alive()

        return self._ride(lambda: paramiko.SFTPClient(master.sftp()), "SFTP", new_master)

    def _mkdirs(self, sftp: paramiko.SFTPClient, directory: str) -> None:
        missing = []
        d = PurePosixPath(directory)
        while str(d) not in ("/", "."):
            try:
                sftp.stat(str(d))
                break
            except FileNotFoundError:
                missing.append(str(d))
                d = d.parent
        for m in reversed(missing):
            sftp.mkdir(m, 0o755)

    def _id_maps(self, sftp: paramiko.SFTPClient, uid: int | None = None,
                 gid: int | None = None) -> tuple[dict[int, str], dict[int, str]]:
        """uid/gid -> name from the host's /etc/passwd and /etc/group (cached; reloaded when an
        id is unknown, e.g. after a package created its user)."""
        if (self._ids is None or (uid is not None and uid not in self._ids["u"])
                or (gid is not None and gid not in self._ids["g"])):
            self._ids = {"u": _parse_ids(sftp, "/etc/passwd"), "g": _parse_ids(sftp, "/etc/group"),
                         "pg": _parse_ids(sftp, "/etc/passwd", field=3)}
        return self._ids["u"], self._ids["g"]

    def _resolve_owner(self, sftp: paramiko.SFTPClient, owner: str) -> tuple[int, int]:
        """"user" (its primary group) or "user:group" -> (uid, gid), from the host's files."""
        user, _, group = owner.partition(":")
        for attempt in range(2):
            if attempt:
                self._ids = None  # maybe created since we last looked
            users, groups = self._id_maps(sftp)
            uid = next((k for k, v in users.items() if v == user), None)
            if uid is None:
                continue
            if not group:
                primary = self._ids["pg"].get(uid) if self._ids else None  # name -> gid
                return uid, int(primary) if primary and primary.isdigit() else 0
            gid = next((k for k, v in groups.items() if v == group), None)
            if gid is not None:
                return uid, gid
        raise CommandFailed(self.host, f"chown {owner}", 1, f"unknown user or group {owner!r}")


class K8shaSSH:
    """The Nornir connection plugin (`k8sha_ssh`). `.connection` is the host's SSHTransport."""

    def __init__(self) -> None:
        self._transport: SSHTransport | None = None
        self.host = ""

    def open(
        self,
        hostname: str | None,
        username: str | None,
        password: str | None,
        port: int | None,
        platform: str | None,
        extras: dict[str, Any] | None = None,
        configuration: Any = None,
    ) -> None:
        extras = dict(extras or {})
        self.host = str(hostname or "?")
        unknown = set(extras) - _EXTRAS
        if unknown:
            raise ConnectionFailed(self.host, f"unknown k8sha_ssh extras: {sorted(unknown)} "
                                   f"(known: {sorted(_EXTRAS)})")
        if not hostname:
            raise ConnectionFailed(self.host, "no hostname")
        self._transport = SSHTransport(
            self.host, hostname, port=int(port or 22), username=username or "root",
            password=password, key_file=extras.get("key_file"),
            known_hosts=extras.get("known_hosts"),
            strict_host_key=bool(extras.get("strict_host_key", True)),
            connect_timeout=float(extras.get("connect_timeout", DEFAULT_CONNECT_TIMEOUT)),
            command_timeout=float(extras.get("command_timeout", DEFAULT_COMMAND_TIMEOUT)),
            sudo=extras.get("sudo"), sudo_password=extras.get("sudo_password"),
            max_sessions=int(extras.get("max_sessions", DEFAULT_MAX_SESSIONS)),
            persist=float(extras.get("persist", C.DEFAULT_SSH_PERSIST_S)),
            shell=bool(extras.get("shell", True)),
            kex_algorithms=extras.get("kex_algorithms"),
        )

    @property
    def connection(self) -> SSHTransport:
        if self._transport is None:
            raise ConnectionFailed(self.host, "connection is not open")
        return self._transport

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
            self._transport = None


_EXTRAS = {"key_file", "known_hosts", "strict_host_key", "connect_timeout", "command_timeout",
           "sudo", "sudo_password", "max_sessions", "persist", "shell", "kex_algorithms"}


def resolve_path(path: str | os.PathLike[str]) -> Path:
    """`~` expanded; relative paths are relative to the current working directory."""
    p = Path(path).expanduser()
    return p if p.is_absolute() else Path.cwd() / p


class _UnknownHostKey(paramiko.SSHException):
    pass


class _RejectUnknown(paramiko.MissingHostKeyPolicy):
    """Reject hosts missing from known_hosts, with a message that says how to fix it."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str,
                         key: paramiko.PKey) -> None:
        raise _UnknownHostKey(
            f"host key of {hostname} ({key.get_name()} {key.fingerprint}) is not in {self.path}; "
            "add it (ssh-keyscan) or set extras.strict_host_key: false")


def _read_whole(f: paramiko.SFTPFile, size: int) -> bytes:
    """A file's bytes. One read request when it fits one (our files do: configs, keys);
    paramiko's prefetch only for bigger ones. Why: prefetch starts a thread per file and its
    reader spins on a lock until that thread has registered the request it answers: ~0.9 ms
    of controller CPU per small file, more with many threads at work."""
    if 0 < size <= paramiko.SFTPFile.MAX_REQUEST_SIZE:
        return f.read(size)
    if size:
        f.prefetch(size)
    return f.read()  # 0: empty, or a file that does not say its size (/proc)


def _send_stdin(chan: paramiko.Channel, data: bytes | None) -> None:
    if data:
        chan.sendall(data)
    chan.shutdown_write()


def _text(data: bytes | bytearray) -> str:
    return bytes(data).decode("utf-8", errors="replace")


def _parse_ids(sftp: paramiko.SFTPClient, path: str, field: int = 0) -> dict[int, str]:
    """id (third field) -> `field` of each line of a passwd/group file."""
    try:
        with sftp.open(path, "r") as f:
            text = f.read().decode("utf-8", errors="replace")
    except (OSError, paramiko.SSHException):
        return {}
    ids = {}
    for line in text.splitlines():
        parts = line.split(":")
        if len(parts) > max(2, field) and parts[2].isdigit():
            ids.setdefault(int(parts[2]), parts[field])
    return ids
