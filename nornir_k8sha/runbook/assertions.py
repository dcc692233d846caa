"""Judging probe results: tolerances and per-target expectations (nornir-salt style).

Every probe of a runbook (steady state, probe and wait steps) yields CheckResults; a tolerance
says how many of them must be ok, an expectation asserts on a field of each one.
"""

from __future__ import annotations

import re
from dataclasses import replace
from typing import Any

from nornir.core.task import Result

from nornir_k8sha.checkresult import CheckResult
from nornir_k8sha.clients import error_text
from nornir_k8sha.runbook.model import Expect, MaxFailed, MinOk, Tolerance


def tolerates(tol: Tolerance, found: list[CheckResult]) -> tuple[bool, str]:
    if not found:
        return False, "no target answered"
    bad = [r for r in found if r.status == "failed"]
    if tol == "any":
        return True, ""
    if isinstance(tol, MinOk):
        good = len(found) - len(bad)
        return (good >= tol.min_ok,
                "" if good >= tol.min_ok else f"{good} ok < {tol.min_ok}: {_list(bad)}")
    if isinstance(tol, MaxFailed):
        return (len(bad) <= tol.max_failed,
                "" if len(bad) <= tol.max_failed else f"{len(bad)} failed: {_list(bad)}")
    return not bad, _list(bad)


def _list(results: list[CheckResult]) -> str:
    return "; ".join(f"{r.target}: {r.message}" for r in results)


def expectations(expects: list[Expect], targets: list[CheckResult],
                  tokens: dict[str, str]) -> tuple[bool, str]:
    problems = []
    for e in expects:
        want = fill_fault(getattr(e, e.operator), tokens)
        misses = [f"{t.target}: {e.field} = {_get(t, e.field)!r}, expected {e.operator} "
                  f"{want!r}" for t in targets if not _holds(e.operator, _get(t, e.field), want)]
        if (e.match == "all" and misses) or (e.match == "any"
                                              and len(misses) == len(targets)):
            problems += misses
    return not problems, "; ".join(problems)


_MISSING = object()


def _get(target: CheckResult, path: str) -> Any:
    node: Any = target
    for part in path.split("."):
        if isinstance(node, dict):
            node = node.get(part, _MISSING)
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            node = getattr(node, part, _MISSING)
        if node is _MISSING:
            return None
    return node


def _holds(op: str, value: Any, want: Any) -> bool:
    try:
        if op == "equal":
            return bool(value == want)
        if op == "not_equal":
            return bool(value != want)
        if op in ("contains", "not_contains"):
            inside = want in value if value is not None else False
            return inside if op == "contains" else not inside
        if op == "range":
            return value is not None and want[0] <= float(value) <= want[1]
        found = value is not None and re.search(str(want), str(value)) is not None
        return found if op == "regex" else not found
    except (TypeError, ValueError):
        return False


def fill_fault(value: Any, tokens: dict[str, str]) -> Any:
    """`@fault.address` / `@fault` in an expected value -> the first fault host's."""
    if isinstance(value, str):
        for token, text in tokens.items():
            value = value.replace(token, text)
    return value


def task_target(name: str, r: Result) -> CheckResult:
    """What a task step's expectations read: its CheckResult, else {result, changed, failed}."""
    if isinstance(r.result, CheckResult):
        return r.result
    return CheckResult(name, "failed" if r.failed else "ok", str(r.result)[:200],
                       {"result": r.result, "changed": r.changed, "failed": r.failed})


def as_check(name: str, r: Result) -> CheckResult:
    if isinstance(r.result, CheckResult):
        return r.result
    if r.exception is not None:
        return CheckResult(name, "failed", error_text(r.exception))
    return replace(task_target(name, r), status="failed" if r.failed else "ok")
