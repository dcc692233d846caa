"""The phases of a deploy, in stages (DESIGN.md 4). One file per phase; this list is the order.

    stage 1  preflight                      facts vs the table; nothing changes
    stage 2  pki                            local CA and certificates
    stage 3  lb ‖ etcd ‖ network ‖ registry LVS+keepalived, HAProxy; etcd; BGP; the registry
    stage 4  control-plane                  kubeadm init, then control-plane joins one at a time
    stage 5  workers                        containerd trust + joins in parallel
    stage 6  etcd-members                   apiservers' --etcd-servers, then members that left
                                            the inventory removed (one at a time each)
    stage 7  post-checks                    the `check` sweep

The registry runs in stage 3 (not 5 as DESIGN.md drew it): nothing in stage 3 needs it, and
the nodes' trust of it is done in `control-plane` / `workers` where containerd is configured.
"""

from __future__ import annotations

from nornir_k8sha.deploy import Phase
from nornir_k8sha.phases.control_plane import ControlPlane
from nornir_k8sha.phases.etcd import EtcdPhase
from nornir_k8sha.phases.etcd_members import EtcdMembers
from nornir_k8sha.phases.lb import LoadBalancers
from nornir_k8sha.phases.network import Network
from nornir_k8sha.phases.pki import PkiPhase
from nornir_k8sha.phases.post_checks import PostChecks
from nornir_k8sha.phases.preflight import Preflight
from nornir_k8sha.phases.registry import Registry
from nornir_k8sha.phases.workers import Workers


def default_stages() -> list[list[Phase]]:
    return [
        [Preflight()],
        [PkiPhase()],
        [LoadBalancers(), EtcdPhase(), Network(), Registry()],
        [ControlPlane()],
        [Workers()],
        [EtcdMembers()],
        [PostChecks()],
    ]


def phase_names() -> list[str]:
    return [p.name for stage in default_stages() for p in stage]


__all__ = ["default_stages", "phase_names"]
