"""The package's imports run one way (docs/layers.md): no cycle, no wrong-way arrow, no import of
our own modules hidden in a function without a reason, no ImportError swallowed."""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

from .conftest import REPO

PACKAGE = REPO / "nornir_k8sha"
LAYERS_DOC = REPO / "docs" / "layers.md"
#: Programs copied into lab hosts and run there on their own (stdlib only): not the package.
STANDALONE = PACKAGE / "lab" / "standins" / "programs"


def _block(name: str) -> list[list[str]]:
    text = LAYERS_DOC.read_text()
    body = re.search(rf"```{name}\n(.*?)```", text, re.S)
    assert body, f"docs/layers.md has no ```{name} block"
    return [line.split() for line in body.group(1).splitlines() if line.strip()]


def _layers() -> list[tuple[str, list[str]]]:
    return [(row[0], [m for m in row[1:] if m.startswith("nornir_k8sha")])
            for row in _block("layers")]


def _module_name(path: Path) -> str:
    rel = path.relative_to(REPO).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _sources() -> Iterator[tuple[str, Path]]:
    for path in sorted(PACKAGE.rglob("*.py")):
        if STANDALONE in path.parents:
            continue
        yield _module_name(path), path


def _owner(module: str, prefixes: list[str]) -> str | None:
    """The longest prefix that `module` is or lives under."""
    best = None
    for p in prefixes:
        # the package itself (its __init__) is a module of its own, not a prefix of all
        inside = module == p or (module.startswith(p + ".") and p != PACKAGE.name)
        if inside and (best is None or len(p) > len(best)):
            best = p
    return best


def _resolve(module: str, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    base = module.split(".")
    is_pkg = True  # relative imports only occur in packages here
    base = base[: len(base) - node.level + (1 if is_pkg else 0)]
    return ".".join([*base, *(node.module.split(".") if node.module else [])])


def _is_module(name: str) -> bool:
    path = PACKAGE.parent / Path(*name.split("."))
    return path.with_suffix(".py").exists() or path.is_dir()


def _imports(module: str, path: Path) -> list[tuple[str, int, bool, str]]:
    """(imported module, line, inside a function, source line) for our own imports."""
    tree = ast.parse(path.read_text(), str(path))
    lines = path.read_text().splitlines()
    found: list[tuple[str, int, bool, str]] = []

    def visit(node: ast.AST, in_function: bool, in_type_checking: bool) -> None:
        for child in ast.iter_child_nodes(node):
            func = in_function or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef)
            tc = in_type_checking or (isinstance(child, ast.If)
                                      and "TYPE_CHECKING" in ast.unparse(child.test))
            names: list[str] = []
            if isinstance(child, ast.Import):
                names = [a.name for a in child.names]
            elif isinstance(child, ast.ImportFrom):
                target = _resolve(module, child)
                # `from nornir_k8sha.tasks import host`: the submodule is what is imported;
                # the package itself only when a name is not a submodule of it
                subs = [f"{target}.{a.name}" for a in child.names if _is_module(
                    f"{target}.{a.name}")]
                names = subs + ([target] if len(subs) < len(child.names) else [])
            for name in names:
                if name.startswith("nornir_k8sha") and not tc:
                    found.append((name, child.lineno, in_function,
                                  lines[child.lineno - 1]))
            visit(child, func, tc)

    visit(tree, False, False)
    return found


def _graph() -> dict[str, set[str]]:
    mods = dict(_sources())
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for module, path in mods.items():
        for target, _, _, _ in _imports(module, path):
            owner = _owner(target, list(mods))
            if owner and owner != module:
                graph[module].add(owner)
    return graph


def test_every_module_has_a_place() -> None:
    placed = [m for _, mods in _layers() for m in mods] + [row[1] for row in _block("rooms")]
    homeless = [m for m, _ in _sources() if _owner(m, placed) is None]
    assert not homeless, f"modules in no layer of docs/layers.md: {homeless}"


def test_imports_run_down_the_layers_only() -> None:
    layers = _layers()
    rank = {m: i for i, (_, mods) in enumerate(layers) for m in mods}
    rooms = {row[0]: row[1] for row in _block("rooms")}
    prefixes = [*rank, *rooms.values()]
    lab, testing = rooms["lab"], rooms["testing"]
    model_rank = next(i for i, (name, _) in enumerate(layers) if name == "model")
    connection_rank = next(i for i, (name, _) in enumerate(layers) if name == "connection")
    wrong = []
    for module, targets in _graph().items():
        src = _owner(module, prefixes)
        for target in targets:
            dst = _owner(target, prefixes)
            if dst in (None, src) or src is None:
                continue
            if dst == testing:
                if src != testing:
                    wrong.append(f"{module} -> {target} (test fakes are for tests only)")
            elif dst == lab:
                if src not in (lab,) and rank.get(src) != 0:
                    wrong.append(f"{module} -> {target} (only the cli reaches the lab)")
            elif src == lab:
                if rank[dst] < model_rank:
                    wrong.append(f"{module} -> {target} (the lab sits beside the stack)")
            elif src == testing:
                if rank[dst] < connection_rank:
                    wrong.append(f"{module} -> {target} (fakes stand below the tasks)")
            elif rank[dst] < rank[src]:
                wrong.append(f"{module} -> {target} ({layers[rank[src]][0]} may not import "
                             f"{layers[rank[dst]][0]})")
    assert not wrong, "wrong-way imports:\n" + "\n".join(sorted(wrong))


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected component of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = iter(range(10**6))

    def strong(v: str) -> None:
        index[v] = low[v] = next(counter)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in graph:
        if v not in index:
            strong(v)
    return out


def test_no_import_cycles() -> None:
    # A package's __init__ re-exporting its own submodules is not a cycle of ours.
    graph = {m: {t for t in ts if not t.startswith(m + ".")} for m, ts in _graph().items()}
    assert not _cycles(graph), f"import cycles: {_cycles(graph)}"


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_of_our_own_modules_hidden_in_a_function() -> None:
    hidden = [f"{path.relative_to(REPO)}:{line}: {text.strip()}"
              for module, path in _sources()
              for _, line, in_function, text in _imports(module, path)
              if in_function and "# lazy:" not in text]
    assert not hidden, ("imports inside functions (move them up, or say why with "
                        "`# lazy: <reason>`):\n" + "\n".join(hidden))


def test_no_import_error_is_swallowed() -> None:
    swallowed = []
    for _, path in _sources():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ExceptHandler) and node.type is not None:
                caught = ast.unparse(node.type)
                if "ImportError" in caught or "ModuleNotFoundError" in caught:
                    swallowed.append(f"{path.relative_to(REPO)}:{node.lineno}")
    assert not swallowed, f"ImportError caught (a broken module would vanish): {swallowed}"
