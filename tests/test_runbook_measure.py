"""figures(): the numbers of a case from synthetic sample lists (no clock, no network)."""

from __future__ import annotations

import pytest

from nornir_k8sha.runbook.measure import figures, gaps, shortfalls
from nornir_k8sha.runbook.results import Expectation, Figures, Mark, Sample


def reads(times: list[float], ok: bool = True, took: float = 0.02,
          kind: str = "read-fresh") -> list[Sample]:
    """One read per start time, each taking `took` seconds."""
    return [Sample(kind, t, t + took, ok, 200 if ok else None, "" if ok else "refused")  # type: ignore[arg-type]
            for t in times]


def every(start: float, stop: float, step: float = 0.1) -> list[float]:
    n = round((stop - start) / step)
    return [round(start + i * step, 6) for i in range(n)]


def outage_run() -> list[Sample]:
    """Reads every 0.1 s from 0 to 10 s; those started in [2.0, 2.5) fail."""
    return reads(every(0, 2.0)) + reads(every(2.0, 2.5), ok=False) + reads(every(2.5, 10))


def test_outage_downtime_detect_recover() -> None:
    fig = figures(outage_run(), fault_at=1.95, lifted_at=5.0, acknowledged=0, lost=0)
    assert fig.requests == 100 and fig.failed == 5
    # last success ends at 1.92, first success after ends at 2.52
    assert fig.downtime_s == pytest.approx(0.6)
    assert fig.detect_s == pytest.approx(0.05)
    assert fig.recover_s == 0.0  # back before the fault was lifted
    assert fig.takeover_s is None


def test_recovery_lasts_until_the_steady_state_holds_again() -> None:
    """The API failed over long before the lift (its own recovery is 0), but the cluster was
    whole again only when the sweep after the rollbacks passed, 4 s after the lift."""
    marks = [Mark(1.95, "kill", "fault"), Mark(5.0, "start", "lift"),
             Mark(9.0, "steady state holds again", "steady")]
    fig = figures(outage_run(), fault_at=1.95, lifted_at=5.0, acknowledged=0, lost=0,
                  marks=marks)
    assert fig.api_recover_s == 0.0
    assert fig.recover_s == pytest.approx(4.0)


def test_recovery_of_an_outage_that_lasts_past_the_lift() -> None:
    """etcd's majority stopped: requests fail until the members are back, which takes the
    lifting step itself (a start that blocks until quorum) and more."""
    samples = reads(every(0, 2)) + reads(every(2, 7), ok=False) + reads(every(7, 10))
    marks = [Mark(2.0, "stop", "fault"), Mark(5.0, "start", "lift"),
             Mark(7.5, "steady state holds again", "steady")]
    fig = figures(samples, fault_at=2.0, lifted_at=5.0, acknowledged=0, lost=0, marks=marks)
    assert fig.api_recover_s == pytest.approx(7.02 - 5.0)  # first success after the last failure
    assert fig.recover_s == pytest.approx(2.5)  # the steady state came back later still
    # with the steady state back at once, the API's return is the recovery
    quick = [*marks[:2], Mark(5.5, "steady state holds again", "steady")]
    assert figures(samples, fault_at=2.0, lifted_at=5.0, acknowledged=0, lost=0,
                   marks=quick).recover_s == pytest.approx(2.02)


def test_recover_counts_from_the_lift_when_the_api_needs_it() -> None:
    fig = figures(outage_run(), fault_at=1.95, lifted_at=2.3, acknowledged=0, lost=0)
    assert fig.recover_s == pytest.approx(2.52 - 2.3)
    fig = figures(outage_run(), fault_at=1.95, lifted_at=None, acknowledged=0, lost=0)
    assert fig.recover_s == pytest.approx(2.52 - 1.95)


