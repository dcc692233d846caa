"""The command line, one module per command group (`app` holds the root and `validate`,
`common` the shared options and the load-or-exit-2 path). `main` is the console script."""

from nornir_k8sha.cli.app import app, main

__all__ = ["app", "main"]
