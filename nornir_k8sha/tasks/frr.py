"""The LVS directors' side of BGP: FRR announces the VIP /32 to the switches; `check` proves
the sessions from the directors' side."""

from __future__ import annotations

import shlex
import time

from nornir.core.task import Result, Task

from nornir_k8sha import constants as C
from nornir_k8sha.checkresult import failed, passed, skipped
from nornir_k8sha.clients import parse_bgp_summary
from nornir_k8sha.tasks import host as H
from nornir_k8sha.tasks.component import apply_component, probe
from nornir_k8sha.topology import ClusterSpec


def configure(task: Task, spec: ClusterSpec, *, dry_run: bool | None = None) -> Result:
    H.honour_dry_run(task, dry_run)
    probed = probe(task, ["frr"], ["frr"])
    pk = H.packages(task, names=["frr"], known=probed.packages)
    r = apply_component(task, spec, "frr", services={"frr": "restart"},
                        known_units=None if pk.changed else probed.units)
    r.changed = bool(r.changed or pk.changed)
    return r


SHOW_SUMMARY = "show bgp ipv4 unicast summary json"
#: bgpd asked over its vty socket the way vtysh asks it (FRR's vtysh protocol: the command ends
#: with a NUL, the answer with three NULs and a status byte, 0 = success), by perl (Essential on
#: Debian): one small process, where vtysh first builds every daemon's command tree: ~0.03 s of
#: CPU a run on a lab director (UML) against ~0.08 s for vtysh (issue 12.3). The same JSON.
_VTY_CLIENT = r"""
my ($cmd, $path) = @ARGV;
socket(my $s, PF_UNIX, SOCK_STREAM, 0) or die "socket: $!\n";
connect($s, pack_sockaddr_un($path)) or die "$path: $!\n";
defined syswrite($s, "$cmd\0") or die "$path: $!\n";
my $answer = "";
until ($answer =~ /\0\0\0.\z/s) {
    my $n = sysread($s, my $chunk, 65536);
    die "$path: $!\n" unless defined $n;
    die "$path: bgpd closed the session before its answer ended\n" unless $n;
    $answer .= $chunk;
}
print substr($answer, 0, -4);
exit ord(substr($answer, -1));
"""


def summary_command(vty: str = C.FRR_BGPD_VTY) -> str:
    """The sessions as bgpd's JSON: over its vty socket; by vtysh where there is no socket or
    no perl (vtysh then says what is wrong, e.g. that bgpd is not running)."""
    show, path = shlex.quote(SHOW_SUMMARY), shlex.quote(vty)
    return (f"if [ -S {path} ] && command -v perl >/dev/null; then "
            f"exec perl -MSocket -e {shlex.quote(_VTY_CLIENT)} {show} {path}; "
            f"else exec vtysh -c {show}; fi")


SUMMARY = summary_command()
#: The read ending with no exit status at all (exit -1: killed, or its session dropped) is asked
#: again, once: seen once in 5 fresh lab deploys, 0.08 s into the post-check's read of a
#: director whose FRR had just started. A real answer, even a failing one, is never retried.
VTYSH_TRIES = 2


def check(task: Task, spec: ClusterSpec) -> Result:
    """This director's BGP sessions to its switches are Established, and whether it announces
    the VIP /32 (bgpd's own answer over SSH: one round trip, and the switches need no second
    login).

    `result` is a CheckResult with values peers ({address: {state, pfxSnt, pfxRcd}}) and
    announcing. Skipped when the director peers with no switch or announcing is off."""
    director = spec.host(task.host.name)
    switches = {str(h.address): h.name for h in spec.director_peers(director)}
    if not spec.announces_vip(director):
        res = skipped(director.name, "no switch peers with it / VIP announcement off")
        return Result(host=task.host, result=res)
    start = time.monotonic()
    conn = H.probe_connection(task)
    for _ in range(VTYSH_TRIES):
        out = conn.run(SUMMARY, check=False, timeout=C.CHECK_TIMEOUT_S)
        if out.exit_code >= 0:
            break
    if out.exit_code != 0:
        res = failed(director.name, f"bgpd: {out.stderr.strip() or f'exit {out.exit_code}'}",
                     start)
        return Result(host=task.host, result=res, failed=True)
    peers = parse_bgp_summary(out.stdout)
    down = [f"{switches.get(a, a)} ({p['state']})" for a, p in peers.items()
            if p["state"] != "Established"]
    missing = [n for a, n in switches.items() if a not in peers]
    announcing = sum(int(p["pfxSnt"] or 0) for p in peers.values()) > 0
    if down or missing:
        res = failed(director.name, "BGP not established with " + ", ".join(down + missing),
                     start, peers=peers, announcing=announcing)
    else:
        role = (f"announcing the VIP /32 to {len(peers)} switch(es)" if announcing
                else "not announcing (VIP held by the other director)")
        res = passed(director.name, f"{len(peers)} session(s) Established; {role}", start,
                     peers=peers, announcing=announcing)
    return Result(host=task.host, result=res, failed=not res.ok)
