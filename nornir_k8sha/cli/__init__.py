"""The command line, one module per command group (`commands` holds the root and `validate`,
`common` the shared options and the load-or-exit-2 path). `main` is the console script; it
imports only the group of the command it runs, with the garbage collector paused (`startup`).
`app` is the whole command line (every group imported), made on first use."""

from typing import Any

from nornir_k8sha.cli import startup

__all__ = ["app", "build", "main"]


def main() -> None:
    """The console script (`nornir-k8sha`, `python -m nornir_k8sha`)."""
    with startup.imports():
        from nornir_k8sha.cli import commands  # lazy: start-up, imported with the GC paused
    commands.main()


def __getattr__(name: str) -> Any:
    if name not in ("app", "build"):
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from nornir_k8sha.cli import commands  # lazy: start-up, see main

    if name == "build":
        return commands.build
    app = commands.build()
    globals()["app"] = app
    return app
