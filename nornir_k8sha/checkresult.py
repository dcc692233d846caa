"""What one health check found about one target: data, not text.

Every check of the task library (`nornir_k8sha.tasks.<component>.check`) puts a `CheckResult`
in its Nornir `Result.result`; the `check` sweep, its console table, `--json` and the runbook
engine all read these fields and nothing else.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Literal

CheckStatus = Literal["ok", "failed", "skipped"]


@dataclass
class CheckResult:
    """One target (host, VIP, lease, certificate...) as a check saw it."""

    target: str
    status: CheckStatus
    message: str
    #: What was measured, as plain JSON-able data (e.g. {"holds_vip": True, "routes": [...]}).
    values: dict[str, Any] = field(default_factory=dict)
    duration: float = 0.0

    @property
    def ok(self) -> bool:
        return self.status != "failed"

    def __str__(self) -> str:
        return f"{self.target}: {self.status}: {self.message}"

    def as_dict(self) -> dict[str, Any]:
        return {"target": self.target, "status": self.status, "message": self.message,
                "values": self.values, "duration_s": round(self.duration, 3)}


def passed(target: str, message: str, start: float, **values: Any) -> CheckResult:
    """An ok result, timed from `start` (time.monotonic())."""
    return CheckResult(target, "ok", message, values, time.monotonic() - start)


def failed(target: str, message: str, start: float, **values: Any) -> CheckResult:
    """A failed result, timed from `start` (time.monotonic())."""
    return CheckResult(target, "failed", message, values, time.monotonic() - start)


def skipped(target: str, message: str) -> CheckResult:
    """Nothing to check yet (no control plane, no switches...): says why."""
    return CheckResult(target, "skipped", message)