def test_no_failures_means_no_downtime_whatever_the_sampling_period() -> None:
    fig = figures(reads(every(0, 5, step=0.25)), fault_at=1.0, lifted_at=2.0, acknowledged=3,
                  lost=0)
    assert (fig.failed, fig.downtime_s, fig.detect_s, fig.recover_s) == (0, 0.0, None, 0.0)
    assert fig.writes_acknowledged == 3


def test_failures_before_the_fault_do_not_count_as_its_downtime() -> None:
    samples = reads(every(0, 1)) + reads(every(1, 1.8), ok=False) + reads(every(1.8, 6))
    fig = figures(samples, fault_at=3.0, lifted_at=4.0, acknowledged=0, lost=0)
    assert fig.failed == 8  # still counted as failed requests
    assert fig.downtime_s == 0.0 and fig.detect_s is None
    # without a fault time the same run has its 0.9 s gap
    assert figures(samples, fault_at=None, lifted_at=None, acknowledged=0,
                   lost=0).downtime_s == pytest.approx(0.9)


def test_longest_gap_wins_when_there_are_two_outages() -> None:
    samples = (reads(every(0, 1)) + reads(every(1, 1.2), ok=False) + reads(every(1.2, 2))
               + reads(every(2, 2.7), ok=False) + reads(every(2.7, 4)))
    fig = figures(samples, fault_at=0.5, lifted_at=None, acknowledged=0, lost=0)
    assert fig.downtime_s == pytest.approx(0.8)
    assert fig.detect_s == pytest.approx(0.5)


def test_never_recovered_is_an_open_gap_to_the_last_sample() -> None:
    samples = reads(every(0, 2)) + reads(every(2, 4), ok=False)
    fig = figures(samples, fault_at=2.0, lifted_at=3.0, acknowledged=4, lost=4)
    assert fig.recover_s is None
    assert fig.downtime_s == pytest.approx(4.0 - 0.1 + 0.02 - 1.92)
    assert gaps(samples)[-1].closed is False
    problems = shortfalls(Expectation(1.0, "x"), fig)
    assert "the API never recovered" in problems
    assert "4 of 4 acknowledged writes lost" in problems


def test_empty_and_all_failed() -> None:
    empty = figures([], fault_at=1.0, lifted_at=2.0, acknowledged=0, lost=0)
    assert (empty.requests, empty.downtime_s, empty.recover_s) == (0, 0.0, None)
    assert shortfalls(Expectation(1.0, "x"), empty) == ["the load probe recorded no request"]
    dead = figures(reads(every(0, 1), ok=False), fault_at=0.0, lifted_at=None, acknowledged=0,
                   lost=0)
    assert dead.failed == 10 and dead.recover_s is None
    assert dead.downtime_s == pytest.approx(0.92)


def test_a_read_still_hanging_after_recovery_does_not_hide_the_outage() -> None:
    """A request that timed out after later reads already succeeded still marks its gap."""
    hang = Sample("read-keepalive", 1.95, 2.95, False, None, "timed out")
    samples = reads(every(0, 2)) + reads(every(2.2, 4)) + [hang]
    fig = figures(samples, fault_at=1.95, lifted_at=None, acknowledged=0, lost=0)
    assert fig.downtime_s == pytest.approx(2.22 - 1.92)
    # the last failure ends at 2.95: recovery is the first success after it
    assert fig.recover_s == pytest.approx(3.02 - 1.95)


