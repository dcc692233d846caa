"""What the command line does to its own process so that a command starts and ends quickly
(issue 12.3). A whole `check` or no-op `deploy` pays its interpreter, imports and teardown on
every run; these cut that fixed cost without changing what the command does:

- `imports()`: the command's modules (pydantic, nornir, httpx, rich, typer, paramiko, ...) are
  imported with the garbage collector paused, then frozen: they create hundreds of thousands of
  objects that live as long as the process, and the collector would otherwise walk them again
  and again while they load (~25 ms of a ~0.3 s import on the lab's VM) and in every later
  full collection;
- `exiting()`: when the command is done, what it made is frozen too, so the interpreter's
  teardown does not walk it all once more (~50 ms). Threads are still joined, `atexit` handlers
  still run and files are still closed (flushed) as their last reference goes;
- `defer("invoke")`: paramiko imports invoke when it loads (~30 ms with the `unittest.mock` and
  `asyncio` invoke pulls in) for one thing only, an ssh_config `Match exec` line, which our
  connections never read; `import invoke` then gets a stand-in that imports the real module on
  its first attribute access, so a `Match exec` still works as before. (importlib's LazyLoader
  does not do: in Python 3.11 the `import` statement itself reads the module's `__spec__` and
  loads it.)

The process belongs to the command line: the library (`nornir_k8sha.tasks`, ...) changes none of
this when imported into someone else's program.
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import importlib.util
import sys
import threading
import types
from collections.abc import Iterator
from typing import Any

#: Imported by a dependency when it loads but used only on a rare path: loaded on first use.
DEFERRED = ("invoke",)


_loading = threading.Lock()


class Deferred(types.ModuleType):
    """Stands in `sys.modules` for a module until one of its attributes is read: then the real
    module is imported, replaces it there, and lends it its namespace (importers that kept the
    stand-in read the real attributes from then on)."""

    def __getattr__(self, attr: str) -> Any:
        name = self.__name__
        with _loading:
            real = sys.modules.get(name)
            if real is self:
                del sys.modules[name]
                try:
                    real = importlib.import_module(name)
                except BaseException:
                    sys.modules[name] = self
                    raise
                vars(self).update(vars(real))
        return getattr(real, attr)


def defer(name: str) -> None:
    """Let the top-level module `name` be imported without running it until an attribute of
    it is read (`Deferred`). Nothing happens when it is already imported or not installed (its
    importers then meet the ImportError they handle today)."""
    if name in sys.modules:
        return
    spec = importlib.util.find_spec(name)
    if spec is None:
        return
    stand_in = Deferred(name)
    stand_in.__spec__ = spec
    stand_in.__loader__ = spec.loader
    sys.modules[name] = stand_in


@contextlib.contextmanager
def imports() -> Iterator[None]:
    """Import a command's modules with the collector paused; freeze what they made."""
    for name in DEFERRED:
        defer(name)
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        if was_enabled:
            gc.enable()


def exiting() -> None:
    """The command is done: spare the interpreter's teardown a walk over everything it made."""
    gc.freeze()
