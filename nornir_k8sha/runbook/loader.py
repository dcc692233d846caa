"""Read a runbook file strictly: every problem is `file:line: field: what`, before anything runs.

Three passes, each listing every problem it finds:
1. YAML (duplicate keys refused) and `${var}` substitution from `variables` (and --var);
2. the schema (runbook/model.py), errors mapped back to the line of the offending key;
3. names: every task and probe resolves to a function, every selector parses, `@fault` comes
   after a fault step. With an inventory (`check_against`), static selectors must match a
   host, and lab steps need the lab's inventory and a registered provider.
"""

from __future__ import annotations

import copy
import importlib
import importlib.util
import inspect
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from nornir_k8sha import constants as C
from nornir_k8sha.checks.sweep import CHECKS, Row
from nornir_k8sha.exceptions import RunbookError
from nornir_k8sha.inventory import load_yaml_with_lines
from nornir_k8sha.runbook import seams, selectors
from nornir_k8sha.runbook.model import (
    STEP_KINDS,
    AnyStep,
    Case,
    LabStep,
    ProbeSpec,
    ProbeStep,
    Runbook,
    TaskStep,
    WaitStep,
)
from nornir_k8sha.topology import ClusterSpec

#: Built-in runbooks: inside the installed package (the wheel force-includes the top-level
#: runbooks/ folder there), else the source checkout's runbooks/ folder.
BUILTIN_DIRS = (Path(__file__).resolve().parent.parent / "runbooks",
                Path(__file__).resolve().parent.parent.parent / "runbooks")
TASK_PACKAGE = "nornir_k8sha.tasks"
CHECK_PREFIX = "check:"
#: The variable a `for_each` case gets for each of its items.
ITEM = "item"
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
Loc = tuple[str | int, ...]


@dataclass
class LoadedRunbook:
    """A runbook that passed the schema, with what is needed to point at its lines later."""

    path: Path
    runbook: Runbook
    data: Any = None
    key_lines: dict[int, dict[Any, int]] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.path.stem

    def where(self, loc: Loc) -> str:
        return f"{self.path}:{line_of(self.data, self.key_lines, loc)}"

    def cases(self, spec: ClusterSpec | None = None) -> list[tuple[int, Case]]:
        """(index in the file, case), `for_each` cases expanded when there is an inventory."""
        out: list[tuple[int, Case]] = []
        for i, case in enumerate(self.runbook.all_cases(self.name)):
            if case.for_each and spec is not None:
                out += [(i, c) for c in expand(case, spec)]
            else:
                out.append((i, case))
        return out


def builtin_runbooks() -> list[Path]:
    """The runbooks shipped with the package (verify-ha, haproxy-maintenance...)."""
    for directory in BUILTIN_DIRS:
        if directory.is_dir():
            return sorted(directory.glob("*.yaml"))
    return []


def find_runbook(name: str | Path) -> Path:
    """A runbook file: a path as given, else a built-in by name (`verify-ha`)."""
    path = Path(name)
    if path.is_file():
        return path
    for candidate in builtin_runbooks():
        if candidate.stem == str(name) or candidate.name == str(name):
            return candidate
    known = ", ".join(p.stem for p in builtin_runbooks()) or "none found"
    raise RunbookError(f"{name}: no such runbook file, and no built-in runbook of that name "
                       f"(built-in: {known})")


def line_of(data: Any, key_lines: dict[int, dict[Any, int]], loc: Loc) -> int:
    """The line of the deepest key of `loc` found in the data (1 when none)."""
    line, node = 1, data
    for part in loc:
        if isinstance(node, dict):
            lines = key_lines.get(id(node), {})
            if part not in node:
                continue  # a union tag or a model name in pydantic's loc: skip it
            line = lines.get(part, line)
            node = node[part]
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            node = node[part]
            if isinstance(node, dict) and key_lines.get(id(node)):
                line = min(key_lines[id(node)].values())
        else:
            break
    return line