def test_writes_acknowledged_during_the_outage_and_takeover() -> None:
    writes = [Sample("write", 2.1, 2.2, True, 201, seq=1),
              Sample("write", 5.0, 5.1, True, 201, seq=2)]
    samples = reads(every(0, 2)) + reads(every(2, 3), ok=False) + reads(every(3, 6)) + writes
    marks = [Mark(1.0, "lvs1", "holder"), Mark(2.0, "kill", "fault"),
             Mark(2.4, "lvs2", "holder")]
    fig = figures(samples, fault_at=2.0, lifted_at=4.0, acknowledged=2, lost=0, marks=marks)
    assert fig.writes_acknowledged_during_outage == 1
    assert fig.takeover_s == pytest.approx(0.4)
    refuse = Expectation(None, "majority lost", api_must_serve=False, writes_must_be_refused=True)
    assert shortfalls(refuse, fig) == [
        "1 writes acknowledged during the outage, where every write must be refused"]
    # an expected outage must still end: the API comes back when the members return
    gone = figures(samples[:30] + reads(every(3, 6), ok=False), fault_at=2.0, lifted_at=4.0,
                   acknowledged=0, lost=0)
    assert shortfalls(refuse, gone) == ["the API never recovered"]


def test_takeover_of_one_holder_ignores_the_others() -> None:
    """An apiserver case's takeover is HAProxy marking it DOWN, not a lease that moved first."""
    marks = [Mark(2.0, "stop", "fault"), Mark(2.5, "lease-holder:kube-scheduler: master2",
                                               "holder"),
             Mark(3.1, "haproxy-down: master1", "holder")]
    samples = reads(every(0, 5))
    assert figures(samples, fault_at=2.0, lifted_at=4.0, acknowledged=0, lost=0,
                   marks=marks).takeover_s == pytest.approx(0.5)
    assert figures(samples, fault_at=2.0, lifted_at=4.0, acknowledged=0, lost=0, marks=marks,
                   takeover_of="haproxy-down").takeover_s == pytest.approx(1.1)
    assert figures(samples, fault_at=2.0, lifted_at=4.0, acknowledged=0, lost=0, marks=marks,
                   takeover_of="haproxy").takeover_s is None  # a term, not a prefix


def test_writes_acknowledged_during_the_outage_are_those_inside_it_end_to_end() -> None:
    """etcd's majority lost from 1 s to 6 s, as the lab showed it: a write committed just
    before the fault ends after the first failure began, a read that began in the outage times
    out after quorum is back and a write was acknowledged: neither write is "during" it."""
    samples = (reads(every(0, 1)) + reads(every(1, 6), ok=False) + reads(every(6, 8))
               + [Sample("read-keepalive", 5.9, 6.9, False, None, "timed out")])
    before = Sample("write", 0.95, 1.2, True, 201, seq=1)  # began before the outage
    after = Sample("write", 6.1, 6.2, True, 201, seq=3)  # quorum back, the hung read not done
    inside = Sample("write", 3.0, 3.1, True, 201, seq=2)  # must never happen
    fig = figures([*samples, before, after], fault_at=1.0, lifted_at=5.0, acknowledged=2,
                  lost=0)
    assert fig.writes_acknowledged_during_outage == 0
    fig = figures([*samples, before, inside, after], fault_at=1.0, lifted_at=5.0,
                  acknowledged=3, lost=0)
    assert fig.writes_acknowledged_during_outage == 1


def test_shortfalls_compare_with_the_bound() -> None:
    fig = Figures(requests=100, failed=5, downtime_s=0.6, detect_s=0.0, recover_s=0.0,
                  writes_acknowledged=10, writes_lost=0, api_recover_s=0.0)
    assert shortfalls(Expectation(0.7, "ok"), fig) == []
    assert shortfalls(Expectation(0.5, "tight"), fig) == ["downtime 0.60 s > bound 0.50 s"]
    assert shortfalls(Expectation(None, "down", api_must_serve=False), fig) == []
    lease = Expectation(0.24, "lease", takeover_s=17.5)
    assert shortfalls(lease, fig)[-1] == "no holder change seen"
    fig.takeover_s = 18.0
    assert shortfalls(lease, fig)[-1] == "takeover 18.00 s > bound 17.50 s"


