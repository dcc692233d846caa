"""One host's outcome folded from its Nornir results, as the deploy report shows it."""

from __future__ import annotations

from nornir.core.inventory import Host
from nornir.core.task import AggregatedResult, MultiResult, Result

from nornir_k8sha.report import outcomes_from_nornir


def aggregated(*results: Result) -> AggregatedResult:
    agg = AggregatedResult("configure")
    multi = MultiResult("configure")
    multi.extend(results)
    agg["switch1"] = multi
    return agg


def test_a_failed_change_keeps_its_diff_beside_the_message() -> None:
    """A switch change rolled back fails the host; the report still shows what was tried."""
    host = Host("switch1")
    diff = "--- running\n+++ intended\n- neighbor 10.88.0.11 remote-as 65010\n" \
           "+ neighbor 10.88.0.11 remote-as 65011\n"
    (outcome,) = outcomes_from_nornir(aggregated(Result(
        host=host, failed=True, changed=False, diff=diff,
        result="post-check failed: BGP session(s) 10.88.0.11 not Established; rolled back")),
        {"switch1": 1.5})
    assert outcome.status == "failed"
    assert outcome.message.startswith("post-check failed")
    assert outcome.as_dict()["diff"] == diff


def test_a_changed_host_lists_its_diff_and_changed_steps() -> None:
    host = Host("haproxy1")
    (outcome,) = outcomes_from_nornir(aggregated(
        Result(host=host, result="configured", name="configure"),
        Result(host=host, changed=True, diff="+ server master3", name="haproxy.cfg")), {})
    assert (outcome.status, outcome.diff, outcome.changes) == (
        "changed", "+ server master3", ["haproxy.cfg"])
