"""Ask again until an answer is good enough or time runs out: the one poll loop.

Every wait of the package (a quorum back, a service active, a session Established, a host
reachable) is the same loop: ask, judge, give up when the deadline has passed, else sleep and ask
again. Written once, the edge cases are the same everywhere: the probe always runs at least
once (however short the timeout), the deadline is checked after an answer and never before it,
and the error names the last answer seen. It sits in the base layer (stdlib only) so that every
layer may wait with it.

`clock` and `sleep` are the test seams: a fake clock advanced by the fake sleep runs a
two-minute wait in no time. They default to this module's `time` (looked up on each call), so a
test may also replace `polling.time` for a wait it cannot reach with arguments.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")
Clock = Callable[[], float]
Sleep = Callable[[float], None]


def poll(probe: Callable[[], T], done: Callable[[T], bool], *, timeout: float,
         interval: float, give_up: Callable[[T], bool] | None = None,
         clock: Clock | None = None, sleep: Sleep | None = None) -> T:
    """Call `probe` until `done(answer)`, every `interval` s for up to `timeout` s; the last
    answer (`done` or not: the caller decides what a late one means). `give_up(answer)` ends
    the wait early (an answer that waiting cannot mend, e.g. a unit that has failed)."""
    now = clock or time.monotonic
    pause = sleep or time.sleep
    deadline = now() + timeout
    while True:
        answer = probe()
        if done(answer) or (give_up is not None and give_up(answer)) or now() >= deadline:
            return answer
        pause(interval)


def poll_until(probe: Callable[[], T], done: Callable[[T], bool], *, timeout: float,
               interval: float, error: Callable[[T], BaseException],
               give_up: Callable[[T], bool] | None = None, clock: Clock | None = None,
               sleep: Sleep | None = None) -> T:
    """`poll`, then the answer that is `done`, or `error(last answer)` raised: the caller words
    the error (its own exception type, the last value seen)."""
    answer = poll(probe, done, timeout=timeout, interval=interval, give_up=give_up,
                  clock=clock, sleep=sleep)
    if done(answer):
        return answer
    raise error(answer)
