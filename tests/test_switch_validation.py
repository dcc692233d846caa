"""Bad switch input is refused before anything is sent: an unknown platform, an ASN out of
range, a switch or BGP neighbour outside the host subnet -> the finding names the host and the
field (file:line), and `validate` / `deploy` exit 2 without opening a connection to a switch."""

from __future__ import annotations

import json
from typing import Any

import pytest
from typer.testing import CliRunner

from nornir_k8sha.cli import app
from nornir_k8sha.topology import analyse

from .conftest import EXAMPLE_INVENTORY, LAB_INVENTORY, InventoryFactory
from .test_topology import line_of, only

runner = CliRunner()


def test_shipped_inventories_have_no_switch_findings() -> None:
    for inv in (LAB_INVENTORY, EXAMPLE_INVENTORY):
        rules = {f.rule for f in analyse(inv).findings}
        assert not rules & {"switch-platform", "switch-subnet", "bgp-neighbor-subnet",
                            "bgp-asn-range"}, inv


@pytest.mark.parametrize("name, value", [("switch_asn", 0), ("lvs_asn", 4294967296),
                                         ("switch_asn", -65000)])
def test_asn_out_of_range(make_inventory: InventoryFactory, name: str, value: int) -> None:
    inv = make_inventory(lambda h, g, d: d["data"]["bgp"].update({name: value}))
    finding = only(analyse(inv), "bgp-asn-range")
    assert (finding.severity, finding.field) == ("error", f"bgp.{name}")
    assert finding.message == f"ASN {value} is outside 1..4294967295"
    assert finding.where == f"defaults.yaml:{line_of(inv / 'defaults.yaml', 'bgp', name)}"


@pytest.mark.parametrize("value", [1, 4294967295])
def test_asn_range_ends_are_accepted(make_inventory: InventoryFactory, value: int) -> None:
    inv = make_inventory(lambda h, g, d: d["data"]["bgp"].update(switch_asn=value))
    assert "bgp-asn-range" not in {f.rule for f in analyse(inv).findings}


@pytest.mark.parametrize("timers, field, message", [
    ({"keepalive_s": 1, "hold_s": 2}, "bgp.hold_s",
     "hold time 2 s: must be 0 (never expire) or at least 3 s (RFC 4271)"),
    ({"keepalive_s": 60, "hold_s": 90}, "bgp.hold_s",
     "hold time 90 s is less than 3 x keepalive (3 x 60 s): raise bgp.hold_s or lower "
     "bgp.keepalive_s"),
    ({"keepalive_s": 5, "hold_s": 0}, "bgp.hold_s",
     "hold time 0 s is less than 3 x keepalive (3 x 5 s): raise bgp.hold_s or lower "
     "bgp.keepalive_s"),
    ({"keepalive_s": 0, "hold_s": 9}, "bgp.keepalive_s",
     "keepalive 0 with a hold time of 9 s: the peer would drop every session after the hold "
     "time; keepalive must be 1..3"),
])
def test_bgp_timers_that_no_switch_takes(make_inventory: InventoryFactory,
                                         timers: dict[str, int], field: str,
                                         message: str) -> None:
    inv = make_inventory(lambda h, g, d: d["data"]["bgp"].update(timers))
    finding = only(analyse(inv), "bgp-timers")
    assert (finding.severity, finding.host, finding.field) == ("error", None, field)
    assert finding.message == message
    key = field.split(".")[1]
    assert finding.where == f"defaults.yaml:{line_of(inv / 'defaults.yaml', 'bgp', key)}"


@pytest.mark.parametrize("field, value", [("hold_s", -1), ("keepalive_s", -5),
                                          ("connect_retry_s", 0), ("hold_s", 65536),
                                          ("advertisement_interval_s", 601)])
def test_bgp_timer_out_of_range_is_a_schema_error(make_inventory: InventoryFactory, field: str,
                                                  value: int) -> None:
    inv = make_inventory(lambda h, g, d: d["data"]["bgp"].update({field: value}))
    (finding,) = [f for f in analyse(inv).errors]
    assert (finding.rule, finding.field) == ("schema", f"bgp.{field}")
    assert finding.where == f"defaults.yaml:{line_of(inv / 'defaults.yaml', 'bgp', field)}"


