"""OpenSSH's multiplexing protocol, client side, in this process (OpenSSH's PROTOCOL.mux).

Why: every command, batch and SFTP session riding a master used to be a local `ssh` client
process, ~7 ms of controller CPU each (fork, exec, its own start-up), ten of them for a fresh
worker. The master does all the driving anyway ("passenger" mode): the client only asks for a
session over the control socket and hands the master its stdin, stdout and stderr. So here we
ask ourselves and hand it pipes: a session costs a unix-socket connect, four small packets and
three file descriptors, and no process.

The exchange, as OpenSSH's own client does it (mux.c, mux_client_request_session):
hello both ways (protocol version 4) → an alive check → MUX_C_NEW_SESSION and the three fds →
MUX_S_SESSION_OPENED, which the master defers until the host has confirmed the channel open
(mux.c: "reply is deferred, sent by mux_session_confirm") — so it is also the sign that the
session opened, wherever it runs (a shell or a switch's CLI) → MUX_S_EXIT_MESSAGE with the
command's exit status → the master closes the control connection once the session is gone
(its output has been written to our pipes by then). Closing the control connection ourselves
ends the session (mux.c: mux_master_control_cleanup_cb).
"""

from __future__ import annotations

import contextlib
import os
import select
import selectors
import socket
import struct
import threading
import time
from pathlib import Path

MUX_MSG_HELLO = 0x00000001
MUX_C_NEW_SESSION = 0x10000002
MUX_C_ALIVE_CHECK = 0x10000004
MUX_S_PERMISSION_DENIED = 0x80000002
MUX_S_FAILURE = 0x80000003
MUX_S_EXIT_MESSAGE = 0x80000004
MUX_S_ALIVE = 0x80000005
MUX_S_SESSION_OPENED = 0x80000006
PROTOCOL_VERSION = 4
NO_ESCAPE_CHAR = 0xFFFFFFFF
#: what OpenSSH's client exits with when the session ended without an exit status (a signal
#: killed the command, or the master went away)
NO_EXIT_STATUS = 255
_MAX_PACKET = 256 * 1024


class NotOpened(Exception):
    """The master did not open the session: nothing ran, so it may be asked again.

    `refused`: the master or the host said no (e.g. the host's MaxSessions); else the master
    is gone, or did not answer within the open timeout (its link is cut)."""

    def __init__(self, reason: str, *, refused: bool = False) -> None:
        super().__init__(reason)
        self.refused = refused


def _u32(n: int) -> bytes:
    return struct.pack(">I", n)


def _string(data: bytes) -> bytes:
    return _u32(len(data)) + data


class _Control:
    """One control connection to a master, up to the session request (all of it quick: the
    master is a local process; only the session's opening waits for the host)."""

    def __init__(self, path: Path, timeout: float) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._inbox = bytearray()
        self.sock.settimeout(timeout)
        try:
            self.sock.connect(str(path))
            self._send(_u32(MUX_MSG_HELLO) + _u32(PROTOCOL_VERSION))
            kind, body = self.read()
            version = struct.unpack(">I", body[:4])[0] if len(body) >= 4 else -1
            if kind != MUX_MSG_HELLO or version != PROTOCOL_VERSION:
                raise NotOpened(f"master speaks mux {kind:#x} v{version}, not v4")
            self._send(_u32(MUX_C_ALIVE_CHECK) + _u32(0))
            kind, _ = self.read()
            if kind != MUX_S_ALIVE:
                raise NotOpened(f"master answered the alive check with {kind:#x}")
        except NotOpened:
            self.sock.close()
            raise
        except (OSError, struct.error) as exc:  # gone, refused, timed out, closed mid-packet
            self.sock.close()
            raise NotOpened(f"no master on {path.name}: {exc or type(exc).__name__}") from None

    def request_session(self, command: str, fds: tuple[int, int, int], *,
                        subsystem: bool) -> None:
        """Ask for a session running `command` (a subsystem's name when `subsystem`) on
        these stdin, stdout, stderr."""
        body = (_u32(MUX_C_NEW_SESSION) + _u32(1) + _string(b"") + _u32(0) + _u32(0) + _u32(0)
                + _u32(int(subsystem)) + _u32(NO_ESCAPE_CHAR) + _string(b"")
                + _string(command.encode()))
        try:
            self._send(body)
            for fd in fds:
                socket.send_fds(self.sock, [b"\0"], [fd])
        except OSError as exc:
            raise NotOpened(f"master went away under the session request: {exc}") from None

    def _send(self, body: bytes) -> None:
        self.sock.sendall(_u32(len(body)) + body)

    def _packet(self) -> tuple[int, bytes] | None:
        """The first whole packet received so far (after `feed`), taken off the inbox."""
        if len(self._inbox) < 4:
            return None
        size = struct.unpack(">I", self._inbox[:4])[0]
        if size > _MAX_PACKET:
            raise OSError(f"mux packet of {size} bytes")
        if len(self._inbox) < 4 + size:
            return None
        body = bytes(self._inbox[4:4 + size])
        del self._inbox[:4 + size]
        return struct.unpack(">I", body[:4])[0], body[4:]

    def packets(self) -> list[tuple[int, bytes]]:
        """Every whole packet received so far (after `feed`)."""
        found = []
        while (packet := self._packet()) is not None:
            found.append(packet)
        return found

    def feed(self, data: bytes) -> None:
        self._inbox.extend(data)

    def replies(self) -> list[tuple[int, bytes]] | None:
        """What the master sent since, without waiting (a non-blocking socket); None once it
        closed the control connection."""
        try:
            data = self.sock.recv(65536)
        except BlockingIOError:
            return []
        except OSError:
            data = b""
        if not data:
            return None
        self.feed(data)
        try:
            return self.packets()
        except OSError:  # not the protocol: as good as closed
            return None

    def read(self) -> tuple[int, bytes]:
        """The next packet, blocking (within the socket's timeout)."""
        while (packet := self._packet()) is None:
            data = self.sock.recv(65536)
            if not data:
                raise OSError("master closed the control connection")
            self.feed(data)
        return packet

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


