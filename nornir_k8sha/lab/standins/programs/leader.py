"""Lab stand-in for kube-controller-manager / kube-scheduler: leader election, nothing else.

One holder at a time through an etcd lease: grant a lease of the lease duration, create the key
/registry/leases/kube-system/<name> only if absent (txn), keep the lease alive every retry period
and rewrite the Lease object (renewTime). When the holder dies its lease expires, the key goes
with it, and a candidate on another master takes over. On SIGTERM the holder revokes its lease so
the hand-over is immediate. The key holds a coordination.k8s.io/v1 Lease that the apiserver
stand-in serves as is.
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
    """Campaign for and hold one lease key; `step()` runs once per retry period."""

    def __init__(self, etcd: sa.Etcd, name: str, identity: str, lease_duration: float,
                 renew_deadline: float) -> None:
        self.etcd, self.name, self.identity = etcd, name, identity
        self.key = sa.LEASES_PREFIX + name
        self.ttl = max(2, round(lease_duration))
        self.renew_deadline = renew_deadline
        self.lease = 0
        self.create_revision = 0
        self.acquired = ""
        self.meta = sa.object_metadata(self.name, "kube-system")
        self.last_renew = 0.0

    def lease_object(self) -> dict[str, Any]:
        return {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                "metadata": {**self.meta, "annotations": {"k8sha.io/lab-standin": "true"}},
                "spec": {"holderIdentity": self.identity, "leaseDurationSeconds": self.ttl,
                         "acquireTime": self.acquired, "renewTime": sa.rfc3339_micro()}}

    @property
    def leading(self) -> bool:
        return bool(self.create_revision)

    def step(self) -> None:
        try:
            if self.leading:
                self._renew()
            else:
                self._campaign()
        except sa.EtcdError as exc:
            if self.leading and time.monotonic() - self.last_renew > self.renew_deadline:
                self._lost(f"failed to renew within {self.renew_deadline:.0f}s: {exc}")
            elif not self.leading:
                sa.log(self.name, f"error retrieving resource lock kube-system/{self.name}: "
                                  f"{exc}")

    def _campaign(self) -> None:
        if not self.lease or self.etcd.keepalive(self.lease) <= 0:
            self.lease = self.etcd.grant(self.ttl)
        self.acquired = sa.rfc3339_micro()
        self.meta = sa.object_metadata(self.name, "kube-system")  # a new holder, a new object
        ok, revision = self.etcd.put_if(self.key, self.lease_object(), self.lease, 0)
        if ok:
            self.create_revision = revision
            self.last_renew = time.monotonic()
            sa.log(self.name, f"successfully acquired lease kube-system/{self.name} as "
                              f"{self.identity}")

    def _renew(self) -> None:
        if self.etcd.keepalive(self.lease) <= 0:
            return self._lost("the lease expired")
        ok, _ = self.etcd.put_if(self.key, self.lease_object(), self.lease,
                                 self.create_revision)
        if not ok:
            return self._lost("another holder took the lease")
        self.last_renew = time.monotonic()

    def _lost(self, why: str) -> None:
        sa.log(self.name, f"leaderelection lost: {why}; campaigning again")
        self.create_revision = 0
        self.lease = 0

    def release(self) -> None:
        if self.lease:
            try:
                self.etcd.revoke(self.lease)
                if self.leading:
                    sa.log(self.name, f"released lease kube-system/{self.name}")
            except sa.EtcdError:
                pass


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
                           f"as {identity} (lease {elector.ttl}s, retry {retry:g}s)")
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
