"""Where this machine keeps its persistent SSH masters' control sockets, and how to end them.

Local state, like `statefiles` and `oplock`: the connection layer (`sshmux`) starts masters
here, and the lab (which may not import the connection layer) ends the masters to hosts it is
about to destroy or replace. One naming rule serves both.
"""

from __future__ import annotations

import hashlib
import os
import stat
import subprocess
import tempfile
from collections.abc import Iterable
from pathlib import Path

SSH_BINARY = "ssh"

#: a control socket is named ADDRESS~PORT~HASH: `stop_masters` finds a host's masters by the
#: address; the hash tells configurations apart. A unix socket path must stay under 108 bytes,
#: and OpenSSH adds 17 while it binds.
NAME_CHARS, HASH_CHARS, SEP = 24, 12, "~"
MAX_SOCKET_PATH = 108 - 17 - 1


def lock_path(socket: Path) -> Path:
    """The lock file that keeps two master starts to one address apart: one per address and
    port (not per socket), so their number stays that of the hosts ever reached."""
    address, port = socket.name.split(SEP)[:2]
    return socket.parent / f"{address}{SEP}{port}.lock"


def socket_path(directory: Path, hostname: str, port: int, identity: str) -> Path:
    """The control socket of a master to `hostname:port`; `identity` is everything else that
    decides whom it reaches and how (user, key, known_hosts...), hashed."""
    digest = hashlib.sha256(identity.encode()).hexdigest()[:HASH_CHARS]
    return directory / f"{hostname[:NAME_CHARS]}{SEP}{port}{SEP}{digest}"


def exit_master(socket: Path) -> None:
    """Ask the master on this control socket to exit now (`ssh -O exit`): the one way we end
    a master, ours or one another process left."""
    subprocess.run([SSH_BINARY, "-F", "none", "-o", f"ControlPath={socket}", "-O", "exit", "--",
                    "master"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL, timeout=10, check=False)


def stop_masters(addresses: Iterable[str]) -> int:
    """Ask every master of ours to these addresses to exit (`ssh -O exit`); how many there were.

    For hosts that are about to vanish or come back as new machines at the same address (a lab
    torn down, a host killed and restarted): a master left behind would carry the next command
    into a connection nobody answers any more, until its keep-alives give up.
    """
    directory = control_dir()
    wanted = {a[:NAME_CHARS] for a in addresses}
    stopped = 0
    for sock in sorted(directory.iterdir()) if directory else ():
        if sock.name.split(SEP)[0] in wanted and sock.is_socket():
            exit_master(sock)
            stopped += 1
    return stopped


def control_dir() -> Path | None:
    """The directory of our control sockets, made 0700; None when it is not safely ours."""
    base = os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir()
    directory = Path(base) / f"nornir-k8sha-ssh-{os.getuid()}"
    try:
        directory.mkdir(mode=0o700, exist_ok=True)
        st = directory.lstat()
        if st.st_uid != os.getuid() or not stat.S_ISDIR(st.st_mode):
            return None  # someone else's, or a symlink: never put our sockets there
        if st.st_mode & 0o077:
            directory.chmod(0o700)
    except OSError:
        return None
    return directory
