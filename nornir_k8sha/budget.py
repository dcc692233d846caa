"""The SSH connection budget: how many connections this process opens or works on at once.

One process-wide `BUDGET` (settings `ssh.max_connections`, default 100). Every host operation
that goes through `tasks.host.connect` / `open_connection` holds one of its slots while it
runs — opening the connection, a command, a file transfer — so the phases of one stage and the
rows of `check`, each running Nornir over its own hosts, together never work more than the
limit of connections at once. Opening a connection also takes one of `SSHD_MAXSTARTUPS_START`
(10) handshake places of its `address:port`: sshd's MaxStartups default (10:30:100) starts
dropping new unauthenticated connections once 10 are pending.

Idle connections stay open for the next phase (that reuse is most of a no-op re-run's speed);
`snapshot()` reports the peak of connections at work and of connections held open, and the
process's peak RSS, for the run's report.
"""

from __future__ import annotations

import contextlib
import resource
import sys
import threading
import weakref
from collections.abc import Iterator, Sequence
from typing import Any

from nornir_k8sha import constants as C
from nornir_k8sha.transport import CommandResult, FileInfo, Transport


class ConnectionBudget:
    """Slots for connections at work (reentrant per thread) and handshake places per target."""

    def __init__(self, limit: int = C.DEFAULT_MAX_SSH_CONNECTIONS,
                 per_target: int = C.SSHD_MAXSTARTUPS_START) -> None:
        self._cond = threading.Condition()
        self._limit = limit
        self._per_target = per_target
        self._working = 0
        self._starting: dict[str, int] = {}
        self._open: weakref.WeakValueDictionary[int, Any] = weakref.WeakValueDictionary()
        self._runs = 0  # runs in progress (measured); the outermost one resets the peaks
        self._depth = threading.local()
        self.peak_working = 0
        self.peak_starting = 0
        self.peak_open = 0
        self.handshakes = 0  # connections opened this run that needed an SSH handshake

    @property
    def limit(self) -> int:
        return self._limit

    def set_limit(self, limit: int) -> None:
        """A new limit (from the cluster's settings); waiters re-check at once."""
        if limit < 1:
            raise ValueError(f"ssh.max_connections must be at least 1, not {limit}")
        with self._cond:
            self._limit = limit
            self._cond.notify_all()

    def reset_peaks(self, *, handshakes: bool = True) -> None:
        """Start a new run's measurement (connections already open still count as open).
        `handshakes` False: keep the handshakes counted so far (see `measured`)."""
        with self._cond:
            self.peak_working = self._working
            self.peak_starting = sum(self._starting.values())
            self.peak_open = len(self._open)
            if handshakes:
                self.handshakes = 0

    @contextlib.contextmanager
    def working(self) -> Iterator[None]:
        """Hold one slot while a connection is opened or used. Reentrant in one thread, so an
        operation made of other operations takes one slot, never waits for itself."""
        depth = getattr(self._depth, "n", 0)
        self._depth.n = depth + 1
        try:
            if depth:
                yield
                return
            with self._cond:
                self._cond.wait_for(lambda: self._working < self._limit)
                self._working += 1
                self.peak_working = max(self.peak_working, self._working)
            try:
                yield
            finally:
                with self._cond:
                    self._working -= 1
                    self._cond.notify_all()
        finally:
            self._depth.n = depth

    @contextlib.contextmanager
    def opening(self, target: str) -> Iterator[None]:
        """Open a connection to `target` ("address:port"): a working slot and one of the
        target's handshake places."""
        with self.working():
            with self._cond:
                self._cond.wait_for(lambda: self._starting.get(target, 0) < self._per_target)
                self._starting[target] = self._starting.get(target, 0) + 1
                self.peak_starting = max(self.peak_starting, sum(self._starting.values()))
            try:
                yield
            finally:
                with self._cond:
                    self._starting[target] -= 1
                    if not self._starting[target]:
                        del self._starting[target]
                    self._cond.notify_all()

    def opened(self, conn: object) -> None:
        """A connection is now held open (idle or not). It cost a handshake unless it says it
        rode a persistent master an earlier command left (`conn.handshake` False)."""
        with self._cond:
            self._open[id(conn)] = conn  # forgotten when it is garbage: never closed, gone
            self.peak_open = max(self.peak_open, len(self._open))
            self.handshakes += int(getattr(conn, "handshake", True))

    def closed(self, conn: object) -> None:
        with self._cond:
            self._open.pop(id(conn), None)

    def snapshot(self) -> dict[str, float]:
        """The report's `resources`: peak_connections (at work at once), peak_open_connections
        (held open at once, idle ones too), handshakes (of the connections opened: the others
        reused a persistent master) and peak_rss_mb of this process."""
        return {"peak_connections": self.peak_working,
                "peak_open_connections": self.peak_open,
                "handshakes": self.handshakes,
                "peak_rss_mb": round(peak_rss_mb(), 1)}


