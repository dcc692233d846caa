"""One Nornir task on one named host, its error raised: the day-2 sequences (pki renew, node
remove) go host by host and must stop at the first host that fails, naming it."""

from __future__ import annotations

from collections.abc import Callable

from nornir.core import Nornir

from nornir_k8sha.exceptions import CommandFailed, K8shaError


def run_on(nr: Nornir, host: str, task: Callable[..., object], **kwargs: object) -> object:
    """`task` on `host` (failed hosts included); its result, or its error raised: ours as it
    is, anything else as CommandFailed naming the host and the task."""
    multi = nr.filter(name=host).run(task=task, on_failed=True, **kwargs)[host]
    if multi.failed:
        exc = multi[0].exception
        if isinstance(exc, K8shaError):
            raise exc
        name = getattr(task, "__name__", str(task))
        raise CommandFailed(host, name, 1, str(exc or multi[0].result))
    return multi[0].result
