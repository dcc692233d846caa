"""Plan a switch change from its running config and the rendered intent.

The plan is what `deploy --dry-run` shows and what `configure` sends: the lines the intent adds
or changes, each under the sections it lives in (so a nested NX-OS `router bgp / neighbor /
address-family` line is sent inside its parents, and only when it is missing there), a unified
diff of the running config against running config + intent, and the commands that would take
the switch back to the config it had when it was read (`restore`).
"""

from __future__ import annotations

import copy
import difflib
from dataclasses import dataclass, field
from typing import Literal

from nornir_k8sha.tasks.switch.tree import Node, Syntax, find, parse, render

EditKind = Literal["add", "replace", "remove"]


@dataclass(frozen=True)
class Edit:
    """One change at one place of the tree."""

    kind: EditKind
    #: The parent section lines, outermost first.
    path: tuple[str, ...]
    #: The line added, the new value of a replaced line, or the line removed.
    line: str
    #: A replaced line's old value.
    old: str | None = None
    #: An added section's nested lines (sent after `line`, inside it).
    children: tuple[Node, ...] = ()


@dataclass
class Plan:
    """What applying the intent to one switch means."""

    edits: list[Edit]
    commands: list[str]
    diff: str
    #: Commands that take running + intent back to the running config as read.
    restore: list[str]
    running: list[Node] = field(repr=False, default_factory=list)
    merged: list[Node] = field(repr=False, default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(self.edits)


def merge(running: list[Node], intent: list[Node], syntax: Syntax,
          path: tuple[str, ...] = ()) -> list[Edit]:
    """Fold the intent into `running` (in place); the edits that took, in intent order. A new
    line goes right after the intent line before it, so the merged config reads in order."""
    edits: list[Edit] = []
    at: int | None = None
    for want in intent:
        have = find(running, want.line, syntax)
        if have is not None:
            at = running.index(have)
            edits += merge(have.children, want.children, syntax, (*path, have.line))
            continue
        setting = syntax.setting(want.line)
        old = next((n for n in running if setting and not n.children and not want.children
                    and syntax.setting(n.line) == setting), None)
        if old is not None:
            edits.append(Edit("replace", path, want.line, old=old.line))
            old.line = want.line
            at = running.index(old)
            continue
        node = copy.deepcopy(want)
        at = len(running) if at is None else at + 1
        running.insert(at, node)
        edits.append(Edit("add", path, want.line, children=tuple(node.children)))
    return edits


def removals(current: list[Node], target: list[Node], syntax: Syntax,
             path: tuple[str, ...] = ()) -> list[Edit]:
    """Lines of `current` that `target` neither has nor sets to another value, in config
    order. A section is removed whole unless the platform cannot negate it."""
    out: list[Edit] = []
    for node in current:
        there = find(target, node.line, syntax)
        if there is not None:
            out += removals(node.children, there.children, syntax, (*path, node.line))
            continue
        setting = syntax.setting(node.line)
        if setting and any(syntax.setting(t.line) == setting for t in target):
            continue  # the target's value is set by an "add", which replaces this one
        if node.children and syntax.keeps(node.line):
            out += removals(node.children, [], syntax, (*path, node.line))
        elif syntax.set_style:
            line = container(node.line, target)
            if not any(e.line == line for e in out):
                out.append(Edit("remove", path, line))
        else:
            out.append(Edit("remove", path, node.line))
    return out


def container(statement: str, target: list[Node]) -> str:
    """Junos: the shortest head of a `set` statement that nothing in `target` shares, so that
    deleting it also deletes what the statement created (a neighbour, a policy) and nothing
    the target keeps."""
    words = statement.split()
    kept = [n.line.split() for n in target]
    for end in range(2, len(words) + 1):
        if not any(k[:end] == words[:end] for k in kept):
            return " ".join(words[:end])
    return statement


def restore_edits(current: list[Node], target: list[Node], syntax: Syntax) -> list[Edit]:
    """Edits from `current` back to `target`: removals last-first (a neighbour's description
    goes before its remote-as), then what `target` has that `current` lacks."""
    out = list(reversed(removals(current, target, syntax)))
    out += merge(copy.deepcopy(current), target, syntax)
    return out


def commands(edits: list[Edit], syntax: Syntax) -> list[str]:
    """The command list: each line inside its parents, `exit` out of modes no longer needed.
    Lines are indented as the platform prints them (the devices ignore leading spaces)."""
    out: list[str] = []
    mode: tuple[str, ...] = ()

    def emit(path: tuple[str, ...], line: str, opens: bool) -> None:
        nonlocal mode
        if syntax.set_style:
            out.append(line)
            return
        common = 0
        while common < min(len(mode), len(path)) and mode[common] == path[common]:
            common += 1
        for depth in range(len(mode), common, -1):
            out.append(" " * (syntax.indent * depth) + syntax.exit(mode[depth - 1]))
        for depth in range(common, len(path)):
            out.append(" " * (syntax.indent * depth) + path[depth])
        out.append(" " * (syntax.indent * len(path)) + line)
        mode = (*path, line) if opens else path

    def emit_tree(path: tuple[str, ...], node: Node) -> None:
        emit(path, node.line, syntax.opens_mode(node))
        for child in node.children:
            emit_tree((*path, node.line), child)

    for e in edits:
        if e.kind == "remove":
            emit(e.path, syntax.negate(e.line), False)
        elif e.kind == "replace":
            emit(e.path, e.line, False)
        else:
            emit_tree(e.path, Node(e.line, list(e.children)))
    for depth in range(len(mode), 0, -1):
        out.append(" " * (syntax.indent * depth) + syntax.exit(mode[depth - 1]))
    return out


def unified(before: list[Node], after: list[Node], syntax: Syntax, host: str) -> str:
    return "".join(difflib.unified_diff(
        [ln + "\n" for ln in render(before, syntax)], [ln + "\n" for ln in render(after, syntax)],
        fromfile=f"{host}:running-config", tofile=f"{host}:running-config+intent"))


def plan(running_text: str, intent_text: str, syntax: Syntax, host: str) -> Plan:
    """The whole plan for one switch: edits, commands, dry-run diff and the way back."""
    running = parse(running_text, syntax)
    merged = copy.deepcopy(running)
    edits = merge(merged, parse(intent_text, syntax), syntax)
    return Plan(edits=edits, commands=commands(edits, syntax),
                diff=unified(running, merged, syntax, host) if edits else "",
                restore=commands(restore_edits(merged, running, syntax), syntax),
                running=running, merged=merged)


def restore_commands(current_text: str, target: list[Node], syntax: Syntax) -> list[str]:
    """Commands that bring a switch whose config now reads `current_text` back to `target`
    (after a change that went in part or whole)."""
    return commands(restore_edits(parse(current_text, syntax), target, syntax), syntax)
