"""Lab stand-in for kube-controller-manager / kube-scheduler: leader election, nothing else.

Like client-go's leaderelection with a LeaseLock: the coordination.k8s.io/v1 Lease object
/registry/leases/kube-system/<name> lives in etcd as the apiserver stores it and is never
deleted. Every retry period a candidate reads it and

- creates it when it is absent (holderIdentity = itself, leaseTransitions 0);
- leaves it alone while another holder's renewTime + leaseDurationSeconds lies ahead;
- otherwise (its own, expired, or released: holderIdentity empty) writes itself in as holder
  with a fresh renewTime (leaseTransitions + 1 when the holder changes).

Every write is guarded by the resourceVersion read (the key's etcd mod revision, as the real
apiserver's optimistic concurrency does), so of two candidates racing for an expired lease one
wins and the other sees a conflict. A holder that could not renew within the renew deadline
stops leading. A dead holder's Lease stays with its holderIdentity and an aging renewTime until
another candidate takes it over. On SIGTERM the holder releases the lease as client-go does with
ReleaseOnCancel (holderIdentity emptied, leaseDurationSeconds 1), so the hand-over is immediate.

client-go measures expiry from when the candidate saw the record last change (immune to clock
skew between masters); here the containers of one lab machine share a clock, so the stand-in
reads renewTime directly.
"""

from __future__ import annotations

import argparse
import signal
import socket
import sys
import time
import uuid
from typing import Any

import k8sha_standin as sa


def sa_duration(text: str) -> float:
    """Go-style durations used by the leader-elect flags: 15s, 2s, 1m, 500ms."""
    text = str(text).strip()
    for suffix, factor in (("ms", 0.001), ("s", 1), ("m", 60), ("h", 3600)):
        if text.endswith(suffix) and text[: -len(suffix)].replace(".", "", 1).isdigit():
            return float(text[: -len(suffix)]) * factor
    return float(text)


class Elector:
    """Campaign for and hold one Lease object; `step()` runs once per retry period."""

    def __init__(self, etcd: sa.Etcd, name: str, identity: str, lease_duration: float,
                 renew_deadline: float) -> None:
        self.etcd, self.name, self.identity = etcd, name, identity
        self.key = sa.LEASES_PREFIX + name
        self.duration = max(1, round(lease_duration))  # leaseDurationSeconds is an integer
        self.renew_deadline = renew_deadline
        self.leading = False
        self.last_renew = 0.0  # time.monotonic() of the last successful renewal

    def step(self) -> None:
        try:
            self._try_acquire_or_renew()
        except sa.EtcdError as exc:
            if self.leading and time.monotonic() - self.last_renew > self.renew_deadline:
                self._lost(f"failed to renew within {self.renew_deadline:g}s: {exc}")
            elif not self.leading:
                sa.log(self.name, f"error retrieving resource lock kube-system/{self.name}: "
                                  f"{exc}")

    def _try_acquire_or_renew(self) -> None:
        _rev, kvs = self.etcd.range(self.key)
        old = kvs[0].value if kvs and isinstance(kvs[0].value, dict) else None
        spec = (old or {}).get("spec") or {}
        holder = spec.get("holderIdentity") or ""
        if holder and holder != self.identity and not _expired(spec):
            if self.leading:
                self._lost(f"{holder} holds the lease")
            return
        now = sa.rfc3339_micro()
        transitions = int(spec.get("leaseTransitions") or 0)
        if old is not None and holder != self.identity:
            transitions += 1
        acquired = spec.get("acquireTime") if holder == self.identity and self.leading else now
        meta = (old or {}).get("metadata") or sa.object_metadata(self.name, "kube-system")
        lease = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                 "metadata": {**meta, "annotations": {"k8sha.io/lab-standin": "true"}},
                 "spec": {"holderIdentity": self.identity, "leaseDurationSeconds": self.duration,
                          "acquireTime": acquired, "renewTime": now,
                          "leaseTransitions": transitions}}
        ok, _revision, _current = self.etcd.txn(self.key, kvs[0].mod_revision if kvs else 0,
                                                lease)
        if not ok:  # another candidate wrote first: read again next period
            if self.leading:
                self._lost("the lease changed under us")
            return
        self.last_renew = time.monotonic()
        if not self.leading:
            self.leading = True
            sa.log(self.name, f"successfully acquired lease kube-system/{self.name} as "
                              f"{self.identity}")

    def _lost(self, why: str) -> None:
        sa.log(self.name, f"leaderelection lost: {why}; campaigning again")
        self.leading = False

    def release(self) -> None:
        """client-go's ReleaseOnCancel: empty holder, 1 s duration; the object stays."""
        if not self.leading:
            return
        try:
            _rev, kvs = self.etcd.range(self.key)
            if not kvs or (kvs[0].value or {}).get("spec", {}).get("holderIdentity") \
                    != self.identity:
                return
            lease = dict(kvs[0].value)
            now = sa.rfc3339_micro()
            lease["spec"] = {**lease.get("spec", {}), "holderIdentity": "",
                             "leaseDurationSeconds": 1, "acquireTime": now, "renewTime": now}
            ok, _, _ = self.etcd.txn(self.key, kvs[0].mod_revision, lease)
            if ok:
                sa.log(self.name, f"released lease kube-system/{self.name}")
        except sa.EtcdError:
            pass


