"""The cluster lock held on the hosts themselves: two operators on two machines never run a
deploy, reset, runbook or day-2 command against the same cluster at once.

Where: one file, `HOST_LOCK_FILE`, on a MAJORITY of the etcd members. Why there:
- the etcd members are the one odd-sized set every cluster has (3, 5, 7), so a majority is well
  defined and two contenders cannot both hold one;
- a majority tolerates a dead member — exactly when day-2 commands run (`etcd replace` of a
  member whose host is down), where "every control host" would lock everyone out;
- etcd itself cannot hold it: `deploy` runs before etcd exists and `etcd restore` runs when it
  has no quorum.

How: the members are tried one at a time in name order and the first conflict stops the
attempt, so two contenders meet on the same (first reachable) member and exactly one wins.
Their connections are opened all at once beforehand (`_Members.open_all`): the SSH handshake is
the dear part of a try on a fresh command, and opening a connection takes no lock, so a fresh
`deploy` pays one handshake's time for the lock instead of one per member. On a
member the file is created atomically with its whole content: written to a private temp name,
then `ln` (link(2) fails if the lock exists) — a reader never sees a half-written holder.
The file says who (user@machine), pid, since when, what command, and a token; release and
heartbeat touch it only while it still carries our token, so a broken-and-retaken lock is
never removed by its old holder. The holder touches the file every `HOST_LOCK_HEARTBEAT_S`;
its age is read on the member's own clock (no skew between machines).

Stale (the holder is gone): same machine as us and its pid is dead, or no heartbeat for
`HOST_LOCK_TTL_S`. Only a stale lock can be broken (`--break-lock`), and the output says so;
a live holder is never broken. Persistent path (not /run): a member rebooted by a fault
drill keeps the lock of the drill that rebooted it.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

from nornir.core import Nornir

from nornir_k8sha import constants as C
from nornir_k8sha.exceptions import OperationLocked
from nornir_k8sha.oplock import Holder
from nornir_k8sha.tasks import host as H
from nornir_k8sha.topology import ClusterSpec, etcd_quorum
from nornir_k8sha.transport import Transport

#: Bound of one lock command on a member (connect + run): a dead member costs this, once.
COMMAND_TIMEOUT_S = 10.0

Say = Callable[[str], None]


@dataclass(frozen=True)
class Found:
    """A member's lock held by someone else: the holder (None if unreadable), its raw text,
    and seconds since its last heartbeat on the member's clock."""

    member: str
    holder: Holder | None
    raw: str
    age: float

    def describe(self) -> str:
        who = self.holder.describe() if self.holder else f"unreadable holder {self.raw[:80]!r}"
        return f"{who} (lock file on {self.member}, last heartbeat {self.age:.0f} s ago)"


@dataclass
class HeldLock:
    """The lock as held: the members holding our file, those that did not answer, notes."""

    me: Holder
    members: list[str]
    unreachable: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def lock_members(spec: ClusterSpec) -> list[str]:
    """The hosts that carry the lock: the etcd members, in name order (the order of tries)."""
    return sorted(m.name for m in spec.role(C.ROLE_ETCD))


def stale_reason(found: Found, me: Holder, ttl: float) -> str:
    """Why the holder is gone ("" when it may be alive)."""
    h = found.holder
    if h is not None and h.machine == me.machine and not _alive(h.pid):
        return f"its process {h.pid} on {h.machine} is gone"
    if found.age > ttl:
        return f"no heartbeat for {found.age:.0f} s (TTL {ttl:.0f} s)"
    return ""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: it exists
        return True
    return True


# --- the commands on a member -----------------------------------------------------------------

def _acquire_cmd(me: Holder) -> str:
    lock = shlex.quote(C.HOST_LOCK_FILE)
    temp = shlex.quote(f"{C.HOST_LOCK_FILE}.{me.token}")
    folder = shlex.quote(os.path.dirname(C.HOST_LOCK_FILE))
    return (f"umask 077; mkdir -p {folder} && printf '%s\\n' {shlex.quote(me.record())} > {temp}"
            f" && if ln {temp} {lock} 2>/dev/null; then rm -f {temp}; else rm -f {temp}; "
            f"if [ -e {lock} ]; then echo $(( $(date +%s) - $(stat -c %Y {lock}) )); "
            f"cat {lock}; fi; exit {C.HOST_LOCK_HELD_EXIT}; fi")


