"""What a runbook run produced: data every view (console, JSON, JUnit, Markdown) reads.

Thin containers, like the deploy's RunReport: one `CaseResult` per case of a runbook, holding
the expectation computed from the configuration, the figures measured by the load probe, the
steady-state checks before and after, and each step's outcome.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from nornir_k8sha.checkresult import CheckResult

Verdict = Literal["passed", "failed", "error", "skipped"]
SampleKind = Literal["read-fresh", "read-keepalive", "write"]
#: The holder term of the backends any HAProxy has DOWN: the engine marks its changes, the
#: apiserver kind's takeover is the first of them (runbook/expect.py).
HAPROXY_DOWN = "haproxy-down"
MarkKind = Literal["fault", "applied", "lift", "holder", "step", "steady", "deviation", "note"]


@dataclass(frozen=True)
class Expectation:
    """A bound computed from the configuration, and how (shown beside what was measured)."""

    downtime_s: float | None  # None: no bound (the API may stay down, e.g. etcd majority lost)
    explanation: str  # e.g. "VRRP master-down 3 x 0.1 s + skew 0.04 s, + HAProxy ... = 0.9 s"
    api_must_serve: bool = True  # False when the outage is the expected outcome
    writes_must_be_refused: bool = False  # etcd majority lost: no write may be acknowledged
    # A leader/holder must change within this many seconds of the fault (first "holder" mark
    # after the "fault" mark); None: no change is asked for (e.g. lease: 15 s + 2 s retry).
    takeover_s: float | None = None
    #: Whose change counts as the takeover: a holder term of the engine ("haproxy-down",
    #: "lease-holder:kube-scheduler"); "" any holder change.
    takeover_of: str = ""
    #: One of several backends broken (a frozen apiserver): requests fail only when they land
    #: on it while others succeed, so the downtime is the failing window, not only the gap
    #: between two successes (runbook/measure.py).
    partial_outage: bool = False


@dataclass(frozen=True)
class Sample:
    """One request of the load probe: when it started and ended (time.monotonic()), what it
    was, and whether it succeeded. Writes carry their sequence number."""

    kind: SampleKind
    start: float
    end: float
    ok: bool
    status: int | None = None  # HTTP status, None when no answer
    error: str = ""
    seq: int | None = None
    #: the first attempt's error when the request was sent again on a new connection (the
    #: kept-alive clients do it like Go's net/http: runbook/load.py, docs/verify.md)
    retried: str = ""
    #: when that first attempt failed (time.monotonic()): the request hung until then
    retried_at: float | None = None


@dataclass(frozen=True)
class Mark:
    """An event on a case's timeline: fault applied/lifted, VIP holder changed, step done."""

    at: float  # time.monotonic()
    label: str
    kind: MarkKind = "note"


@dataclass
class Figures:
    """The numbers of one case, from its samples (runbook/measure.py)."""

    requests: int
    failed: int
    downtime_s: float  # longest gap between two successful requests around the fault
    detect_s: float | None  # fault applied -> first failed request (None: none failed)
    #: fault lifted (or applied, when never lifted) -> the API back for good and the steady
    #: state holding again, whichever is later (None: one of them never came back)
    recover_s: float | None
    writes_acknowledged: int
    writes_lost: int  # acknowledged, yet not read back after recovery
    writes_acknowledged_during_outage: int = 0
    takeover_s: float | None = None  # fault applied -> first "holder" mark after it
    #: fault lifted -> the first success after the last failure (0: nothing failed after the
    #: lift; None: the API never came back)
    api_recover_s: float | None = None


@dataclass
class StepResult:
    """One step of a method or a rollback."""

    name: str
    ok: bool
    message: str = ""
    duration: float = 0.0
    hosts: list[str] = field(default_factory=list)  # the selector's resolution at run time
    data: dict[str, Any] = field(default_factory=dict)


@dataclass
class CaseResult:
    """One case of a runbook, start to finish."""

    name: str
    title: str
    verdict: Verdict = "skipped"
    reason: str = ""
    expectation: Expectation | None = None
    figures: Figures | None = None
    steady_before: list[CheckResult] = field(default_factory=list)
    steady_after: list[CheckResult] = field(default_factory=list)
    steps: list[StepResult] = field(default_factory=list)
    rollbacks: list[StepResult] = field(default_factory=list)
    #: Continuous steady-state probes that did not hold during the method, one line each:
    #: "+3.2 s check:etcd: why" (seconds since the case started).
    deviations: list[str] = field(default_factory=list)
    samples: list[Sample] = field(default_factory=list)
    marks: list[Mark] = field(default_factory=list)
    started: float = 0.0  # time.monotonic() at the case's start: timelines are relative to it
    duration: float = 0.0


@dataclass
class RunbookResult:
    """A whole run: its cases in order. Exit 0 when every case passed, else 1."""

    runbook: str  # title
    path: str
    cluster: str
    cases: list[CaseResult] = field(default_factory=list)
    started_wall: float = 0.0  # time.time()
    duration: float = 0.0
    dry_run: bool = False
    interrupted: bool = False  # Ctrl-C / SIGTERM: rollbacks ran, later cases were skipped

    @property
    def passed(self) -> bool:
        return all(c.verdict in ("passed", "skipped") for c in self.cases)