def _expired(spec: dict[str, Any]) -> bool:
    """renewTime + leaseDurationSeconds has passed (an unreadable time counts as expired)."""
    try:
        renewed = sa.parse_time(str(spec.get("renewTime") or ""))
    except ValueError:
        return True
    return renewed + float(spec.get("leaseDurationSeconds") or 0) < time.time()


def options(argv: list[str]) -> argparse.Namespace:
    p = sa.Parser(prog="kube-controller-manager|kube-scheduler (lab stand-in)")
    p.add_argument("--manifest")
    p.add_argument("--component", default="")
    for flag in ("etcd-servers", "etcd-cafile", "etcd-certfile", "etcd-keyfile"):
        p.add_argument(f"--{flag}")
    p.add_argument("--leader-elect-lease-duration", default="15s")
    p.add_argument("--leader-elect-renew-deadline", default="10s")
    p.add_argument("--leader-elect-retry-period", default="2s")
    p.add_argument("--k8sha-identity", default="")
    opts, _ = p.parse_known_args(argv)
    if opts.manifest:
        flags, _version = sa.manifest_flags(opts.manifest)
        argv = [f"--{k}={v}" for k, v in flags.items()] + argv
        opts, _ = p.parse_known_args(argv)
        pod = sa.yaml_load(sa.host_path(opts.manifest).read_text())
        opts.component = opts.component or pod["metadata"]["name"]
    if not opts.component or not opts.etcd_servers:
        p.error("--component (or --manifest) and the --etcd-* flags are required")
    return opts


def _interrupt(*_: Any) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    opts = options(sys.argv[1:] if argv is None else argv)
    etcd = sa.Etcd(opts.etcd_servers.split(","), opts.etcd_cafile, opts.etcd_certfile,
                   opts.etcd_keyfile, timeout=2.0)
    identity = opts.k8sha_identity or f"{socket.gethostname()}_{uuid.uuid4()}"
    retry = sa_duration(opts.leader_elect_retry_period)
    elector = Elector(etcd, opts.component, identity,
                      sa_duration(opts.leader_elect_lease_duration),
                      sa_duration(opts.leader_elect_renew_deadline))
    signal.signal(signal.SIGTERM, _interrupt)
    sa.log(opts.component, f"attempting to acquire leader lease kube-system/{opts.component} "
                           f"as {identity} (lease {elector.duration}s, retry {retry:g}s)")
    try:
        while True:
            started = time.monotonic()
            elector.step()
            time.sleep(max(0.0, retry - (time.monotonic() - started)))
    except KeyboardInterrupt:
        elector.release()
    return 0


if __name__ == "__main__":
    sys.exit(main())
