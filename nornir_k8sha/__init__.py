"""nornir-k8sha: build, prove and operate a highly-available Kubernetes front end with Nornir.

The topology API below is imported on first use (PEP 562), so that importing any module of the
package does not load pydantic and nornir first: the command line imports what its command
needs, with the garbage collector paused (`nornir_k8sha.cli.startup`)."""

from importlib import import_module
from typing import TYPE_CHECKING, Any

from nornir_k8sha.exceptions import (
    CommandFailed,
    ConnectionFailed,
    DeployError,
    InventoryError,
    K8shaError,
    LabError,
    NotRootError,
    PKIError,
    ValidationFailed,
)

if TYPE_CHECKING:  # for type checkers; at run time `__getattr__` below
    from nornir_k8sha.topology import ClusterSpec, Finding, HostSpec, load_cluster_spec

__version__ = "0.1.0"

#: name -> the module defining it, imported when the name is first read
_TOPOLOGY_API = {name: "nornir_k8sha.topology"
                 for name in ("ClusterSpec", "Finding", "HostSpec", "load_cluster_spec")}

__all__ = [
    "ClusterSpec",
    "CommandFailed",
    "ConnectionFailed",
    "DeployError",
    "Finding",
    "HostSpec",
    "InventoryError",
    "K8shaError",
    "LabError",
    "NotRootError",
    "PKIError",
    "ValidationFailed",
    "__version__",
    "load_cluster_spec",
]


def __getattr__(name: str) -> Any:
    module = _TOPOLOGY_API.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_TOPOLOGY_API})