def _refusal(kind: int, body: bytes) -> NotOpened:
    """A MUX_S_FAILURE / PERMISSION_DENIED reply (request id, reason) as NotOpened."""
    text = body[8:].decode("utf-8", errors="replace") if len(body) >= 8 else ""
    return NotOpened(f"session refused: {text or hex(kind)}", refused=True)


class MuxSession:
    """A command in a new session of a master: the part of `paramiko.Channel` that
    `SSHTransport._pump` uses.

    No thread: our ends of the pipes the master writes (stdout, stderr) and the control
    connection sit in one selector, whose own descriptor is `fileno()`, so the caller's poll
    wakes when any of them has something; each question (`recv_ready`, `exit_status_ready`,
    ...) first moves what is there into buffers, without blocking. Why: a reader thread per
    session was ~0.12 ms of a session's ~0.85 ms of controller CPU, and every chunk of output
    crossed two threads. A session the master has not opened within `open_timeout` is closed
    and counts as never opened (`never_opened`): nothing ran.
    """

    def __init__(self, control: Path, command: str, *, open_timeout: float) -> None:
        ctl = _Control(control, open_timeout)
        stdin_r, self._stdin = os.pipe()
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        try:
            ctl.request_session(command, (stdin_r, out_w, err_w), subsystem=False)
        except NotOpened:
            ctl.close()
            for fd in (stdin_r, self._stdin, out_r, out_w, err_r, err_w):
                os.close(fd)
            raise
        for fd in (stdin_r, out_w, err_w):  # the master holds them now
            os.close(fd)
        ctl.sock.setblocking(False)
        for fd in (out_r, err_r, self._stdin):
            os.set_blocking(fd, False)
        self._ctl = ctl
        self._bufs = (bytearray(), bytearray())
        self._streams = {out_r: 0, err_r: 1}  # still open -> which buffer
        self._sel = selectors.DefaultSelector()  # epoll on Linux: a descriptor of its own
        for fd in self._streams:
            self._sel.register(fd, selectors.EVENT_READ)
        self._sel.register(ctl.sock, selectors.EVENT_READ)
        self._ctl_open = True
        self.opened = False
        self.open_expired = False
        self.refusal: NotOpened | None = None
        self.eof_received = False
        self.closed = False
        self.status_event = threading.Event()
        self._code: int | None = None
        self._open_deadline = time.monotonic() + open_timeout

    def _service(self) -> None:
        """Take in whatever the pipes and the master have for us now; never blocks. The
        session has ended (`eof_received`, `status_event`) once both pipes reached their end
        and the master closed the control connection, or the session will never open."""
        if self.eof_received:
            return
        for key, _ in self._sel.select(0):
            if key.fileobj is self._ctl.sock:
                if not self._control():
                    self._finish()
                    return
                continue
            fd = key.fd
            try:
                data = os.read(fd, 65536)
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            if data:
                self._bufs[self._streams[fd]].extend(data)
            else:
                self._sel.unregister(fd)
                del self._streams[fd]
                os.close(fd)
        if not self.opened and time.monotonic() >= self._open_deadline:
            self.open_expired = True  # its link is cut: close it; nothing ran
            self._finish()
        elif not self._streams and not self._ctl_open:
            self._finish()

    def _control(self) -> bool:
        """Read the master's replies; False when the session will never open."""
        packets = self._ctl.replies()
        if packets is None:
            self._sel.unregister(self._ctl.sock)
            self._ctl_open = False
            return self.opened
        for kind, body in packets:
            if kind == MUX_S_SESSION_OPENED:
                self.opened = True
            elif kind in (MUX_S_FAILURE, MUX_S_PERMISSION_DENIED):
                self.refusal = _refusal(kind, body)
                return False
            elif kind == MUX_S_EXIT_MESSAGE and len(body) >= 8:
                self._code = struct.unpack(">I", body[4:8])[0]
        return True

    def _finish(self) -> None:
        """The session is over for us: closing the control connection ends it at the master
        if it still runs (a timeout, a session never opened)."""
        for fd in list(self._streams):
            self._sel.unregister(fd)
            os.close(fd)
        self._streams.clear()
        if self._ctl_open:
            self._sel.unregister(self._ctl.sock)
            self._ctl_open = False
        self._ctl.close()
        self.eof_received = True
        if self._code is None and self.opened and self.refusal is None:
            self._code = NO_EXIT_STATUS
        self.status_event.set()

    def fileno(self) -> int:
        """Readable when a pipe or the master has something (the selector's descriptor)."""
        return self._sel.fileno()  # type: ignore[attr-defined]

    def recv_ready(self) -> bool:
        self._service()
        return bool(self._bufs[0])

    def recv_stderr_ready(self) -> bool:
        self._service()
        return bool(self._bufs[1])

    def _take(self, index: int, n: int) -> bytes:
        buf = self._bufs[index]
        data = bytes(buf[:n])
        del buf[:n]
        return data

    def recv(self, n: int) -> bytes:
        return self._take(0, n)

    def recv_stderr(self, n: int) -> bytes:
        return self._take(1, n)

    def exit_status_ready(self) -> bool:
        self._service()
        return self.status_event.is_set()

    def recv_exit_status(self) -> int:
        while not self.exit_status_ready():
            select.select([self.fileno()], [], [], 0.1)
        return NO_EXIT_STATUS if self._code is None else self._code

    def never_opened(self) -> bool:
        """The session ended without the master having opened it: nothing ran."""
        return self.status_event.is_set() and not self.opened

    def sendall(self, data: bytes) -> None:
        """Write the command's stdin; while its pipe is full, keep taking its output in, so a
        command that writes before it reads cannot stall us both."""
        if self._stdin < 0:
            return
        view = memoryview(data)
        waiter = select.poll()
        waiter.register(self._stdin, select.POLLOUT)
        waiter.register(self.fileno(), select.POLLIN)
        while view:
            try:
                view = view[os.write(self._stdin, view):]
            except BlockingIOError:
                self._service()
                if self.status_event.is_set():
                    return  # it ended without reading it all, as a channel would allow
                waiter.poll(100)
            except BrokenPipeError:
                return  # the command ended without reading it all, as a channel would allow

    def shutdown_write(self) -> None:
        if self._stdin >= 0:
            os.close(self._stdin)
            self._stdin = -1

    def close(self) -> None:
        """End the session (a timed-out command's ends with it)."""
        if self.closed:
            return
        self.closed = True
        self.shutdown_write()
        if not self.status_event.is_set():
            self._finish()
        self._sel.close()


