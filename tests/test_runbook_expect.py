"""expectation(): each kind's bound on the lab inventory, computed from its settings."""

from __future__ import annotations

import dataclasses
import re

import pytest

from nornir_k8sha.runbook.expect import KINDS, PARAMS, expectation
from nornir_k8sha.topology import ClusterSpec, load_cluster_spec

from .conftest import LAB_INVENTORY, REPO

SLACK = 2 * 0.07 + 0.1  # two fresh-read intervals + one read's round trip


@pytest.fixture(scope="module")
def lab() -> ClusterSpec:
    return load_cluster_spec(LAB_INVENTORY)


def with_settings(spec: ClusterSpec, section: str, **changes: object) -> ClusterSpec:
    part = getattr(spec.settings, section).model_copy(update=changes)
    return dataclasses.replace(spec, settings=spec.settings.model_copy(update={section: part}))


def test_lab_bounds(lab: ClusterSpec) -> None:
    # VRRPv3, advert_int 0.1 s, lowest director priority 100 (lvs2)
    vrrp = expectation("vrrp", lab)
    assert vrrp.downtime_s == pytest.approx(3 * 0.1 + (256 - 100) * 0.1 / 256 + SLACK, abs=1e-3)
    assert "vrrp.advert_int 0.1 s" in vrrp.explanation and "256 - 100" in vrrp.explanation
    # TCP_CHECK: delay_loop 1 + (retry 1 + 1) x connect_timeout 1 + retry 1 x delay 1
    assert expectation("haproxy", lab).downtime_s == pytest.approx(4 + SLACK)
    # HAProxy: fall 2 x (inter 500 ms + timeout check 500 ms)
    api = expectation("apiserver", lab)
    assert api.downtime_s == pytest.approx(2.0 + SLACK)
    assert "haproxy.check_fall 2" in api.explanation
    assert "haproxy.check_inter_ms 500 ms" in api.explanation
    # etcd: 2 x election timeout 1000 ms + 2 x heartbeat 100 ms
    assert expectation("etcd-leader", lab).downtime_s == pytest.approx(2.2 + SLACK)
    majority = expectation("etcd-majority", lab)
    assert (majority.downtime_s, majority.api_must_serve, majority.writes_must_be_refused) == (
        None, False, True)
    lease = expectation("lease", lab, lease="kube-scheduler")
    assert lease.takeover_s == pytest.approx(15 + 2 + 1 + SLACK)  # + one look at the holder
    assert lease.downtime_s == pytest.approx(SLACK)
    assert "kube-scheduler moves" in lease.explanation
    assert "Kubernetes' leader-election defaults" in lease.explanation
    assert expectation("lease", lab, poll=2).takeover_s == pytest.approx(19 + SLACK)
    assert expectation("none", lab).downtime_s == 0.0


def test_every_kind_says_where_its_numbers_come_from(lab: ClusterSpec) -> None:
    for kind in KINDS:
        params = {"machine": "pm1"} if kind == "machine" else {}
        exp = expectation(kind, lab, **params)
        assert exp.explanation
        if exp.downtime_s:
            assert f"{exp.downtime_s:.3f}".rstrip("0").rstrip(".") + " s" in exp.explanation


def test_raising_haproxy_check_inter_grows_the_apiserver_bound(lab: ClusterSpec) -> None:
    slow = with_settings(lab, "haproxy", check_inter_ms=3000)
    assert expectation("apiserver", slow).downtime_s == pytest.approx(2 * (3 + 3) + SLACK)
    assert expectation("apiserver", slow).downtime_s > expectation("apiserver", lab).downtime_s
    assert "3000 ms" in expectation("apiserver", slow).explanation
    # the takeout itself (first HAProxy showing it DOWN, looked at every 0.5 s) grows with it
    assert expectation("apiserver", lab).takeover_s == pytest.approx(2.0 + 0.5 + SLACK)
    assert expectation("apiserver", slow).takeover_s == pytest.approx(12.0 + 0.5 + SLACK)
    assert expectation("apiserver", slow).takeover_of == "haproxy-down"
    assert expectation("apiserver", lab, poll=2).takeover_s == pytest.approx(4.0 + SLACK)
    # a static pod stops when the kubelet notices: that delays the takeout, not an outage
    late = expectation("apiserver", lab, stop_within=1.0)
    assert late.takeover_s == pytest.approx(1.0 + 2.0 + 0.5 + SLACK)
    assert late.downtime_s == expectation("apiserver", lab).downtime_s
    assert "1 s until it is down (the kubelet notices the moved manifest)" in late.explanation


