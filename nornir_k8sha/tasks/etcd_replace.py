"""Replace one etcd member in place: remove it, set its data dir aside, add it back as a LEARNER,
start it joining the existing cluster, promote it once it has caught up.

Why a learner: a new voting member counts towards quorum before it has any data; a learner does
not, so the cluster keeps its quorum while the member catches up (etcd allows one learner at a
time, and promotion fails until it is in sync — retried). A removed member ID can never rejoin,
so the data dir must go: it is moved aside, never deleted.
"""

from __future__ import annotations

import json
import shlex
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
from nornir.core import Nornir
from nornir.core.task import Task

from nornir_k8sha import constants as C
from nornir_k8sha.checkresult import CheckResult
from nornir_k8sha.exceptions import CommandFailed, K8shaError, ReplaceRefused
from nornir_k8sha.polling import poll_until
from nornir_k8sha.tasks import etcd
from nornir_k8sha.tasks import host as H
from nornir_k8sha.tasks.etcd_backup import etcdctl, member_checks
from nornir_k8sha.topology import ClusterSpec, etcd_quorum
from nornir_k8sha.transport import CommandResult

#: etcd's answer while a learner is behind the leader: promotion is retried.
NOT_IN_SYNC = "in sync with leader"
#: etcd's answer to a membership change until every peer has been connected for 5 s
#: (strict-reconfig-check), e.g. right after a member was removed: the add is retried.
UNHEALTHY = "unhealthy cluster"
#: The line of the rendered etcd.conf.yml a joining member must see as "existing".
_STATE_NEW = 'initial-cluster-state: "new"'
_STATE_EXISTING = 'initial-cluster-state: "existing"'


@dataclass(frozen=True)
class Replaced:
    member: str
    old_id: str
    new_id: str
    helper: str
    aside: str


Say = Callable[[str], None]


def run_batch_on(nr: Nornir, host: str, commands: list[str], *, check: bool = True) -> list:
    """Commands on one host as one batch; CommandFailed (naming the host) on a failure."""
    def task(t: Task) -> list:
        return H.connect(t).run_batch(commands, check=check)

    multi = nr.filter(name=host).run(task=task, on_failed=True)[host]
    if multi.failed:
        exc = multi[0].exception
        raise exc if isinstance(exc, K8shaError) else CommandFailed(host, commands[0], 1,
                                                                      str(exc))
    return multi[0].result


def member_list(nr: Nornir, spec: ClusterSpec, helper: str) -> list[dict]:
    out = run_batch_on(nr, helper, [etcdctl(spec, "member", "list", "-w", "json")])[0].stdout
    return list(json.loads(out).get("members", []))


def replace(nr: Nornir, spec: ClusterSpec, state_dir: Path, name: str, *, force: bool = False,
            transport: httpx.BaseTransport | None = None, say: Say = print,
            now: float | None = None, promote_timeout: float = 120.0,
            quorum_timeout: float = 60.0, retry_every: float = 1.0,
            quorum_settle: float = C.ETCD_QUORUM_SETTLE_S) -> Replaced:
    """Replace member `name` (an etcd member of the inventory). ReplaceRefused when the others
    have no quorum for `quorum_settle` s (the answer is a restore) or `name` is healthy and
    not `force`."""
    members = [m.name for m in spec.role(C.ROLE_ETCD)]
    need = etcd_quorum(len(members))

    def look() -> tuple[dict[str, CheckResult], list[str]]:
        """Every member's check, and the other members that are healthy."""
        checks = member_checks(nr, spec, state_dir, transport)
        return checks, sorted(n for n in members if n != name and checks.get(n)
                              and checks[n].values.get("healthy"))

    def no_quorum(seen: tuple[dict[str, CheckResult], list[str]]) -> ReplaceRefused:
        others = seen[1]
        return ReplaceRefused(
            f"etcd: only {len(others)} other member(s) healthy ({', '.join(others) or 'none'}) "
            f"for {quorum_settle:g} s, quorum is {need}: a member cannot be replaced without "
            "quorum; use `etcd restore --from SNAPSHOT` instead. Nothing was touched")

    # A member that has just died may have been the leader: the others answer /health false
    # until they have elected a new one. Asked again for a while before the verdict.
    checks, others = poll_until(look, lambda seen: len(seen[1]) >= need, timeout=quorum_settle,
                                interval=retry_every, error=no_quorum)
    if checks.get(name) and checks[name].values.get("healthy") and not force:
        raise ReplaceRefused(f"{name} is a healthy member: replace it anyway with --force. "
                             "Nothing was touched")
    leaders = [n for n in others if checks[n].values.get("is_leader")]
    helper = (leaders or others)[0]
    member = spec.host(name)
    peer = f"https://{member.address}:{spec.settings.etcd.peer_port}"
    listed = member_list(nr, spec, helper)
    old = next((m for m in listed if m.get("name") == name or peer in m.get("peerURLs", [])),
               None)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(time.time() if now is None else now))
    data_dir = spec.settings.etcd.data_dir
    aside = f"{data_dir}.before-replace-{stamp}"

    say(f"stop etcd on {name} and move its data dir to {aside}")
    run_batch_on(nr, name, ["systemctl stop etcd",
                    f"if [ -e {shlex.quote(data_dir)} ]; then mv {shlex.quote(data_dir)} "
                    f"{shlex.quote(aside)}; fi"])
    old_id = ""
    if old is not None:
        old_id = format(int(old["ID"]), "x")
        say(f"remove member {name} (ID {old_id}) via {helper}")
        run_batch_on(nr, helper, [etcdctl(spec, "member", "remove", old_id)])
    new_id = join_as_learner(nr, spec, helper, name, say=say, promote_timeout=promote_timeout,
                             quorum_timeout=quorum_timeout, retry_every=retry_every)
    healthy = etcd.wait_for_quorum(spec, state_dir, timeout=quorum_timeout)
    say(f"{name} is a voting member again (ID {new_id}); {healthy}/{len(members)} healthy")
    return Replaced(name, old_id, new_id, helper, aside)


