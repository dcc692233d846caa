"""The schema of a runbook file (pydantic, unknown fields refused).

Shaped like a Chaos Toolkit experiment: a steady state (probes with tolerances) checked before
and after every case, cases with a method (ordered steps) and rollbacks that always run. A step
is exactly one of::

    task:  a Nornir task (`faults.stop_service` in the task library, or `pkg.mod:func`)
    probe: a check-sweep row (`check:etcd`) or a task returning CheckResult, with expectations
    wait:  {probe, ..., max_time, check_interval}: until the probe holds (pyATS Blitz style)
    pause: seconds
    lab:   a lab-only fault by name (power cuts), provided through runbook/seams.py

A file with `method` (and `rollbacks`, `expect`, `load`) at the top level and no `cases` is one
case named after the file: sugar for the simple runbook.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, model_validator

from nornir_k8sha import constants as C

STEP_KINDS = ("task", "probe", "wait", "pause", "lab")
OPERATORS = ("equal", "not_equal", "contains", "not_contains", "range", "regex", "not_regex")
Pick = Literal["all", "one", "any", "majority"] | Annotated[int, Field(ge=1)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Expect(_Strict):
    """One assertion on a field of each target's result (nornir-salt test-suite style).

    `field` is a dotted path into the CheckResult (`status`, `message`, `values.holds_vip`) or,
    for a task that returns something else, into {result, changed, failed}. In a value,
    `@fault.address` and `@fault` stand for the address / name of the first host the case's
    fault step resolved to."""

    field: str
    equal: Any = None
    not_equal: Any = None
    contains: Any = None
    not_contains: Any = None
    range: tuple[float, float] | None = None
    regex: str | None = None
    not_regex: str | None = None
    #: Which targets must satisfy it: every one, or at least one (not `on`: YAML reads it
    #: as a boolean).
    match: Literal["all", "any"] = "all"

    @model_validator(mode="after")
    def _one_operator(self) -> Expect:
        ops = [k for k in OPERATORS if k in self.model_fields_set]
        if len(ops) != 1:
            raise ValueError(f"give exactly one of {', '.join(OPERATORS)} (got "
                             f"{', '.join(ops) or 'none'})")
        return self

    @property
    def operator(self) -> str:
        return next(k for k in OPERATORS if k in self.model_fields_set)


class MinOk(_Strict):
    min_ok: int = Field(ge=0)


class MaxFailed(_Strict):
    max_failed: int = Field(ge=0)


#: "ok": every target ok (skipped counts as ok); "any": the probe only has to answer.
Tolerance = Literal["ok", "any"] | MinOk | MaxFailed


class ProbeSpec(_Strict):
    """A probe: a sweep row `check:<row>` or a task returning CheckResult, on optional hosts."""

    probe: str
    hosts: str | None = None
    pick: Pick = "all"
    #: Keep only these targets of a sweep row (e.g. one lease of check:leases).
    targets: list[str] | None = None
    args: dict[str, Any] = Field(default_factory=dict)
    tolerance: Tolerance = "ok"
    expect: list[Expect] = Field(default_factory=list)
    timeout: float = Field(C.RUNBOOK_STEP_TIMEOUT_S, gt=0)
    name: str | None = None


class SteadyProbe(ProbeSpec):
    """A probe of the steady state: checked before and after every case, and with
    `continuous: N` also every N s while the case's method runs (Chaos Toolkit checks its
    hypothesis only before and after; a maintenance runbook wants "the API serves" to hold
    throughout). A continuous probe that does not hold fails the case, naming the probe."""

    continuous: float | None = Field(None, gt=0, le=C.RUNBOOK_PAUSE_MAX_S)


class _Optional(_Strict):
    #: A failure of this step is recorded but neither stops the method nor fails the case
    #: (pyATS Blitz's `continue`).
    optional: bool = False


class _HostStep(_Optional):
    """A step that acts on hosts: a task or a lab fault."""

    hosts: str
    pick: Pick = "all"
    args: dict[str, Any] = Field(default_factory=dict)
    timeout: float = Field(C.RUNBOOK_STEP_TIMEOUT_S, gt=0)
    name: str | None = None
    #: Marks "fault applied" on the timeline; its hosts become `@fault`.
    fault: bool = False
    #: Marks "fault lifted" on the timeline.
    lift: bool = False


class TaskStep(_HostStep):
    task: str
    expect: list[Expect] = Field(default_factory=list)


class ProbeStep(ProbeSpec, _Optional):
    pass


class WaitSpec(ProbeSpec):
    holds: Literal["ok", "any"] | MinOk | MaxFailed | None = None
    max_time: float = Field(gt=0, le=C.RUNBOOK_CASE_MAX_S)
    check_interval: float = Field(1.0, gt=0)


class WaitStep(_Optional):
    wait: WaitSpec
    name: str | None = None


class PauseStep(_Strict):
    pause: float = Field(gt=0, le=C.RUNBOOK_PAUSE_MAX_S)
    name: str | None = None


class LabStep(_HostStep):
    lab: str


def _step_kind(value: Any) -> str | None:
    if isinstance(value, BaseModel):
        return next(k for k in STEP_KINDS if hasattr(value, k))
    if not isinstance(value, dict):
        return None
    kinds = [k for k in STEP_KINDS if k in value]
    return kinds[0] if len(kinds) == 1 else None


Step = Annotated[
    Annotated[TaskStep, Tag("task")] | Annotated[ProbeStep, Tag("probe")]
    | Annotated[WaitStep, Tag("wait")] | Annotated[PauseStep, Tag("pause")]
    | Annotated[LabStep, Tag("lab")],
    Discriminator(_step_kind),
]


class CaseExpect(_Strict):
    """What outage the configuration predicts (runbook/expect.py computes the bound)."""

    kind: str = "none"
    params: dict[str, Any] = Field(default_factory=dict)


class LoadOptions(_Strict):
    """How the load probe's clients behave in one case (`load: {request_timeout: 20}`).

    The default request timeout is short so an outage shows as failures, not as a hang; a case
    about requests that hang (a frozen apiserver) gives its clients the patience of kubectl,
    which has no request timeout of its own, to measure how long they are left hanging."""

    request_timeout: float = Field(C.PROBE_REQUEST_TIMEOUT_S, gt=0,
                                   le=C.PROBE_MAX_REQUEST_TIMEOUT_S)


class Case(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.${}-]*$")
    title: str = ""
    description: str = ""
    expect: CaseExpect = Field(default_factory=CaseExpect)
    #: Run the load probe through the VIP during the method and measure the outage (a
    #: mapping: with these options).
    load: bool | LoadOptions = False
    method: list[Step] = Field(min_length=1)
    rollbacks: list[Step] = Field(default_factory=list)
    max_time: float = Field(C.RUNBOOK_CASE_MAX_S, gt=0)
    #: One case per item: `machine` (every physical machine), `role:<r>` (every host of a
    #: role); `${item}` in the case stands for it.
    for_each: str | None = None


class Runbook(_Strict):
    title: str
    description: str = ""
    variables: dict[str, Any] = Field(default_factory=dict)
    steady_state: list[SteadyProbe] = Field(default_factory=list)
    #: How long the steady state may take to come back after a case's rollbacks.
    recovery_max_time: float = Field(C.RUNBOOK_RECOVERY_MAX_S, gt=0)
    max_time: float = Field(C.RUNBOOK_MAX_S, gt=0)
    #: False: the runbook only reads (no --yes needed on a real inventory).
    disruptive: bool = True
    cases: list[Case] = Field(default_factory=list)
    # sugar: a single case at the top level
    expect: CaseExpect | None = None
    load: bool | LoadOptions | None = None
    method: list[Step] | None = None
    rollbacks: list[Step] | None = None

    @model_validator(mode="after")
    def _cases_or_method(self) -> Runbook:
        if self.method is not None and self.cases:
            raise ValueError("give either `cases` or a top-level `method`, not both")
        if self.method is None and not self.cases:
            raise ValueError("a runbook needs `cases` (or a top-level `method`)")
        if self.method is None and (self.rollbacks is not None or self.expect is not None
                                    or self.load is not None):
            raise ValueError("top-level `rollbacks`, `expect` and `load` go with a top-level "
                             "`method`")
        return self

    def all_cases(self, name: str) -> list[Case]:
        """The cases, with the top-level sugar turned into one case called `name`."""
        if self.method is None:
            return list(self.cases)
        return [Case(name=name, title=self.title, description=self.description,
                     expect=self.expect or CaseExpect(), load=self.load or False,
                     method=self.method, rollbacks=self.rollbacks or [])]


AnyStep = TaskStep | ProbeStep | WaitStep | PauseStep | LabStep


def step_label(step: AnyStep) -> str:
    """A short human name for a step: its `name`, else kind and target."""
    if step.name:
        return step.name
    if isinstance(step, TaskStep):
        return f"task {step.task} on {step.hosts}"
    if isinstance(step, LabStep):
        return f"lab {step.lab} on {step.hosts}"
    if isinstance(step, WaitStep):
        return f"wait {step.wait.probe} (max {step.wait.max_time:g}s)"
    if isinstance(step, PauseStep):
        return f"pause {step.pause:g}s"
    return f"probe {step.probe}" + (f" on {step.hosts}" if step.hosts else "")