def _if_ours_cmd(token: str, then: str) -> str:
    lock = shlex.quote(C.HOST_LOCK_FILE)
    return f"if grep -qF {shlex.quote(token)} {lock} 2>/dev/null; then {then} {lock}; fi; true"


class _Members:
    """Runs the lock's commands on members, each bounded; failures are data, not exceptions."""

    def __init__(self, nr: Nornir) -> None:
        self.nr = nr
        #: member -> its connection being opened by `open_all` (or the error it failed with)
        self._opening: dict[str, Future[Transport]] = {}

    def open_all(self, members: Sequence[str]) -> None:
        """Start opening the connections to `members` at once, each in a thread of its own,
        and return: a try then waits for its own member's connection only. A member whose
        connection fails keeps that error for this object's life (a dead member costs the
        connect timeout once, not once per try). Daemon threads: a command that stops at
        a conflict never waits at exit for a dead member's timeout."""
        for member in members:
            if member in self._opening:
                continue
            opening: Future[Transport] = Future()
            self._opening[member] = opening
            threading.Thread(target=self._open_into, args=(member, opening),
                             name=f"k8sha-lock-open-{member}", daemon=True).start()

    def _open_into(self, member: str, opening: Future[Transport]) -> None:
        try:
            opening.set_result(self._open(member))
        except BaseException as exc:  # noqa: BLE001 - handed to the try that waits for it
            opening.set_exception(exc)

    def _open(self, member: str) -> Transport:
        host = self.nr.inventory.hosts[member]
        return H.open_connection(host, self.nr.config, connect_timeout=COMMAND_TIMEOUT_S)

    def run(self, member: str, command: str) -> tuple[int, str]:
        """(exit code, stdout); raises on an unreachable member (any error: named by caller)."""
        opening = self._opening.get(member)
        conn = opening.result() if opening is not None else self._open(member)
        res = conn.run(command, timeout=COMMAND_TIMEOUT_S, check=False)
        if res.exit_code not in (0, C.HOST_LOCK_HELD_EXIT):
            raise RuntimeError(f"exit {res.exit_code}: {res.stderr.strip()[:200]}")
        return res.exit_code, res.stdout

    def each(self, members: list[str], command: str, *, tries: int = 1) -> dict[str, str]:
        """Run on every member at once (a release, a heartbeat, giving back a minority: no
        order to keep); {member: error}, in the members' order, for those that failed `tries`
        times (a member rebooted by a fault fails once on its dead SSH session, then the
        connection reconnects)."""

        def one(member: str) -> str:
            why = ""
            for _ in range(tries):
                try:
                    self.run(member, command)
                    return ""
                except Exception as exc:  # noqa: BLE001 - a dead member: reported, not fatal
                    why = str(exc) or type(exc).__name__
            return why

        if not members:
            return {}
        with ThreadPoolExecutor(max_workers=len(members),
                                thread_name_prefix="k8sha-lock") as pool:
            whys = list(pool.map(one, members))
        return {m: why for m, why in zip(members, whys, strict=True) if why}


def _try(members: _Members, member: str, me: Holder) -> Found | None:
    """None when `member` now holds our file; else what holds it (raises when unreachable)."""
    code, out = members.run(member, _acquire_cmd(me))
    if code == 0:
        return None
    age, _, raw = out.strip().partition("\n")
    try:
        seconds = float(age)
    except ValueError:
        seconds = 0.0
    return Found(member, Holder.parse(raw.strip()), raw.strip(), seconds)