def load(path: Path | str, variables: dict[str, Any] | None = None) -> LoadedRunbook:
    """Read and validate a runbook file (no inventory needed). RunbookError lists every
    problem as `file:line: field: message`."""
    path = Path(path)
    data, key_lines = load_yaml_with_lines(path, RunbookError)
    if not isinstance(data, dict):
        raise RunbookError(f"{path}:1: a runbook is a mapping (title, steady_state, cases...)")
    problems: list[str] = []
    declared = data.get("variables") or {}
    if not isinstance(declared, dict):
        declared = {}
    values = {**declared, **(variables or {})}
    for loc, name in _substitute(data, values):
        problems.append(f"{path}:{line_of(data, key_lines, loc)}: {_dotted(loc)}: unknown "
                        f"variable ${{{name}}} (declare it under `variables`)")
    if problems:
        raise RunbookError("\n".join(problems))
    try:
        runbook = Runbook.model_validate(data)
    except ValidationError as exc:
        located = [(_untag(err["loc"]), err) for err in exc.errors()]
        raise RunbookError("\n".join(
            f"{path}:{line_of(data, key_lines, loc)}: {_dotted(loc)}: {_message(err)}"
            for loc, err in located)) from None
    loaded = LoadedRunbook(path, runbook, data, key_lines)
    problems = list(_check_names(loaded))
    if problems:
        raise RunbookError("\n".join(problems))
    return loaded


def check_against(loaded: LoadedRunbook, spec: ClusterSpec,
                  only: set[str] | None = None) -> None:
    """Selectors and lab steps against an inventory (of the cases named in `only`, default
    all); RunbookError lists every problem."""
    problems = []
    wanted = {i for i, c in loaded.cases(spec) if only is None or c.name in only}
    for loc, step in _steps(loaded):
        if loc and loc[0] == "cases" and loc[1] not in wanted:
            continue
        for sel_loc, selector in _selectors(loc, step):
            try:
                terms = selectors.parse(selector)
            except selectors.SelectorError:
                continue  # reported by load()
            if _ITEM_TOKEN in selector:
                continue  # checked on the expanded cases below
            why = selectors.check_static(terms, spec)
            if why:
                problems.append(f"{loaded.where(sel_loc)}: {_dotted(sel_loc)}: {why}")
        if isinstance(step, LabStep):
            if not spec.is_lab:
                problems.append(f"{loaded.where(loc)}: {_dotted(loc)}: lab-only fault "
                                f"{step.lab!r} on cluster {spec.name!r}: only the lab's "
                                f"inventory (cluster {C.LAB_CLUSTER_NAME!r}) can have it")
            elif seams.provider(step.lab) is None:
                problems.append(f"{loaded.where(loc)}: {_dotted(loc)}: lab fault "
                                f"{step.lab!r} is not available (registered: "
                                f"{', '.join(seams.names()) or 'none'})")
    for index, case in loaded.cases(spec):
        if only is not None and case.name not in only:
            continue
        if not loaded.runbook.cases or not loaded.runbook.cases[index].for_each:
            continue
        for part, steps in (("method", case.method), ("rollbacks", case.rollbacks)):
            for j, step in enumerate(steps):
                loc: Loc = ("cases", index, part, j)
                for sel_loc, selector in _selectors(loc, step):
                    why = selectors.check_static(selectors.parse(selector), spec)
                    if why:
                        problems.append(f"{loaded.where(sel_loc)}: {_dotted(sel_loc)}: "
                                        f"case {case.name}: {why}")
    if problems:
        raise RunbookError("\n".join(problems))


_ITEM_TOKEN = "${" + ITEM + "}"


def expand(case: Case, spec: ClusterSpec) -> list[Case]:
    """One case per item of `for_each` (`machine`, or `role:<r>` hosts), `${item}` filled."""
    assert case.for_each is not None
    if case.for_each == "machine":
        items = sorted(spec.machines)
    else:
        role = case.for_each.removeprefix("role:")
        items = [h.name for h in spec.role(role)]
    data = case.model_dump(exclude={"for_each"}, exclude_unset=True)
    out = []
    for item in items:
        filled = copy.deepcopy(data)
        _substitute(filled, {ITEM: item})
        out.append(Case.model_validate(filled))
    return out


