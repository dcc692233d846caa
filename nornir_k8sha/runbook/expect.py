"""What a case may cost, computed from the inventory's settings: the bound printed beside the
measurement, and the sentence that says where it comes from.

Sources of the formulas:

- VRRP (RFC 5798 section 6.1, which keepalived follows for `vrrp_version 3`): a backup takes
  over when it heard no advertisement for Master_Down_Interval = 3 x Master_Adver_Interval +
  Skew_Time, with Skew_Time = ((256 - Priority) x Master_Adver_Interval) / 256; in VRRPv2
  (RFC 3768) Skew_Time = (256 - Priority) / 256 seconds. The taking-over backup's priority
  counts; not knowing the holder in advance, the lowest director priority is the worst case.
- keepalived TCP_CHECK (keepalived.conf(5)): a real server is checked every `delay_loop`; a
  failed connect (at most `connect_timeout`) is retried `retry` times, `delay_before_retry`
  apart, before IPVS drops it: delay_loop + (retry + 1) x connect_timeout + retry x
  delay_before_retry.
- HAProxy (configuration manual, `inter`/`fall`/`timeout check`; src/check.c schedules the
  next check `inter` after the previous one *ended*): a server is marked DOWN after `fall`
  failed checks, each starting `inter` after the last and failing within `timeout check`
  (the connect is capped at min(inter, timeout connect)): fall x (inter + timeout check); our
  template sets `timeout check` to check_inter_ms. A refused connect fails at once (fall x
  inter); a power cut or a frozen apiserver takes the whole timeout.
- etcd raft: a follower starts an election when it heard no heartbeat for a randomized
  election timeout in [election_timeout, 2 x election_timeout) (raft's
  resetRandomizedElectionTimeout); the vote and the new leader's first heartbeats take a
  heartbeat interval or two.
- Leader leases: a candidate takes an expired lease; it is expired lease_duration after the
  last renewal and candidates look every retry_period: lease_duration + retry_period.
  kubeadm and our templates keep Kubernetes' defaults (15 s / 10 s / 2 s), which are not
  inventory settings.

Every bound adds a measurement slack: the probe sees the last success before an outage and
the first after it each up to one fresh-read interval away, and a fresh-TLS read takes its own
round trip: 2 x read_interval + PROBE_REQUEST_ALLOWANCE_S.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

from nornir_k8sha import constants as C
from nornir_k8sha.runbook.results import HAPROXY_DOWN, Expectation
from nornir_k8sha.topology import ClusterSpec, MachineLoss

#: The kinds a runbook case's `expect.kind` may name.
KINDS: tuple[str, ...] = ("vrrp", "haproxy", "apiserver", "etcd-leader", "etcd-majority",
                          "lease", "machine", "none")
#: Seconds between the runbook's looks at a lease holder (verify-ha's wait: check_interval 1).
LEASE_POLL_S = 1.0
#: Seconds between the runbook's looks at HAProxy's backends (verify-ha's wait: 0.5).
HAPROXY_POLL_S = 0.5
#: Which kind bounds the loss of a host of each role (roles not listed do not carry the API).
ROLE_KINDS: dict[str, str] = {C.ROLE_LVS: "vrrp", C.ROLE_HAPROXY: "haproxy",
                              C.ROLE_MASTERS: "apiserver", C.ROLE_ETCD: "etcd-leader"}


def _num(x: float) -> str:
    return f"{x:.3f}".rstrip("0").rstrip(".")


def slack(read_interval: float = C.PROBE_READ_INTERVAL_S) -> tuple[float, str]:
    """The measurement slack every bound adds, and how it is made."""
    value = 2 * read_interval + C.PROBE_REQUEST_ALLOWANCE_S
    return value, (f"measurement slack {_num(value)} s (2 x fresh-read interval "
                   f"{_num(read_interval)} s + {_num(C.PROBE_REQUEST_ALLOWANCE_S)} s for the "
                   "read's own round trip)")


def _bounded(core: float, why: str, read_interval: float, **extra: Any) -> Expectation:
    pad, pad_why = slack(read_interval)
    total = core + pad
    return Expectation(round(total, 3), f"{why} = {_num(core)} s; + {pad_why} = {_num(total)} s",
                       **extra)


def _vrrp(spec: ClusterSpec, read_interval: float) -> Expectation:
    v = spec.settings.vrrp
    priorities = spec.vrrp_priorities
    if not priorities:
        raise ValueError("expect kind 'vrrp': the inventory has no LVS director")
    prio = min(priorities.values())
    if v.version >= 3:
        skew = (256 - prio) * v.advert_int / 256
        skew_why = f"skew (256 - {prio}) x {_num(v.advert_int)} / 256 = {_num(skew)} s"
    else:
        skew = (256 - prio) / 256
        skew_why = f"skew (256 - {prio}) / 256 = {_num(skew)} s (VRRPv2)"
    core = 3 * v.advert_int + skew
    return _bounded(core, f"VRRPv{v.version} master-down interval 3 x vrrp.advert_int "
                    f"{_num(v.advert_int)} s + {skew_why} (lowest director priority)",
                    read_interval)


def _haproxy(spec: ClusterSpec, read_interval: float) -> Expectation:
    lvs = spec.settings.lvs
    core = (lvs.delay_loop + (lvs.check_retry + 1) * lvs.connect_timeout
            + lvs.check_retry * lvs.delay_before_retry)
    return _bounded(core, "IPVS drops a dead HAProxy after keepalived's TCP_CHECK: "
                    f"lvs.delay_loop {lvs.delay_loop} s + (lvs.check_retry {lvs.check_retry} + 1)"
                    f" x lvs.connect_timeout {lvs.connect_timeout} s + lvs.check_retry "
                    f"{lvs.check_retry} x lvs.delay_before_retry {lvs.delay_before_retry} s",
                    read_interval)


def _apiserver(spec: ClusterSpec, read_interval: float,
               poll: float = HAPROXY_POLL_S, stop_within: float = 0.0,
               frozen: bool = False,
               request_timeout: float = C.PROBE_REQUEST_TIMEOUT_S) -> Expectation:
    """Also bounds the takeout itself: the first HAProxy's DOWN for it, as the runbook sees it
    polling `check:haproxy` every `poll` s. A stopped apiserver refuses connections and
    HAProxy redispatches them, so clients may see no failure at all: then this is the figure
    that shows what the checks cost. `stop_within`: how long after the fault step the
    apiserver is really down (a static pod stops when the kubelet notices its manifest gone:
    the lab's kubelet stand-in looks every 1 s); it delays the takeout, not an outage.

    `frozen`: the apiserver is alive but silent (SIGSTOP): the kernel still accepts
    connections, so HAProxy does not redispatch; a request sent to it hangs until the client
    gives up (`request_timeout`, the load probe's) or HAProxy cuts it when it marks the server
    DOWN (`on-marked-down shutdown-sessions`, haproxy.shutdown_sessions_on_down). The bound is
    on the window in which requests failed (a partial outage): the takeout, + the request
    timeout when HAProxy leaves the last request sent to it hanging."""
    h = spec.settings.haproxy
    inter = h.check_inter_ms / 1000
    timeout_check = inter  # the template's `timeout check` is check_inter_ms
    core = h.check_fall * (inter + timeout_check)
    pad, _ = slack(read_interval)
    takeover = stop_within + core + poll + pad
    exp = _bounded(core, f"HAProxy marks a dead apiserver DOWN after haproxy.check_fall "
                   f"{h.check_fall} failed checks, each started haproxy.check_inter_ms "
                   f"{h.check_inter_ms} ms after the previous one ended and failing within "
                   f"timeout check {h.check_inter_ms} ms: {h.check_fall} x ({h.check_inter_ms} "
                   f"+ {h.check_inter_ms}) ms", read_interval)
    if frozen:
        cut = h.shutdown_sessions_on_down
        hang = 0.0 if cut else request_timeout
        ending = ("; HAProxy then cuts the sessions hung on it (haproxy.shutdown_sessions_on_down"
                  f"), so no request outlives the takeout (the load probe's clients wait up to "
                  f"{_num(request_timeout)} s)" if cut else
                  f", + the load probe's request timeout {_num(request_timeout)} s for the last "
                  "request sent to it (haproxy.shutdown_sessions_on_down is false: HAProxy "
                  "leaves it hanging)")
        exp = _bounded(core + hang, f"a frozen apiserver accepts connections and answers "
                       f"nothing: requests sent to it fail until HAProxy marks it DOWN after "
                       f"haproxy.check_fall {h.check_fall} checks timed out, each started "
                       f"haproxy.check_inter_ms {h.check_inter_ms} ms after the previous one "
                       f"ended and given timeout check {h.check_inter_ms} ms: "
                       f"{h.check_fall} x ({h.check_inter_ms} + {h.check_inter_ms}) ms = "
                       f"{_num(core)} s{ending}", read_interval, partial_outage=True)
    stopping = (f"{_num(stop_within)} s until it is down (the kubelet notices the moved "
                "manifest) + " if stop_within else "")
    return replace(exp, explanation=f"{exp.explanation}; the first HAProxy shows it DOWN within "
                   f"{stopping}{_num(core)} s + {_num(poll)} s between looks at HAProxy + "
                   f"{_num(pad)} s slack = {_num(takeover)} s", takeover_s=round(takeover, 3),
                   takeover_of=HAPROXY_DOWN)


def _etcd_leader(spec: ClusterSpec, read_interval: float,
                 client_timeout: float = 0.0) -> Expectation:
    """`client_timeout`: a partitioned (not dead) leader answers nothing and resets nothing, so
    an apiserver whose etcd client talks to it only moves on when its request times out: that
    timeout is added (the lab's stand-in apiserver: --k8sha-etcd-timeout, 2 s)."""
    e = spec.settings.etcd
    core = (2 * e.election_timeout_ms + 2 * e.heartbeat_interval_ms) / 1000 + client_timeout
    why = ("a new etcd leader within the randomized election timeout, at most 2 "
           f"x etcd.election_timeout_ms {e.election_timeout_ms} ms, + 2 x "
           f"etcd.heartbeat_interval_ms {e.heartbeat_interval_ms} ms for the vote and "
           "the first heartbeat")
    if client_timeout:
        why += (f", + the apiservers' etcd request timeout {_num(client_timeout)} s (a "
                "partitioned leader is silent: its clients find out by timing out)")
    return _bounded(core, why, read_interval)


def _etcd_majority(spec: ClusterSpec, read_interval: float) -> Expectation:
    members = spec.count(C.ROLE_ETCD)
    return Expectation(None, f"etcd without a majority ({members} members, quorum "
                       f"{members // 2 + 1}): the API may stop serving and must not acknowledge "
                       "a write; no bound on downtime, recovery when the members return",
                       api_must_serve=False, writes_must_be_refused=True)


def _lease(spec: ClusterSpec, read_interval: float, lease: str = "the lease",
           poll: float = LEASE_POLL_S) -> Expectation:
    pad, pad_why = slack(read_interval)
    takeover = C.KUBE_LEASE_DURATION_S + C.KUBE_LEASE_RETRY_PERIOD_S + poll + pad
    return Expectation(
        round(pad, 3),
        f"the apiservers are not touched: no outage beyond the {pad_why}; {lease} moves "
        f"within lease duration {_num(C.KUBE_LEASE_DURATION_S)} s + retry period "
        f"{_num(C.KUBE_LEASE_RETRY_PERIOD_S)} s (Kubernetes' leader-election defaults, kept by "
        f"kubeadm; renew deadline {_num(C.KUBE_LEASE_RENEW_DEADLINE_S)} s) + {_num(poll)} s "
        f"between looks at the holder + {_num(pad)} s slack = {_num(takeover)} s",
        takeover_s=round(takeover, 3),
        takeover_of="" if lease == "the lease" else f"lease-holder:{lease}")


def _none(spec: ClusterSpec, read_interval: float) -> Expectation:
    return Expectation(0.0, "no outage expected: not one request may fail")


def _machine(spec: ClusterSpec, read_interval: float, machine: str | None = None) -> Expectation:
    losses = {loss.machine: loss for loss in spec.machine_losses()}
    if machine not in losses:
        raise ValueError(f"expect kind 'machine': machine {machine!r} is not in the inventory "
                         f"(machines: {', '.join(sorted(losses))})")
    loss: MachineLoss = losses[machine]
    if not loss.api_survives:
        return Expectation(None, f"losing {machine} ({', '.join(loss.hosts)}): "
                           f"validate says {loss.verdict}", api_must_serve=False,
                           writes_must_be_refused=not loss.etcd_ok)
    carried = sorted({ROLE_KINDS[r] for h in loss.hosts for r in spec.host(h).roles
                      if r in ROLE_KINDS}, key=KINDS.index)
    if not carried:
        return Expectation(0.0, f"losing {machine} ({', '.join(loss.hosts)}): validate says "
                           f"{loss.verdict}; it carries no part of the API path, so not one "
                           "request may fail")
    bounds = {kind: expectation(kind, spec, read_interval=read_interval) for kind in carried}
    worst = max(bounds, key=lambda k: bounds[k].downtime_s or 0.0)
    listed = "; ".join(f"{k} {_num(b.downtime_s or 0.0)} s" for k, b in bounds.items())
    return Expectation(bounds[worst].downtime_s,
                       f"losing {machine} ({', '.join(loss.hosts)}): validate says "
                       f"{loss.verdict}; the worst of the roles it carries ({listed}) is "
                       f"{worst}: {bounds[worst].explanation}")


_BUILDERS: dict[str, Callable[..., Expectation]] = {
    "vrrp": _vrrp, "haproxy": _haproxy, "apiserver": _apiserver, "etcd-leader": _etcd_leader,
    "etcd-majority": _etcd_majority, "lease": _lease, "machine": _machine, "none": _none,
}
#: The parameters each kind takes beyond `read_interval` (the loader checks them up front).
PARAMS: dict[str, frozenset[str]] = {k: frozenset() for k in KINDS} | {
    "lease": frozenset({"lease", "poll"}), "machine": frozenset({"machine"}),
    "apiserver": frozenset({"poll", "stop_within", "frozen"}),
    "etcd-leader": frozenset({"client_timeout"})}


#: What the load probe's options add to every kind's parameters.
PROBE_PARAMS = frozenset({"read_interval", "request_timeout"})


def expectation(kind: str, spec: ClusterSpec, **params: Any) -> Expectation:
    """The bound of a case of `kind` on this cluster; ValueError names a bad kind/param."""
    if kind not in _BUILDERS:
        raise ValueError(f"unknown expectation kind {kind!r} (kinds: {', '.join(KINDS)})")
    extra = set(params) - PARAMS[kind] - PROBE_PARAMS
    if extra:
        raise ValueError(f"expectation kind {kind!r} takes no parameter "
                         f"{', '.join(sorted(extra))} (it takes: "
                         f"{', '.join(sorted(PARAMS[kind] | PROBE_PARAMS))})")
    if kind == "machine" and "machine" not in params:
        raise ValueError("expectation kind 'machine' needs the parameter machine=NAME")
    read_interval = float(params.pop("read_interval", C.PROBE_READ_INTERVAL_S))
    timeout = float(params.pop("request_timeout", C.PROBE_REQUEST_TIMEOUT_S))
    if kind == "apiserver":  # the one bound a hung request's timeout enters (frozen)
        params["request_timeout"] = timeout
    return _BUILDERS[kind](spec, read_interval, **params)
