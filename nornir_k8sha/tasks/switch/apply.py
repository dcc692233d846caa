"""Apply a plan to one switch: load -> commit -> post-check -> confirm and save, or roll back.

The post-check is the one that matters to the cluster: every BGP session that was Established
before the change must be Established again within a bounded time. Any failure on the way (a
refused line, a timeout half-way, a failed commit, the post-check) rolls the switch back to the
config read before the change, and the result reports both what failed and how the rollback
went. A session that timed out is not trusted again: the rollback runs on a fresh one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from netmiko.exceptions import (
    ConfigInvalidException,
    NetmikoBaseException,
    NetmikoTimeoutException,
    ReadTimeout,
)

from nornir_k8sha import constants as C
from nornir_k8sha.polling import poll
from nornir_k8sha.tasks.switch.base import Attempt, Platform
from nornir_k8sha.tasks.switch.tree import redact

#: Errors a switch session raises that a rollback should answer (not bugs of ours).
SWITCH_ERRORS = (NetmikoBaseException, ConfigInvalidException, ReadTimeout, OSError, EOFError,
                 ValueError)


#: Errors after which a session is not used again.
TIMEOUTS = (ReadTimeout, NetmikoTimeoutException, OSError, EOFError)


@dataclass
class Outcome:
    ok: bool
    #: The switch's config is the intended one (False after a rollback).
    applied: bool
    message: str
    rolled_back: bool = False
    output: str = ""


def leave_config_mode(conn: Any) -> str:
    """`exit_config_mode()` for a `finally`: never masks the error that is propagating."""
    try:
        return conn.exit_config_mode()
    except SWITCH_ERRORS as e:
        return f"(could not leave config mode: {type(e).__name__})"


def established(platform: Platform, conn: Any) -> set[str]:
    return {n.address for n in platform.neighbors(conn) if n.established}


def wait_sessions(platform: Platform, conn: Any, wanted: set[str], timeout: float,
                  poll_s: float = C.SWITCH_POSTCHECK_POLL) -> set[str]:
    """The sessions of `wanted` still not Established when `timeout` runs out (empty: all up)."""
    return poll(lambda: wanted - established(platform, conn), lambda missing: not missing,
                timeout=timeout, interval=poll_s)


def rollback(platform: Platform, conn: Any, run: Attempt, *, live: bool) -> tuple[bool, str]:
    """Undo the change; say how. True when the switch now reads as before."""
    try:
        if live and not platform.differences(conn, run.plan.running, run.timeout):
            how = "nothing had reached the running config"
        elif not live:
            platform.discard(conn, run)
            how = "candidate discarded"
        else:
            how = f"rolled back by {platform.rollback_mechanism}: " + platform.rollback(conn, run)
    except SWITCH_ERRORS as e:
        return False, f"ROLLBACK FAILED ({type(e).__name__}: {first_line(e)})"
    finally:
        leave_config_mode(conn)
    try:
        left = platform.differences(conn, run.plan.running, run.timeout)
        platform.forget(conn, run)
    except SWITCH_ERRORS as e:
        return False, f"{how}; could not re-read the config ({type(e).__name__})"
    if left:
        shown = [redact(ln) for ln in left[:3]]
        return False, f"{how}; {len(left)} line(s) still differ from the config before: {shown}"
    return True, f"{how}; config is as before the change"


def sessions_back(platform: Platform, conn: Any, before: set[str], timeout: float) -> str:
    """After a rollback: the sessions that were Established before the change are again, or
    the message says which are not. The ones still down are cleared first: the change kept
    them failing, and the back-off that follows would hold them Idle for up to two minutes
    with the good config back in place."""
    if not before:
        return established_again(before)
    try:
        down = sorted(before - established(platform, conn))
        if down:
            platform.clear_sessions(conn, down, timeout)
        missing = wait_sessions(platform, conn, before, timeout)
    except SWITCH_ERRORS as e:
        return f"could not read the BGP sessions after the rollback ({type(e).__name__})"
    if missing:
        return (f"BGP session(s) {', '.join(sorted(missing))} still not Established "
                f"{timeout:g}s after the rollback")
    return established_again(before, cleared=down)


def established_again(before: set[str], cleared: list[str] | None = None) -> str:
    """How the sessions that were up before a change came back (the one wording of it, after a
    change kept and after a rollback): `2 session(s) Established again (cleared ...)`."""
    if not before:
        return "no session was up before"
    how = f" (cleared {', '.join(cleared)})" if cleared else ""
    return f"{len(before)} session(s) Established again{how}"


def first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [""])[0][:200]


def rolled_back(platform: Platform, conn: Any, run: Attempt, failed: str, before: set[str],
                output: str, *, live: bool, postcheck_timeout: float) -> Outcome:
    """The outcome of a failed change: what failed, how the rollback went and, when the config
    is back, whether the sessions that were up came back with it."""
    restored, done = rollback(platform, conn, run, live=live)
    if restored:
        done += "; " + sessions_back(platform, conn, before, postcheck_timeout)
    return Outcome(False, False, f"{failed}; {done}", rolled_back=True, output=output)


def apply(platform: Platform, conn: Any, run: Attempt, reconnect: Callable[[], Any], *,
          postcheck_timeout: float = C.SWITCH_POSTCHECK_TIMEOUT) -> Outcome:
    """Send the plan and keep it only when the BGP sessions that were up come back up."""
    before = established(platform, conn)
    platform.prepare(conn, run)
    step = "load"
    output = ""
    stuck = False
    try:
        try:
            output = platform.load(conn, run)
            step = "commit"
            output += platform.commit(conn, run)
        except TIMEOUTS:
            stuck = True
            raise
        finally:
            if not stuck:  # a stuck session would only time out again: it is dropped instead
                leave_config_mode(conn)
    except SWITCH_ERRORS as e:
        failed = f"{step} failed ({type(e).__name__}: {first_line(e)})"
        live = platform.live_on_load or step == "commit"
        if stuck:
            conn = reconnect()  # the old session may still be stuck mid-command
            platform.after_reconnect(conn, run)
        return rolled_back(platform, conn, run, failed, before, output, live=live,
                           postcheck_timeout=postcheck_timeout)
    missing = wait_sessions(platform, conn, before, postcheck_timeout)
    if missing:
        failed = (f"post-check failed: BGP session(s) {', '.join(sorted(missing))} not "
                  f"Established again within {postcheck_timeout:g}s")
        return rolled_back(platform, conn, run, failed, before, output, live=True,
                           postcheck_timeout=postcheck_timeout)
    try:
        saved = platform.finish(conn, run)
    finally:
        leave_config_mode(conn)
    kept = f"applied, {established_again(before)}"
    return Outcome(True, True, "; ".join(x for x in (kept, saved) if x), output=output)