@pytest.mark.parametrize("timers", [{"keepalive_s": 0, "hold_s": 0},
                                    {"keepalive_s": 1, "hold_s": 3},
                                    {"keepalive_s": 3, "hold_s": 9},
                                    {"keepalive_s": 60, "hold_s": 180}])
def test_bgp_timers_the_switches_take(make_inventory: InventoryFactory,
                                      timers: dict[str, int]) -> None:
    inv = make_inventory(lambda h, g, d: d["data"]["bgp"].update(timers))
    assert "bgp-timers" not in {f.rule for f in analyse(inv).findings}


def test_switch_outside_the_host_subnet(make_inventory: InventoryFactory) -> None:
    inv = make_inventory(lambda h, g, d: h["switch2"].update(hostname="10.99.0.72"))
    analysis = analyse(inv)
    finding = only(analysis, "switch-subnet")
    assert (finding.severity, finding.host, finding.field) == ("error", "switch2", "hostname")
    assert "switch 10.99.0.72 is not in 10.88.0.0/24" in finding.message
    assert finding.where == f"hosts.yaml:{line_of(inv / 'hosts.yaml', 'switch2', 'hostname')}"
    assert {f.rule for f in analysis.errors} == {"switch-subnet"}


def test_bgp_neighbour_outside_the_host_subnet(make_inventory: InventoryFactory) -> None:
    inv = make_inventory(lambda h, g, d: h["switch1"]["data"].update(
        bgp_neighbors=["10.88.0.11", "192.168.7.11"]))
    analysis = analyse(inv)
    finding = only(analysis, "bgp-neighbor-subnet")
    assert (finding.severity, finding.host, finding.field) == ("error", "switch1",
                                                               "bgp_neighbors")
    assert finding.message == "BGP neighbour 192.168.7.11 is outside the host subnet 10.88.0.0/24"
    assert "bgp-neighbor" not in {f.rule for f in analysis.findings}  # one finding, the precise one


BAD: dict[str, Any] = {
    "platform": lambda h, g, d: h["switch1"].update(platform="nokia_srl"),
    "asn": lambda h, g, d: d["data"]["bgp"].update(switch_asn=4294967296),
    "subnet": lambda h, g, d: h["switch1"]["data"].update(bgp_neighbors=["172.16.0.11"]),
    "hold": lambda h, g, d: d["data"]["bgp"].update(keepalive_s=1, hold_s=2),
    "hold-vs-keepalive": lambda h, g, d: d["data"]["bgp"].update(keepalive_s=30, hold_s=60),
    "negative": lambda h, g, d: d["data"]["bgp"].update(connect_retry_s=-1),
}
NAMED = {"platform": ("switch1", "platform"), "asn": (None, "bgp.switch_asn"),
         "subnet": ("switch1", "bgp_neighbors"), "hold": (None, "bgp.hold_s"),
         "hold-vs-keepalive": (None, "bgp.hold_s"), "negative": (None, "bgp.connect_retry_s")}


@pytest.mark.parametrize("bad", sorted(BAD))
def test_validate_and_deploy_exit_2_and_touch_no_switch(make_inventory: InventoryFactory,
                                                        monkeypatch: pytest.MonkeyPatch,
                                                        bad: str) -> None:
    import netmiko

    def no_switch(*_: object, **__: object) -> None:
        raise AssertionError("a switch connection was opened for an invalid inventory")

    monkeypatch.setattr(netmiko, "ConnectHandler", no_switch)
    inv = make_inventory(BAD[bad])
    result = runner.invoke(app, ["validate", "-i", str(inv), "--json"])
    assert result.exit_code == 2
    (error,) = json.loads(result.stdout)["errors"]
    assert (error["host"], error["field"]) == NAMED[bad]
    for args in (["deploy", "-i", str(inv), "--dry-run"], ["deploy", "-i", str(inv)]):
        result = runner.invoke(app, args)
        assert result.exit_code == 2, result.output
        assert "nothing was touched on any host" in result.stderr
