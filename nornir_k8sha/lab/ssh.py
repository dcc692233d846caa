"""The lab's SSH side: one client key, per-host host keys, known_hosts and an ssh_config.

Host keys are generated on this machine into each host's overlay before it boots, so
known_hosts holds the hosts' real keys from the start and nobody ever has to trust on first
use. `ssh -F <state>/ssh/ssh_config master1` and Nornir (via the inventory's connection
options) both verify them.
"""

from __future__ import annotations

import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import paramiko

from nornir_k8sha.exceptions import CommandFailed, ConnectionFailed, LabError

KEY_NAME = "id_ed25519"
KNOWN_HOSTS = "known_hosts"
SSH_CONFIG = "ssh_config"
HOST_KEY = "etc/ssh/ssh_host_ed25519_key"


@dataclass(frozen=True)
class SSHPaths:
    directory: Path

    @property
    def key(self) -> Path:
        return self.directory / KEY_NAME

    @property
    def known_hosts(self) -> Path:
        return self.directory / KNOWN_HOSTS

    @property
    def config(self) -> Path:
        return self.directory / SSH_CONFIG


def _keygen(path: Path, comment: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
        capture_output=True, text=True,
    )
    if proc.returncode != 0:
        raise LabError(f"ssh-keygen failed for {path.name}: {proc.stderr.strip()}")


def ensure_client_key(paths: SSHPaths) -> str:
    """The lab's client key (made once, kept across `lab down`); returns the public key line."""
    if not paths.key.is_file():
        paths.directory.mkdir(parents=True, exist_ok=True)
        paths.directory.chmod(0o700)
        _keygen(paths.key, "nornir-k8sha-lab")
    return paths.key.with_suffix(".pub").read_text().strip()


def ensure_host_key(root: Path, host: str) -> str:
    """An ed25519 host key inside a host's tree (kept across restarts); returns the public key."""
    key = root / HOST_KEY
    if not key.is_file():
        _keygen(key, f"root@{host}")
    kind, blob = key.with_suffix(".pub").read_text().split()[:2]
    return f"{kind} {blob}"


def write_known_hosts(paths: SSHPaths, entries: dict[str, tuple[str, str]]) -> None:
    """entries: host -> (address, "ssh-ed25519 AAAA...")."""
    lines = [f"{name},{addr} {key}" for name, (addr, key) in sorted(entries.items())]
    paths.known_hosts.write_text("\n".join(lines) + "\n")


def write_ssh_config(paths: SSHPaths, hosts: dict[str, str], user: str = "root") -> None:
    """Host blocks by name with absolute paths, so the file works from any directory."""
    key, known = paths.key.resolve(), paths.known_hosts.resolve()
    blocks = ["# written by `nornir-k8sha lab up`: ssh -F this-file <host>"]
    for name, addr in sorted(hosts.items()):
        blocks.append(
            f"Host {name} {addr}\n  HostName {addr}\n  User {user}\n  IdentityFile {key}\n"
            f"  IdentitiesOnly yes\n  UserKnownHostsFile {known}\n  StrictHostKeyChecking yes\n"
            "  BatchMode yes\n  ConnectTimeout 3\n  LogLevel ERROR"
        )
    paths.config.write_text("\n\n".join(blocks) + "\n")


def port_open(address: str, port: int = 22, timeout: float = 0.5) -> bool:
    """sshd answers with its banner (a TCP accept alone could be a half-booted host)."""
    try:
        with socket.create_connection((address, port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            return sock.recv(4).startswith(b"SSH-")
    except OSError:
        return False


def connect(paths: SSHPaths, address: str, user: str = "root", timeout: float = 3.0
            ) -> paramiko.SSHClient:
    """A paramiko client that verifies the host key against the lab's known_hosts."""
    client = paramiko.SSHClient()
    client.load_host_keys(str(paths.known_hosts))
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    try:
        client.connect(address, username=user, key_filename=str(paths.key), timeout=timeout,
                       banner_timeout=timeout, auth_timeout=timeout, look_for_keys=False,
                       allow_agent=False)
    except (OSError, paramiko.SSHException) as exc:
        client.close()
        raise ConnectionFailed(address, str(exc) or type(exc).__name__) from exc
    return client


def run(paths: SSHPaths, address: str, command: str, *, host: str | None = None,
        timeout: float = 30.0, check: bool = True) -> tuple[int, str, str]:
    """Run one command; returns (exit code, stdout, stderr). Raises CommandFailed on non-zero."""
    client = connect(paths, address)
    try:
        _, stdout, stderr = client.exec_command(command, timeout=timeout)
        out = stdout.read().decode(errors="replace")
        err = stderr.read().decode(errors="replace")
        code = stdout.channel.recv_exit_status()
    finally:
        client.close()
    if check and code != 0:
        raise CommandFailed(host or address, command, code, err)
    return code, out, err


def wait_ssh(paths: SSHPaths, address: str, deadline: float) -> bool:
    """Poll until a real login runs `true` (key and host key verified) or the deadline passes."""
    while time.monotonic() < deadline:
        if port_open(address):
            try:
                code, _, _ = run(paths, address, "true", timeout=5, check=False)
                if code == 0:
                    return True
            except (ConnectionFailed, paramiko.SSHException, OSError):
                pass
        time.sleep(0.2)
    return False