# --- names --------------------------------------------------------------------------------


def resolve_task(name: str) -> Callable[..., Any]:
    """`faults.stop_service` -> nornir_k8sha.tasks.faults.stop_service; `pkg.mod:func` as
    written. ValueError says why a name does not resolve."""
    if ":" in name:
        module_name, _, attr = name.partition(":")
    elif "." in name:
        sub, _, attr = name.rpartition(".")
        module_name = f"{TASK_PACKAGE}.{sub}"
    else:
        module_name, attr = TASK_PACKAGE, name
    if not _module_exists(module_name):
        raise ValueError(f"unknown task {name!r}: no module {module_name}")
    module = importlib.import_module(module_name)  # a module that exists but breaks: raises
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise ValueError(f"unknown task {name!r}: {module_name} has no function {attr!r}")
    params = list(inspect.signature(fn).parameters)
    if not params or params[0] != "task":
        raise ValueError(f"{name!r} is not a Nornir task (its first parameter must be `task`)")
    return fn


def _module_exists(dotted: str) -> bool:
    """Whether a module can be found, parents first (find_spec imports the parents; a missing
    parent would raise): a name typed in a runbook, so no ImportError is caught for it."""
    parts = dotted.split(".")
    if not all(p.isidentifier() for p in parts):
        return False
    return all(importlib.util.find_spec(".".join(parts[:i])) is not None
               for i in range(1, len(parts) + 1))


def resolve_probe(name: str) -> Row | Callable[..., Any]:
    """A sweep row for `check:<row>`, else a task (that should return a CheckResult)."""
    if name.startswith(CHECK_PREFIX):
        row = name[len(CHECK_PREFIX):]
        for row_name, _, fn in CHECKS:
            if row_name == row:
                return fn
        raise ValueError(f"unknown check row {row!r} (rows: "
                         f"{', '.join(r for r, _, _ in CHECKS)})")
    return resolve_task(name)


def _check_names(loaded: LoadedRunbook) -> Iterator[str]:
    rb = loaded.runbook
    for i, probe in enumerate(rb.steady_state):
        yield from _probe_problems(loaded, ("steady_state", i), probe)
    for loc, step in _steps(loaded):
        target: ProbeSpec | None = None
        if isinstance(step, TaskStep):
            try:
                resolve_task(step.task)
            except ValueError as exc:
                yield f"{loaded.where((*loc, 'task'))}: {_dotted((*loc, 'task'))}: {exc}"
        elif isinstance(step, ProbeStep):
            target = step
        elif isinstance(step, WaitStep):
            target = step.wait
            loc = (*loc, "wait")
        if target is not None:
            yield from _probe_problems(loaded, loc, target)
        for sel_loc, selector in _selectors(loc, step):
            try:
                selectors.parse(selector)
            except selectors.SelectorError as exc:
                yield f"{loaded.where(sel_loc)}: {_dotted(sel_loc)}: {exc}"
    yield from _fault_order(loaded)


def _probe_problems(loaded: LoadedRunbook, loc: Loc, probe: ProbeSpec) -> Iterator[str]:
    try:
        resolve_probe(probe.probe)
    except ValueError as exc:
        yield f"{loaded.where((*loc, 'probe'))}: {_dotted((*loc, 'probe'))}: {exc}"
    if probe.hosts is not None:
        try:
            selectors.parse(probe.hosts)
        except selectors.SelectorError as exc:
            yield f"{loaded.where((*loc, 'hosts'))}: {_dotted((*loc, 'hosts'))}: {exc}"


def _fault_order(loaded: LoadedRunbook) -> Iterator[str]:
    """`@fault` only after a `fault: true` step of the same case (or in its rollbacks)."""
    for c_loc, case in _case_locs(loaded):
        seen_fault = False
        for part in ("method", "rollbacks"):
            for j, step in enumerate(getattr(case, part)):
                loc = (*c_loc, part, j)
                for sel_loc, selector in _selectors(loc, step):
                    if selectors.FAULT in selector and not seen_fault:
                        yield (f"{loaded.where(sel_loc)}: {_dotted(sel_loc)}: @fault before "
                               "any step with `fault: true` in this case")
                if getattr(step, "fault", False):
                    seen_fault = True


