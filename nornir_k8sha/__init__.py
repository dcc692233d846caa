"""nornir-k8sha: build, prove and operate a highly-available Kubernetes front end with Nornir."""

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
from nornir_k8sha.topology import ClusterSpec, Finding, HostSpec, load_cluster_spec

__version__ = "0.1.0"

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