def acquire(nr: Nornir, spec: ClusterSpec, command: str, *, break_lock: bool = False,
            ttl: float = C.HOST_LOCK_TTL_S, say: Say = print,
            me: Holder | None = None) -> HeldLock:
    """Take the lock on a majority of the etcd members, or raise OperationLocked naming the
    holder (or the members that did not answer). With `break_lock`, a STALE holder's files are
    removed first (said through `say`); a live one never is."""
    me = me or Holder.me(command)
    runner = _Members(nr)
    names = lock_members(spec)
    need = etcd_quorum(len(names))
    runner.open_all(names)  # the handshakes at once; the tries below stay one at a time
    for _ in range(3):  # a holder that vanished while we looked, or one we broke: try again
        got: list[str] = []
        unreachable: dict[str, str] = {}
        found: Found | None = None
        for member in names:
            try:
                found = _try(runner, member, me)
            except Exception as exc:  # noqa: BLE001 - a dead member counts as not holding
                unreachable[member] = str(exc) or type(exc).__name__
                continue
            if found is not None:
                break
            got.append(member)
        if len(got) >= need:
            held = HeldLock(me, got, unreachable)
            if found is not None:
                held.notes.append(f"{found.member} still carries another lock: "
                                  f"{found.describe()}")
            return held
        runner.each(got, _if_ours_cmd(me.token, "rm -f"))
        if found is None:
            dead = "; ".join(f"{m}: {why}" for m, why in unreachable.items())
            raise OperationLocked(f"cannot take the cluster lock: it needs {need} of the etcd "
                                  f"members {', '.join(names)}, only {len(got)} answered "
                                  f"({dead})")
        if found.holder is None and not found.raw:
            continue  # released between our try and our read
        why = stale_reason(found, me, ttl)
        if not break_lock:
            hint = (f"; it looks stale ({why}): pass --break-lock to break it" if why
                    else "; try again when it ends")
            raise OperationLocked(f"the cluster is locked by {found.describe()}{hint}")
        if not why:
            raise OperationLocked(f"the cluster is locked by {found.describe()}; its holder "
                                  f"looks alive, so --break-lock does not break it (stale "
                                  f"after {ttl:.0f} s without a heartbeat)")
        token = found.holder.token if found.holder else ""
        if token:
            runner.each(names, _if_ours_cmd(token, "rm -f"))
        else:
            runner.each([found.member], f"rm -f {shlex.quote(C.HOST_LOCK_FILE)}")
        say(f"broke a stale cluster lock: {found.describe()}: {why}")
    raise OperationLocked("cannot take the cluster lock: it kept changing hands; try again")


def release(nr: Nornir, held: HeldLock, *, say: Say = print) -> None:
    """Remove our file from the members holding it; one that fails is said, not raised."""
    for member, why in _Members(nr).each(held.members, _if_ours_cmd(held.me.token, "rm -f"),
                                         tries=2).items():
        say(f"{member}: the cluster lock could not be released ({why}); it goes stale after "
            f"{C.HOST_LOCK_TTL_S:.0f} s, then `--break-lock` removes it")


@contextlib.contextmanager
def cluster_lock(nr: Nornir, spec: ClusterSpec, command: str, *, break_lock: bool = False,
                 say: Say = print, heartbeat: float = C.HOST_LOCK_HEARTBEAT_S,
                 ttl: float = C.HOST_LOCK_TTL_S) -> Iterator[HeldLock]:
    """Hold the cluster lock for the block; heartbeat while held; released always."""
    held = acquire(nr, spec, command, break_lock=break_lock, ttl=ttl, say=say)
    for note in held.notes:
        say(note)
    stop = threading.Event()
    beat = threading.Thread(target=_heartbeat, args=(nr, held, stop, heartbeat),
                            name="k8sha-lock-heartbeat", daemon=True)
    beat.start()
    try:
        yield held
    finally:
        stop.set()
        beat.join(timeout=COMMAND_TIMEOUT_S * 2)
        release(nr, held, say=say)


def _heartbeat(nr: Nornir, held: HeldLock, stop: threading.Event, every: float) -> None:
    """Touch our lock files until stopped (a member that does not answer is skipped)."""
    runner = _Members(nr)
    while not stop.wait(every):
        runner.each(held.members, _if_ours_cmd(held.me.token, "touch -c"))