class MuxStream:
    """A subsystem session (SFTP) as a byte stream: what paramiko's `SFTPClient` needs of its
    socket. The master reads and writes one end of a socket pair; this is the other end.
    Opening waits (up to `open_timeout`) for the master's MUX_S_SESSION_OPENED."""

    def __init__(self, control: Path, subsystem: str, *, open_timeout: float) -> None:
        ctl = _Control(control, open_timeout)
        ours, theirs = socket.socketpair()
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            ctl.request_session(subsystem, (theirs.fileno(), theirs.fileno(), devnull),
                                subsystem=True)
            kind, body = ctl.read()  # within open_timeout: the socket's timeout
            if kind != MUX_S_SESSION_OPENED:
                raise (_refusal(kind, body) if kind in (MUX_S_FAILURE, MUX_S_PERMISSION_DENIED)
                       else NotOpened(f"master answered the session request with {kind:#x}"))
        except (OSError, NotOpened) as exc:
            ctl.close()
            ours.close()
            if isinstance(exc, NotOpened):
                raise
            raise NotOpened(f"session not opened: {exc or type(exc).__name__}") from None
        finally:
            theirs.close()
            os.close(devnull)
        ctl.sock.setblocking(False)
        self._ctl = ctl
        self._sock = ours
        self._closed = False
        self._ended = False

    @property
    def closed(self) -> bool:
        """Closed by us, or the session ended (its master or host went away)."""
        if self._closed or self._ended:
            return True
        packets = self._ctl.replies()
        self._ended = packets is None or any(k == MUX_S_EXIT_MESSAGE for k, _ in packets)
        return self._ended

    def send(self, data: bytes) -> int:
        try:
            return self._sock.send(data)
        except OSError:
            return 0  # SFTPClient reads 0 as the end of the stream

    def recv(self, n: int) -> bytes:
        try:
            return self._sock.recv(n)
        except OSError:
            return b""

    def recv_ready(self) -> bool:
        return bool(select.select([self._sock], [], [], 0)[0])

    def get_name(self) -> str:
        return "sftp"

    def settimeout(self, timeout: float | None) -> None:
        """No-op: SFTPClient only sets it for file reads; the stream ends when the host does."""

    def gettimeout(self) -> float | None:
        return None

    def setblocking(self, blocking: bool) -> None:
        """No-op (always blocking)."""

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._sock.close()
        self._ctl.close()
