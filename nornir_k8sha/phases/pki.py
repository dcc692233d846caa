"""PKI: the cluster's CAs and certificates, made locally in the state dir (idempotent)."""

from __future__ import annotations

from nornir_k8sha.deploy import LOCAL, DeployContext, LocalPhase
from nornir_k8sha.pki import ClusterPKI
from nornir_k8sha.report import HostOutcome


class PkiPhase(LocalPhase):
    name = "pki"
    title = "PKI"

    def local(self, ctx: DeployContext) -> HostOutcome:
        statuses = ClusterPKI(ctx.spec, ctx.state_dir).ensure()
        made = [s.name for s in statuses if s.action != "reused"]
        return HostOutcome(LOCAL, "changed" if made else "ok",
                           message=f"{len(statuses)} certificates",
                           changes=made)
