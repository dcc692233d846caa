"""registry: the registry on the harbor host with a certificate from our PKI, and the probe
image every node's containerd pulls in `check`."""

from __future__ import annotations

from nornir.core.task import Result, Task

from nornir_k8sha import constants as C
from nornir_k8sha.deploy import DeployContext, NornirPhase
from nornir_k8sha.tasks import harbor


class Registry(NornirPhase):
    name = "registry"
    title = "registry"
    roles = (C.ROLE_HARBOR,)
    depends_on = ("pki",)

    def task(self, task: Task, ctx: DeployContext) -> Result:
        configured = harbor.configure_registry(task, ctx.spec, ctx.state_dir)
        published = harbor.publish_probe_image(task, ctx.spec, ctx.state_dir,
                                               transport=ctx.http)
        return Result(host=task.host, changed=configured.changed or published.changed,
                      diff=configured.diff, result=f"{configured.result}; {published.result}")