def test_settings_drive_the_other_bounds(lab: ClusterSpec) -> None:
    v2 = with_settings(lab, "vrrp", version=2, advert_int=1)
    assert expectation("vrrp", v2).downtime_s == pytest.approx(3 + 156 / 256 + SLACK, abs=1e-3)
    more_retries = with_settings(lab, "lvs", check_retry=3, delay_before_retry=2)
    assert expectation("haproxy", more_retries).downtime_s == pytest.approx(
        1 + 4 * 1 + 3 * 2 + SLACK)
    etcd = with_settings(lab, "etcd", election_timeout_ms=2500, heartbeat_interval_ms=250)
    assert expectation("etcd-leader", etcd).downtime_s == pytest.approx(5.5 + SLACK)
    # a slower probe widens every bound by twice its interval
    assert expectation("apiserver", lab, read_interval=0.5).downtime_s == pytest.approx(
        2.0 + 1.0 + 0.1)
    assert expectation("apiserver", with_settings(lab, "haproxy", check_fall=3)).downtime_s \
        == pytest.approx(3.0 + SLACK)


def test_machine_uses_validates_verdict_and_the_worst_role(lab: ClusterSpec) -> None:
    pm1 = expectation("machine", lab, machine="pm1")  # lvs1, haproxy1, etcd1, master1, ...
    assert pm1.api_must_serve and pm1.downtime_s == expectation("haproxy", lab).downtime_s
    assert "API survives" in pm1.explanation and "worst" in pm1.explanation
    pm3 = expectation("machine", lab, machine="pm3")  # etcd3, master3, harbor1
    assert pm3.downtime_s == expectation("etcd-leader", lab).downtime_s
    assert "registry down" in pm3.explanation


def test_machine_whose_loss_takes_the_api_down(lab: ClusterSpec) -> None:
    # move etcd2 onto pm1: losing pm1 then takes two of three members (validate's verdict)
    hosts = tuple(dataclasses.replace(h, physical_host="pm1") if h.name == "etcd2" else h
                  for h in lab.hosts)
    crowded = dataclasses.replace(lab, hosts=hosts)
    exp = expectation("machine", crowded, machine="pm1")
    assert (exp.downtime_s, exp.api_must_serve, exp.writes_must_be_refused) == (None, False, True)
    assert "etcd loses quorum" in exp.explanation


def test_bad_kind_and_parameters_are_named(lab: ClusterSpec) -> None:
    with pytest.raises(ValueError, match="unknown expectation kind 'vrp'.*vrrp"):
        expectation("vrp", lab)
    with pytest.raises(ValueError,
                       match=r"machine 'pm9' is not in the inventory \(machines: pm1, pm2, pm3\)"):
        expectation("machine", lab, machine="pm9")
    with pytest.raises(ValueError, match="needs the parameter machine=NAME"):
        expectation("machine", lab)
    with pytest.raises(ValueError, match="takes no parameter machine"):
        expectation("vrrp", lab, machine="pm1")
    assert PARAMS["lease"] == {"lease", "poll"}


def test_docs_table_of_lab_bounds_is_what_expect_computes(lab: ClusterSpec) -> None:
    text = (REPO / "docs" / "verify.md").read_text()
    rows = dict(re.findall(r"^\| ((?:[a-z-]+)(?: pm\d)?) \| ([^|]+) \|$", text, re.M))
    assert len(rows) == len(KINDS) + 2  # machine pm1..pm3
    for label, documented in rows.items():
        kind, _, machine = label.partition(" ")
        exp = expectation(kind, lab, **({"machine": machine} if machine else {}))
        want = "none" if exp.downtime_s is None else f"{exp.downtime_s:g} s"
        if exp.takeover_s is not None:
            want += f" (takeover {exp.takeover_s:g} s)"
        assert documented.strip() == want, label


def test_a_frozen_apiserver_is_bounded_by_the_takeout_and_the_probes_timeout(
        lab: ClusterSpec) -> None:
    """Frozen, requests sent to it hang: they fail until HAProxy's checks time out fall times
    (fall 2 x (inter 500 + timeout check 500) ms); HAProxy then cuts the sessions hung on it.
    Where it does not (shutdown_sessions_on_down false), the last request sent to it hangs
    for the probe's whole request timeout on top: a partial outage, measured as the failing
    window."""
    frozen = expectation("apiserver", lab, frozen=True, request_timeout=20)
    assert frozen.downtime_s == pytest.approx(2.0 + SLACK)
    assert frozen.partial_outage and not expectation("apiserver", lab).partial_outage
    assert "no request outlives the takeout" in frozen.explanation
    assert frozen.takeover_s == expectation("apiserver", lab).takeover_s
    slow = expectation("apiserver", with_settings(lab, "haproxy", check_inter_ms=3000),
                       frozen=True, request_timeout=20)
    assert slow.downtime_s == pytest.approx(12.0 + SLACK)
    assert "haproxy.check_inter_ms 3000 ms" in slow.explanation
    hanging = expectation("apiserver", with_settings(lab, "haproxy",
                                                     shutdown_sessions_on_down=False),
                          frozen=True, request_timeout=20)
    assert hanging.downtime_s == pytest.approx(2.0 + 20 + SLACK)
    assert "request timeout 20 s" in hanging.explanation
