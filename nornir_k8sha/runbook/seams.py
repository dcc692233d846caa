"""The seam for lab-only faults: power cuts and the like, which no SSH command can do.

Runbooks never import the lab. The lab registers its providers here from outside (the cli does
it when it loads the lab), and a runbook step `lab: power_off` calls the provider by name::

    seams.register("power_off", provider)   # provider(spec, hosts, **args) -> str

A runbook that uses a lab step is refused up front unless the inventory is the lab's and a
provider of that name is registered.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from nornir_k8sha.topology import ClusterSpec

#: A lab fault: acts on `hosts` of the lab cluster, returns what it did (one line).
FaultProvider = Callable[..., str]

_providers: dict[str, FaultProvider] = {}
_lock = threading.Lock()


def register(name: str, provider: FaultProvider) -> None:
    """Make a lab fault available to runbooks under `name` (replaces an earlier one)."""
    with _lock:
        _providers[name] = provider


def unregister(name: str) -> None:
    with _lock:
        _providers.pop(name, None)


def provider(name: str) -> FaultProvider | None:
    with _lock:
        return _providers.get(name)


def names() -> list[str]:
    with _lock:
        return sorted(_providers)


def apply(name: str, spec: ClusterSpec, hosts: list[str], **args: Any) -> str:
    """Run the lab fault `name` on `hosts`; KeyError when nobody registered it."""
    fn = provider(name)
    if fn is None:
        known = ", ".join(names()) or "none: the lab is not loaded"
        raise KeyError(f"no lab fault {name!r} is registered (known: {known})")
    return fn(spec, hosts, **args)
