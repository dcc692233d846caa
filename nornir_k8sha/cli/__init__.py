"""The command line, one module per command group (`commands` holds the root and `validate`,
`common` the shared options and the load-or-exit-2 path). `main` is the console script; it
imports only the group of the command it runs. `app` is the whole command line (every group
imported), made on first use."""

from typing import Any

from nornir_k8sha.cli.commands import build, main

__all__ = ["app", "main"]


def __getattr__(name: str) -> Any:
    if name != "app":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    app = build()
    globals()["app"] = app
    return app