def test_a_write_committed_while_the_fault_was_still_being_applied_is_not_during_it() -> None:
    """The CI flake of etcd-majority-lost: stopping two members is not instant. The leader's
    graceful stop hands leadership over and a readyz read fails (1.15 s) while the other member
    still runs: quorum holds and a write is committed (1.2-1.3 s). Only when the fault step is
    done (1.6 s: both members stopped) is quorum gone, until the members return (the lift,
    5.0 s). A write acknowledged inside that window would be a real ack without quorum."""
    samples = (reads(every(0, 1.1)) + [Sample("read-fresh", 1.15, 1.5, False, 500, "HTTP 500")]
               + reads(every(1.5, 6), ok=False) + reads(every(6, 8)))
    committed = Sample("write", 1.2, 1.3, True, 201, seq=1)
    marks = [Mark(1.0, "fault: stop etcd on etcd1, etcd2", "fault"),
             Mark(1.6, "fault in effect: stop etcd", "applied"), Mark(5.0, "lifted", "lift")]
    fig = figures([*samples, committed], fault_at=1.0, lifted_at=5.0, acknowledged=1, lost=0,
                  marks=marks)
    assert fig.writes_acknowledged_during_outage == 0
    inside = Sample("write", 1.7, 1.8, True, 201, seq=2)  # sent after both had stopped
    fig = figures([*samples, committed, inside], fault_at=1.0, lifted_at=5.0, acknowledged=2,
                  lost=0, marks=marks)
    assert fig.writes_acknowledged_during_outage == 1


def test_a_partial_outage_lasts_as_long_as_requests_keep_failing() -> None:
    """One of three backends frozen from 2 s until HAProxy takes it out at 5 s: every third
    read hangs 1 s and fails, the others succeed. No gap between successes is long, yet
    clients kept failing for 4 s: with `partial` that window is the downtime."""
    samples = reads(every(0, 10))
    samples = [s for s in samples if not 2.0 <= s.start < 5.0 or round(s.start * 10) % 3]
    samples += reads([t for t in every(2.0, 5.0) if round(t * 10) % 3 == 0], ok=False, took=1.0)
    whole = figures(samples, fault_at=2.0, lifted_at=7.0, acknowledged=0, lost=0)
    assert whole.downtime_s < 0.3
    fig = figures(samples, fault_at=2.0, lifted_at=7.0, acknowledged=0, lost=0, partial=True)
    assert fig.downtime_s == pytest.approx(4.8 + 1.0 - 2.1)  # last failed read: 4.8 s
    # a failure long before the fault or after the lift is not part of it
    # a read in flight when the fault struck (1.9 s) counts from the fault
    caught = reads([1.9], ok=False, took=1.5)
    assert figures([*samples, *caught], fault_at=2.0, lifted_at=7.0, acknowledged=0, lost=0,
                   partial=True).downtime_s == pytest.approx(4.8 + 1.0 - 2.0)
    stray = reads([0.5, 7.5], ok=False)
    assert figures([*samples, *stray], fault_at=2.0, lifted_at=7.0, acknowledged=0, lost=0,
                   partial=True).downtime_s == pytest.approx(fig.downtime_s)


def test_a_request_that_hung_until_its_cut_and_was_sent_again_counts_as_failing() -> None:
    """A frozen apiserver: the kept-alive read sent at 2.0 s hangs until HAProxy cuts its
    session at 4.0 s, then succeeds at once on a new connection (load.py sends it again, as
    Go's net/http would). Nothing failed, but a client waited 2 s: the failing window of a
    partial outage keeps it; for any other case it is a success like the others."""
    samples = reads(every(0, 6))
    hung = Sample("read-keepalive", 2.0, 4.05, True, 200, retried="Server disconnected",
                  retried_at=4.0)
    fig = figures([*samples, hung], fault_at=1.5, lifted_at=5.0, acknowledged=0, lost=0,
                  partial=True)
    assert fig.failed == 0 and fig.downtime_s == pytest.approx(2.0)
    assert figures([*samples, hung], fault_at=1.5, lifted_at=5.0, acknowledged=0,
                   lost=0).downtime_s == 0.0
