"""The figures of one case from its load samples: pure functions, no I/O.

Definitions (docs/verify.md repeats them for people):

- a request "succeeded" at its end (that is when we know the API answered);
- downtime: the longest gap between two consecutive successes (any kind) with at least one
  failed request inside it, among the gaps that end after the fault was applied (with no fault
  time: among all gaps). A gap without a failure in it is only the probe's sampling period, not
  an outage, so a case where nothing failed has downtime 0. Failures before the first success
  or after the last one make an open gap that starts at the first sample / ends at the last;
- partial outage (the expectation says so: one of several backends broken, e.g. a frozen
  apiserver behind HAProxy): requests fail only when they land on the broken one while the
  others keep succeeding, so the gap between two successes stays short however long the
  broken backend keeps receiving requests. The downtime is then the larger of that gap and
  the failing window: from the start of the first failed request (not before the fault was
  applied) to the end of the last one, among the requests that failed after the fault was
  applied and began before its lift: how long clients could be left hanging or failing. A
  kept-alive request that hung until its connection was cut and then succeeded when sent
  again (load.py) counts there as failing from its start to the cut;
- detect: fault applied -> start of the first failed request ending after it;
- recover: fault lifted (the lifting step began; when never lifted, the fault was applied;
  with no fault time, the first failure) -> the later of two moments: the API is back for
  good (the first success after the last failure; the lift itself when nothing failed after
  it) and the steady state holds again (the "steady" mark the engine makes when the sweep
  after the rollbacks passed; without one, the API alone). None when the API never came
  back (the engine also makes it None when the steady state did not return). `api_recover_s`
  is the first of the two alone: lift -> API back for good (0 when nothing failed after the lift);
- writes acknowledged during the outage: 201s whose request started once the fault was in
  effect (the "applied" mark the engine makes when the fault step is done; without one, the
  fault mark) and ended before its lifting began (the "lift" mark; never lifted: any time
  after). Only such a write was surely committed while the fault held (the etcd-majority case
  wants none: it would be an ack without quorum). Not counted from the first failed request:
  a fault on several hosts is not applied at once (stopping two etcd members, the leader's
  graceful stop hands its leadership over while the other still runs), a read may fail while
  a quorum still commits writes (seen once in CI); nor to the last failure, which may start
  after the members returned;
- takeover: fault applied -> the first "holder" mark after it (of the holder the expectation
  names in `takeover_of`, e.g. HAProxy's DOWN backends or one lease; else of any).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from nornir_k8sha.runbook.results import Expectation, Figures, Mark, Sample


@dataclass(frozen=True)
class Gap:
    """An interval without a success; `closed` is False when no success ended it."""

    begin: float
    end: float
    closed: bool = True

    @property
    def length(self) -> float:
        return max(0.0, self.end - self.begin)


def gaps(samples: Sequence[Sample]) -> list[Gap]:
    """Gaps between consecutive successes that have a failed request inside them."""
    if not samples:
        return []
    first = min(s.start for s in samples)
    last = max(s.end for s in samples)
    successes = sorted(s.end for s in samples if s.ok)
    failures = [s for s in samples if not s.ok]
    if not successes:
        return [Gap(first, last, closed=False)] if failures else []
    bounds = [Gap(first, successes[0])]
    bounds += [Gap(a, b) for a, b in zip(successes, successes[1:], strict=False)]
    bounds.append(Gap(successes[-1], last, closed=False))
    return [g for g in bounds if any(f.start < g.end and f.end > g.begin for f in failures)]


def last_failure(samples: Sequence[Sample]) -> float | None:
    """The end of the newest failed request; None when none failed."""
    return max((s.end for s in samples if not s.ok), default=None)


def first_success_after(samples: Sequence[Sample], moment: float) -> float | None:
    """The end of the first request that succeeded after `moment`: the API back from then on,
    when `moment` is the last failure."""
    return min((s.end for s in samples if s.ok and s.end > moment), default=None)


def figures(samples: Sequence[Sample], *, fault_at: float | None, lifted_at: float | None,
            acknowledged: int, lost: int, marks: Sequence[Mark] | None = None,
            takeover_of: str = "", partial: bool = False) -> Figures:
    """Requests, failures, downtime, detect/recover times and write figures of one case."""
    failed = [s for s in samples if not s.ok]
    window = [g for g in gaps(samples) if fault_at is None or g.end > fault_at]
    worst = max(window, key=lambda g: g.length, default=None)
    downtime = worst.length if worst else 0.0
    if partial:
        downtime = max(downtime, failing_window(samples, fault_at, lifted_at))
    fig = Figures(requests=len(samples), failed=len(failed),
                  downtime_s=downtime, detect_s=None, recover_s=None,
                  writes_acknowledged=acknowledged, writes_lost=lost)
    if not samples:
        return fig
    since = fault_at if fault_at is not None else float("-inf")
    after = sorted((s for s in failed if s.end > since), key=lambda s: s.end)
    if fault_at is not None:
        fig.takeover_s = _takeover(marks or (), fault_at, takeover_of)
        fig.writes_acknowledged_during_outage = len(
            acknowledged_in_fault(samples, marks or (), fault_at, lifted_at))
    onset = min((s.start for s in after), default=None)
    reference = next((t for t in (lifted_at, fault_at, onset) if t is not None), None)
    if after:
        assert onset is not None
        fig.detect_s = None if fault_at is None else max(0.0, onset - fault_at)
        api_back = first_success_after(samples, after[-1].end)
    else:
        api_back = reference
    if reference is None:  # nothing failed and no fault: nothing to recover from
        fig.recover_s = fig.api_recover_s = 0.0
        return fig
    if api_back is None:
        return fig
    fig.api_recover_s = max(0.0, api_back - reference)
    steady = [m.at for m in marks or () if m.kind == "steady" and m.at >= reference]
    fig.recover_s = max(fig.api_recover_s, min(steady) - reference if steady else 0.0)
    return fig


def failing_window(samples: Sequence[Sample], fault_at: float | None,
                   lifted_at: float | None) -> float:
    """First failed request's start (not before the fault) -> last one's end, of those failed
    after the fault and begun before its lift (0 when none failed). A request sent again after
    its connection was cut counts as failing until the cut (`retried_at`)."""
    since = fault_at if fault_at is not None else float("-inf")
    until = lifted_at if lifted_at is not None else float("inf")
    spans = [(s.start, s.end) for s in samples if not s.ok]
    spans += [(s.start, s.retried_at) for s in samples if s.ok and s.retried_at is not None]
    hit = [(a, b) for a, b in spans if b > since and a < until]
    # a request in flight when the fault struck waited before it too: not outage time
    return max(b for _, b in hit) - max(since, min(a for a, _ in hit)) if hit else 0.0


def acknowledged_in_fault(samples: Sequence[Sample], marks: Sequence[Mark], fault_at: float,
                          lifted_at: float | None) -> list[Sample]:
    """The writes acknowledged (201) from start to end while the fault was in effect."""
    applied = min((m.at for m in marks if m.kind == "applied" and m.at >= fault_at),
                  default=fault_at)
    until = lifted_at if lifted_at is not None else float("inf")
    return [s for s in samples if s.kind == "write" and s.ok and s.start >= applied
            and s.end <= until]


def _takeover(marks: Sequence[Mark], fault_at: float, of: str = "") -> float | None:
    holders = [m.at for m in marks if m.kind == "holder" and m.at >= fault_at
               and m.label.startswith(f"{of}: " if of else "")]
    return min(holders) - fault_at if holders else None


def shortfalls(expected: Expectation, fig: Figures) -> list[str]:
    """What the measurement broke of the expectation, one sentence each (empty: it held).

    The measurement's share of a case's verdict; the engine adds the steady state.
    """
    out = []
    if not fig.requests:
        out.append("the load probe recorded no request")
    if fig.writes_lost:
        out.append(f"{fig.writes_lost} of {fig.writes_acknowledged} acknowledged writes lost")
    if expected.writes_must_be_refused and fig.writes_acknowledged_during_outage:
        out.append(f"{fig.writes_acknowledged_during_outage} writes acknowledged during the "
                   "outage, where every write must be refused")
    if fig.api_recover_s is None and fig.failed:  # even where an outage is expected
        out.append("the API never recovered")
    if (expected.api_must_serve and expected.downtime_s is not None
            and fig.downtime_s > expected.downtime_s):
        out.append(f"downtime {fig.downtime_s:.2f} s > bound {expected.downtime_s:.2f} s")
    if expected.takeover_s is not None:
        if fig.takeover_s is None:
            out.append("no holder change seen")
        elif fig.takeover_s > expected.takeover_s:
            out.append(f"takeover {fig.takeover_s:.2f} s > bound {expected.takeover_s:.2f} s")
    return out
