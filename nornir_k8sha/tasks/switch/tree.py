"""A switch configuration as a hierarchy, so that a plan knows which section a line lives in.

IOS, IOS-XE, NX-OS, EOS and FRR print their running config as indentation-nested sections of any
depth (`router bgp` / `neighbor` / `address-family`); Junos prints flat `set` statements with
`show configuration | display set`. Both parse into the same tree (Junos: one level). A
`Syntax` says how one platform spells equal lines, which lines hold a single value (a changed
BGP timer replaces the old line rather than adding a second one), and how to negate a line.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field

#: Lines of a running config that carry no configuration: banners of the `show` command,
#: comments, and the mode exits FRR and IOS print between sections.
NOISE = re.compile(r"^(Building configuration|Current configuration|!|#|end$|exit(-[a-z-]+)?$"
                   r"|Command: |Time: |Running configuration last done)")


#: Config lines that carry a secret: the keyword (and an IOS type digit) stay, the value goes.
SECRET = re.compile(r"(?i)\b(password|secret|encrypted-password|authentication-key|"
                    r"pre-shared-key|community|key-string|md5)(\s+\d)?(\s+)\S.*$")


def redact(line: str) -> str:
    """The line with any secret value replaced: diffs and messages show that it is there
    (and changes), never what it is."""
    return SECRET.sub(lambda m: f"{m.group(1)}{m.group(2) or ''}{m.group(3)}<redacted>", line)


@dataclass
class Node:
    """One config line and the lines nested under it."""

    line: str
    children: list[Node] = field(default_factory=list)


@dataclass(frozen=True)
class Syntax:
    """How one platform writes its configuration."""

    #: Spaces per nesting level when the platform prints its config.
    indent: int
    #: Junos: flat `set` statements, negated with `delete`, no modes to enter.
    set_style: bool = False
    #: Lines that hold one value: same key, other value = a change, not a second line.
    single_valued: tuple[re.Pattern[str], ...] = ()
    #: (pattern, replacement) pairs that give two spellings of one line the same key.
    aliases: tuple[tuple[re.Pattern[str], str], ...] = ()
    #: Lines that open a configuration mode even when nothing is nested under them yet.
    sections: tuple[re.Pattern[str], ...] = ()
    #: Sections that cannot be negated as a whole (FRR has no `no address-family`): their
    #: children are negated one by one instead.
    keep_sections: tuple[re.Pattern[str], ...] = ()
    #: How an address-family mode is left (IOS: `exit-address-family`; others take `exit`).
    af_exit: str = "exit"

    def canon(self, line: str) -> str:
        """The line as the platform would print it: one spelling, single spaces."""
        text = " ".join(line.split())
        for pattern, repl in self.aliases:
            text = pattern.sub(repl, text)
        return text

    def setting(self, line: str) -> str | None:
        """The setting a single-valued line sets (`neighbor 10.0.0.1 timers`), else None."""
        text = self.canon(line)
        for pattern in self.single_valued:
            m = pattern.match(text)
            if m:
                return " * ".join(g for g in m.groups() if g)
        return None

    def opens_mode(self, node: Node) -> bool:
        return bool(node.children) or any(p.match(node.line) for p in self.sections)

    def keeps(self, line: str) -> bool:
        return any(p.match(line) for p in self.keep_sections)

    def negate(self, line: str) -> str:
        if self.set_style:
            return "delete " + line.removeprefix("set ")
        return line[3:] if line.startswith("no ") else f"no {line}"

    def exit(self, section: str) -> str:
        """The command that leaves the mode `section` opened."""
        return self.af_exit if section.startswith("address-family") else "exit"


def parse(text: str, syntax: Syntax) -> list[Node]:
    """The running config (or the rendered intent) as a tree. Sections that appear twice at
    one level (a config pasted in pieces) are merged, as the device itself would merge them."""
    root = Node("")
    stack: list[tuple[int, Node]] = [(-1, root)]
    for raw in text.replace("\r", "").splitlines():
        stripped = raw.strip()
        if not stripped or NOISE.match(stripped):
            continue
        if syntax.set_style and not stripped.startswith(("set ", "deactivate ")):
            continue
        depth = 0 if syntax.set_style else len(raw) - len(raw.lstrip(" "))
        while stack[-1][0] >= depth:
            stack.pop()
        parent = stack[-1][1]
        key = syntax.canon(stripped)
        node = next((n for n in parent.children if syntax.canon(n.line) == key), None)
        if node is None:
            node = Node(" ".join(stripped.split()))
            parent.children.append(node)
        stack.append((depth, node))
    return root.children


def walk(nodes: list[Node], depth: int = 0) -> Iterator[tuple[int, Node]]:
    for n in nodes:
        yield depth, n
        yield from walk(n.children, depth + 1)


def render(nodes: list[Node], syntax: Syntax) -> list[str]:
    """The tree printed the way the platform prints it (for diffs), secrets redacted."""
    return [" " * (syntax.indent * depth) + redact(n.line) for depth, n in walk(nodes)]


def find(nodes: list[Node], line: str, syntax: Syntax) -> Node | None:
    key = syntax.canon(line)
    return next((n for n in nodes if syntax.canon(n.line) == key), None)
