"""The transport seam: what a connection to a Linux host does, and how batches are framed.

Every task reaches a host through `task.host.get_connection("k8sha_ssh", task.nornir.config)`,
which returns an object of the `Transport` protocol below:

    run(command, *, sudo=None, stdin=None, timeout=None, check=True) -> CommandResult
    run_batch(commands, *, sudo=None, stop_on_error=True, timeout=None, check=True)
        -> list[CommandResult]             several commands, one channel, one result each
    put(content, path, mode=0o644, *, owner=None)   atomic upload (temp file + rename)
    get(path) -> bytes | None              None when the file does not exist
    stat(path) -> FileInfo | None          mode and owner names, None when missing
    rename(src, dst) / remove(path)        atomic rename, remove if present
    close()

Commands are POSIX `sh` command lines. `sudo=None` means "the connection's default": become
root whenever the login user is not root (see `connection.K8shaSSH`). A non-zero exit raises
`CommandFailed(host, command, exit_code, stderr)` unless `check=False`; a timeout raises
`CommandTimeout` (a `CommandFailed` with exit code 124).

`connection.SSHTransport` is the real implementation (paramiko). The test double (`FakeFleet`,
`install_fake`) lives in `nornir_k8sha.testing`, which no product module imports.
"""

from __future__ import annotations

import re
import secrets
import shlex
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from nornir_k8sha.exceptions import CommandFailed

#: The exit code reported for a command that ran out of time (as coreutils `timeout` does).
TIMEOUT_EXIT_CODE = 124
#: Name of the Nornir connection plugin (pyproject entry point).
CONNECTION_NAME = "k8sha_ssh"
#: The same plugin under a second name: a switch's read-only CLI session as its netmiko user
#: (`tasks/switch/reads.py`), beside the host's own `k8sha_ssh` connection.
SWITCH_READS_CONNECTION = "k8sha_switch_reads"


@dataclass(frozen=True)
class CommandResult:
    """What one command did on a host."""

    command: str
    exit_code: int
    stdout: str
    stderr: str
    duration: float

    @property
    def ok(self) -> bool:
        return self.exit_code == 0


@dataclass(frozen=True)
class FileInfo:
    """Permission bits and owner of a remote file."""

    mode: int
    owner: str
    group: str


class CommandTimeout(CommandFailed):
    """A command did not finish within its timeout (the channel was closed)."""

    def __init__(self, host: str, command: str, timeout: float) -> None:
        super().__init__(host, command, TIMEOUT_EXIT_CODE, f"timed out after {timeout:g}s")
        self.timeout = timeout


@runtime_checkable
class Transport(Protocol):
    """What a task may do with a host. See the module docstring for the contract."""

    host: str

    def run(self, command: str, *, sudo: bool | None = None, stdin: bytes | str | None = None,
            timeout: float | None = None, check: bool = True) -> CommandResult: ...

    def run_batch(self, commands: Sequence[str], *, sudo: bool | None = None,
                  stop_on_error: bool = True, timeout: float | None = None,
                  check: bool = True) -> list[CommandResult]: ...

    def put(self, content: bytes | str, path: str, mode: int = 0o644, *,
            owner: str | None = None) -> None: ...

    def get(self, path: str) -> bytes | None: ...

    def stat(self, path: str) -> FileInfo | None: ...

    def rename(self, src: str, dst: str) -> None: ...

    def remove(self, path: str) -> None: ...

    def close(self) -> None: ...


def raise_for_batch(host: str, results: Sequence[CommandResult]) -> None:
    """Raise `CommandFailed` for the first failed command of a batch, if any."""
    for r in results:
        if r.exit_code != 0:
            raise CommandFailed(host, r.command, r.exit_code, r.stderr)


# --- the batch protocol: several commands, one channel --------------------------------------


@dataclass(frozen=True)
class BatchScript:
    """A shell script running `commands` one by one, framing each one's output with markers.

    Each command runs as `/bin/sh -c CMD </dev/null` (its own shell: an `exit` or `cd` in one
    command does not leak into the next). Before and after each command the script prints a
    marker line carrying a random nonce to stdout *and* stderr; the end marker carries the exit
    code and start/end times, so `parse` splits the two streams back into one `CommandResult`
    per command. Commands after a failure are not run when `stop_on_error`.

    The times come from bash's `$EPOCHREALTIME` when the login shell is bash (no process), else
    from `date`: two processes per command cost ~35 ms on a slow guest (UML), and the batch
    exists to save processes and round trips (issue 12.3).
    """

    commands: tuple[str, ...]
    stop_on_error: bool
    nonce: str

    @classmethod
    def build(cls, commands: Iterable[str], stop_on_error: bool = True) -> BatchScript:
        return cls(tuple(commands), stop_on_error, "K8SHA" + secrets.token_hex(8))

    @property
    def text(self) -> str:
        lines = [
            f"M={self.nonce}",
            # the time in ns: bash's clock variable (us, locale's decimal point) or `date`
            'if [ -n "${EPOCHREALTIME:-}" ]; then',
            "  k8sha_now() { eval 'T=${EPOCHREALTIME/[.,]/}000'; }",
            "else",
            "  k8sha_now() { T=$(date +%s%N 2>/dev/null); }",
            "fi",
            "k8sha_step() {",
            '  printf "%s %s begin\\n" "$M" "$1"; printf "%s %s begin\\n" "$M" "$1" >&2',
            "  k8sha_now; t0=$T",
            '  /bin/sh -c "$2" </dev/null; rc=$?',
            "  k8sha_now; t1=$T",
            '  printf "\\n%s %s end %s %s %s\\n" "$M" "$1" "$rc" "$t0" "$t1"',
            '  printf "\\n%s %s end %s %s %s\\n" "$M" "$1" "$rc" "$t0" "$t1" >&2',
            "  return $rc",
            "}",
        ]
        tail = " || exit $?" if self.stop_on_error else ""
        for i, cmd in enumerate(self.commands):
            lines.append(f"k8sha_step {i} {shlex.quote(cmd)}{tail}")
        lines.append("exit 0")
        return "\n".join(lines) + "\n"

    def parse(self, stdout: str, stderr: str, fallback_duration: float = 0.0
              ) -> list[CommandResult]:
        """One result per command that ran to its end marker; unrun commands are left out."""
        results = []
        for i, cmd in enumerate(self.commands):
            out = self._section(stdout, i)
            err = self._section(stderr, i)
            if out is None:
                break
            text, code, t0, t1 = out
            err_text = err[0] if err is not None else ""
            duration = (t1 - t0) / 1e9 if t0 and t1 and t1 >= t0 else fallback_duration
            results.append(CommandResult(cmd, code, text, err_text, duration))
        return results

    def unfinished(self, stdout: str) -> str | None:
        """The command that began but never reached its end marker (after a timeout)."""
        for i, cmd in enumerate(self.commands):
            if f"{self.nonce} {i} begin\n" in stdout and self._section(stdout, i) is None:
                return cmd
        return None

    def _section(self, stream: str, i: int) -> tuple[str, int, int, int] | None:
        begin = f"{self.nonce} {i} begin\n"
        start = stream.find(begin)
        if start < 0:
            return None
        start += len(begin)
        m = re.compile(rf"\n{self.nonce} {i} end (-?\d+) (\S*) (\S*)\n").search(stream, start)
        if m is None:
            return None
        return stream[start:m.start()], int(m.group(1)), _int(m.group(2)), _int(m.group(3))


def _int(text: str) -> int:
    return int(text) if text.isdigit() else 0