def peak_rss_mb() -> float:
    """This process's peak resident set size in MB (ru_maxrss: KiB on Linux, bytes on macOS)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1024 * 1024) if sys.platform == "darwin" else rss / 1024


#: The process-wide budget every connection goes through.
BUDGET = ConnectionBudget()


class Budgeted:
    """A Transport whose every operation holds one of the budget's slots while it runs;
    anything else (attributes of the connection) is the connection's own."""

    def __init__(self, inner: Transport, budget: ConnectionBudget = BUDGET) -> None:
        object.__setattr__(self, "inner", inner)
        object.__setattr__(self, "budget", budget)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self.inner, name, value)

    def run(self, command: str, **kwargs: Any) -> CommandResult:
        with self.budget.working():
            return self.inner.run(command, **kwargs)

    def run_batch(self, commands: Sequence[str], **kwargs: Any) -> list[CommandResult]:
        with self.budget.working():
            return self.inner.run_batch(commands, **kwargs)

    def put(self, content: bytes | str, path: str, mode: int = 0o644, **kwargs: Any) -> None:
        with self.budget.working():
            self.inner.put(content, path, mode, **kwargs)

    def get(self, path: str) -> bytes | None:
        with self.budget.working():
            return self.inner.get(path)

    def stat(self, path: str) -> FileInfo | None:
        with self.budget.working():
            return self.inner.stat(path)

    def rename(self, src: str, dst: str) -> None:
        with self.budget.working():
            self.inner.rename(src, dst)

    def remove(self, path: str) -> None:
        with self.budget.working():
            self.inner.remove(path)

    def close(self) -> None:
        self.inner.close()


@contextlib.contextmanager
def measured(nr: Any, limit: int, budget: ConnectionBudget = BUDGET
             ) -> Iterator[dict[str, float]]:
    """A run under `limit` (the cluster's `ssh.max_connections`): the budget's limit and
    Nornir's threaded runner with as many workers. Yields a dict that holds the run's
    `snapshot()` once the block ends. Peaks are reset by the outermost run only, so the
    post-checks inside a deploy add to the deploy's figures. Its handshakes are those since
    the previous run of this process ended (the count restarts when a run ends, not when it
    starts): a command's connections opened just before its run — a deploy's cluster lock on
    the etcd members (tasks/hostlock.py), taken before its phases — are its own too."""
    with budget._cond:
        outermost = budget._runs == 0
        budget._runs += 1
    if outermost:
        budget.set_limit(limit)
        budget.reset_peaks(handshakes=False)
    runner = getattr(nr, "runner", None)
    if runner is not None and hasattr(runner, "num_workers"):
        runner.num_workers = budget.limit
    resources: dict[str, float] = {}
    try:
        yield resources
    finally:
        with budget._cond:
            budget._runs -= 1
        resources.update(budget.snapshot())
        if outermost:
            with budget._cond:
                budget.handshakes = 0