def join_as_learner(nr: Nornir, spec: ClusterSpec, helper: str, name: str, *, say: Say = print,
                    promote_timeout: float = 120.0, quorum_timeout: float = 60.0,
                    retry_every: float = 1.0) -> str:
    """The one way a member joins a running cluster (`etcd replace`, and `deploy` when the
    inventory grows): `member add --learner` via `helper`, start it with initial-cluster-state
    existing and the cluster as `member add` returned it, promote it once it has caught up
    (retried while etcd says it is not in sync), then the rendered bootstrap lines again (read
    only when the data dir is empty: deploy stays a no-op). Its data dir must be empty and its
    etcd stopped. Returns the new member ID (hex)."""
    member = spec.host(name)
    peer = f"https://{member.address}:{spec.settings.etcd.peer_port}"
    conf = shlex.quote(C.ETCD_CONF)
    say(f"add {name} as a learner (peer URL {peer}) via {helper}")
    added = json.loads(retry_while(nr, helper, etcdctl(spec, "member", "add", name,
                                                  f"--peer-urls={peer}", "--learner", "-w",
                                                  "json"),
                              UNHEALTHY, quorum_timeout, retry_every))
    new = int(added["member"]["ID"])
    new_id = format(new, "x")
    joining = _initial_cluster(added.get("members") or [], new, name, peer)
    say(f"start {name} as learner {new_id} joining the existing cluster")
    run_batch_on(nr, name, [_set_line(conf, "initial-cluster", joining),
                    f"sed -i 's/^{_STATE_NEW}$/{_STATE_EXISTING}/' {conf}",
                    "systemctl start --no-block etcd"])
    say(f"promote learner {new_id} once it has caught up")
    retry_while(nr, helper, etcdctl(spec, "member", "promote", new_id), NOT_IN_SYNC,
           promote_timeout, retry_every)
    run_batch_on(nr, name, [_set_line(conf, "initial-cluster", spec.etcd_initial_cluster()),
                    f"sed -i 's/^{_STATE_EXISTING}$/{_STATE_NEW}/' {conf}"])
    return new_id


def _initial_cluster(members: list[dict], new: int, name: str, peer: str) -> str:
    """initial-cluster for the joining member: the cluster `member add` returned (the new
    member has no name yet there), as etcdctl prints it for ETCD_INITIAL_CLUSTER."""
    pairs = []
    for m in members:
        urls = m.get("peerURLs") or ([peer] if int(m.get("ID", 0)) == new else [])
        who = name if int(m.get("ID", 0)) == new else m.get("name", "")
        pairs += [f"{who}={u}" for u in urls]
    return ",".join(pairs) or f"{name}={peer}"


def _set_line(conf: str, key: str, value: str) -> str:
    """sed: the `key:` line of etcd.conf.yml set to `value` (double-quoted as rendered)."""
    line = f"{key}: {json.dumps(value)}".replace("|", r"\|")
    return f"sed -i {shlex.quote(f's|^{key}: .*$|{line}|')} {conf}"


def retry_while(nr: Nornir, host: str, command: str, while_says: str, timeout: float,
           every: float) -> str:
    """Run `command` on `host` until it succeeds, again while it fails saying `while_says`;
    its stdout. CommandFailed on another error or after `timeout` s."""

    def failed(res: CommandResult) -> CommandFailed:
        return CommandFailed(host, command, res.exit_code, res.stderr.strip() or "no output")

    done = poll_until(lambda: run_batch_on(nr, host, [command], check=False)[0],
                      lambda res: res.exit_code == 0, timeout=timeout, interval=every,
                      give_up=lambda res: while_says not in res.stderr, error=failed)
    return str(done.stdout)