def _case_locs(loaded: LoadedRunbook) -> Iterator[tuple[Loc, Case]]:
    rb = loaded.runbook
    if rb.method is not None:
        yield (), rb.all_cases(loaded.name)[0]
    else:
        for i, case in enumerate(rb.cases):
            yield ("cases", i), case


def _steps(loaded: LoadedRunbook) -> Iterator[tuple[Loc, AnyStep]]:
    for c_loc, case in _case_locs(loaded):
        for part in ("method", "rollbacks"):
            for j, step in enumerate(getattr(case, part)):
                yield (*c_loc, part, j), step


def _selectors(loc: Loc, step: AnyStep) -> Iterator[tuple[Loc, str]]:
    if isinstance(step, TaskStep | LabStep | ProbeStep) and step.hosts is not None:
        yield (*loc, "hosts"), step.hosts
    if isinstance(step, WaitStep) and step.wait.hosts is not None:
        yield (*loc, "wait", "hosts"), step.wait.hosts
    args = getattr(step, "args", {}) or {}
    for key, value in args.items():
        if isinstance(value, dict) and set(value) <= {"select", "as"} and "select" in value:
            yield (*loc, "args", key, "select"), str(value["select"])


# --- variables ----------------------------------------------------------------------------


def _substitute(node: Any, values: dict[str, Any], loc: Loc = ()) -> list[tuple[Loc, str]]:
    """Replace `${name}` in every string below `node` in place (keeping the mappings, so
    their recorded lines stay valid); a string that is exactly `${name}` takes the value's
    type. Returns (location, name) of every unknown variable. `variables` itself is left
    alone, and `${item}` inside a `for_each` case waits for its expansion."""
    unknown: list[tuple[Loc, str]] = []
    if isinstance(node, dict):
        for key in list(node):
            if not loc and key == "variables":
                continue
            inner = values
            if isinstance(node[key], dict) and node[key].get("for_each") and ITEM not in values:
                inner = {**values, ITEM: _ITEM_TOKEN}
            node[key], bad = _subst_value(node[key], inner, (*loc, key))
            unknown += bad
    elif isinstance(node, list):
        for i in range(len(node)):
            inner = values
            if isinstance(node[i], dict) and node[i].get("for_each") and ITEM not in values:
                inner = {**values, ITEM: _ITEM_TOKEN}
            node[i], bad = _subst_value(node[i], inner, (*loc, i))
            unknown += bad
    return unknown


def _subst_value(value: Any, values: dict[str, Any], loc: Loc) -> tuple[Any, list]:
    if isinstance(value, dict | list):
        return value, _substitute(value, values, loc)
    if not isinstance(value, str) or "${" not in value:
        return value, []
    whole = _VAR.fullmatch(value)
    if whole and whole.group(1) in values:
        return values[whole.group(1)], []
    unknown = [(loc, m.group(1)) for m in _VAR.finditer(value) if m.group(1) not in values]
    return _VAR.sub(lambda m: str(values.get(m.group(1), m.group(0))), value), unknown


# --- messages -----------------------------------------------------------------------------


def _untag(loc: Loc) -> Loc:
    """pydantic's loc without the step-kind tag it puts after a step's index."""
    return tuple(p for i, p in enumerate(loc)
                 if not (i >= 2 and p in STEP_KINDS and isinstance(loc[i - 1], int)
                         and loc[i - 2] in ("method", "rollbacks")))


def _dotted(loc: Loc) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "(top level)"


def _message(err: Any) -> str:
    kind = err.get("type", "")
    if kind in ("union_tag_not_found", "union_tag_invalid"):
        got = err.get("input")
        keys = ", ".join(map(str, got)) if isinstance(got, dict) else repr(got)
        return ("unknown step kind: a step has exactly one of task, probe, wait, pause, lab "
                f"(got: {keys})")
    if kind == "extra_forbidden":
        return "unknown field"
    if kind == "missing":
        return "missing field"
    return str(err.get("msg", "invalid"))
