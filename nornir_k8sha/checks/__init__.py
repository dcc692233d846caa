"""`check`: every health check of the running cluster, concurrently, folded into one RunReport.

The sweep composes the task library's checks (`nornir_k8sha.tasks.<component>.check`, one
implementation each) and their cluster-wide verdicts; it adds no probe of its own. Until
`deploy` has fetched the admin kubeconfig, the Kubernetes rows say `skipped` with the reason, so
the SLB tier and etcd can be proven on their own.
"""

from __future__ import annotations

from nornir_k8sha.checks.sweep import (
    CHECKS,
    CheckContext,
    SweepRow,
    bgp_sessions,
    run_checks,
    show_checks,
    switch_sessions,
)

__all__ = ["CHECKS", "CheckContext", "SweepRow", "bgp_sessions", "run_checks", "show_checks",
           "switch_sessions"]
