"""The one poll loop: asks at least once, sleeps its interval between answers, stops at the
first good answer, and at the deadline raises the caller's error built from the last answer."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TypeVar

import pytest

from nornir_k8sha.polling import poll, poll_until

from .conftest import FakeTime

T = TypeVar("T")


def answers(*values: T) -> Callable[[], T]:
    """A probe giving `values` in turn (the last one again once they run out)."""
    it: Iterator[T] = iter(values)
    last = [values[-1]]

    def probe() -> T:
        last[0] = next(it, last[0])
        return last[0]

    return probe


def test_a_first_good_answer_returns_at_once_without_sleeping() -> None:
    clock = FakeTime()
    got = poll_until(answers("up"), lambda a: a == "up", timeout=0, interval=1.0,
                     error=lambda a: TimeoutError(a), clock=clock.monotonic, sleep=clock.sleep)
    assert got == "up" and clock.slept == []


def test_sleeps_the_interval_between_answers_until_a_good_one() -> None:
    clock = FakeTime()
    got = poll_until(answers("down", "down", "up"), lambda a: a == "up", timeout=60,
                     interval=0.5, error=lambda a: TimeoutError(a), clock=clock.monotonic,
                     sleep=clock.sleep)
    assert got == "up" and clock.slept == [0.5, 0.5]


def test_the_timeout_raises_the_callers_error_with_the_last_answer() -> None:
    clock = FakeTime()
    probe = answers("starting", "activating")
    with pytest.raises(TimeoutError, match=r"^unit is activating after 3 s$"):
        poll_until(probe, lambda a: a == "active", timeout=3, interval=1.0,
                   error=lambda a: TimeoutError(f"unit is {a} after 3 s"),
                   clock=clock.monotonic, sleep=clock.sleep)
    # asked at 0, 1, 2 and 3 s: the deadline is judged after an answer, never before it
    assert clock.slept == [1.0, 1.0, 1.0] and clock.now == 3


def test_asks_once_even_with_no_time_at_all() -> None:
    clock = FakeTime()
    with pytest.raises(LookupError, match="down"):
        poll_until(answers("down"), lambda a: a == "up", timeout=0, interval=1.0,
                   error=LookupError, clock=clock.monotonic, sleep=clock.sleep)
    assert clock.slept == []


def test_give_up_ends_the_wait_early_with_the_callers_error() -> None:
    clock = FakeTime()
    with pytest.raises(RuntimeError, match="failed"):
        poll_until(answers("activating", "failed", "active"), lambda a: a == "active",
                   timeout=60, interval=0.2, give_up=lambda a: a == "failed",
                   error=RuntimeError, clock=clock.monotonic, sleep=clock.sleep)
    assert clock.slept == [0.2]


def test_poll_hands_back_a_late_answer_instead_of_raising() -> None:
    clock = FakeTime()
    got = poll(answers({"a", "b"}, {"b"}), lambda missing: not missing, timeout=2,
               interval=1.0, clock=clock.monotonic, sleep=clock.sleep)
    assert got == {"b"} and clock.now == 2
