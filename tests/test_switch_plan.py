"""Switch planning without a switch: golden renders per platform, plans (commands, dry-run diff,
rollback) from recorded running configs, the parsers of each platform's BGP output, and the
check's verdict.

Fixtures under tests/fixtures/switch/<platform>/: `running-*.txt` are running configs (FRR's were
recorded from a real FRR 8.4.4 vtysh, the others written in their platform's `show running-config`
/ `display set` shape, with the noise a switch prints); `*.json`/`*.txt` are BGP and route outputs.
Golden files are rewritten with K8SHA_UPDATE_GOLDEN=1 (then read the diff before committing).
"""

from __future__ import annotations

import os
import re
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

import pytest

from nornir_k8sha import constants as C
from nornir_k8sha.exceptions import CommandFailed
from nornir_k8sha.inventory import open_nornir
from nornir_k8sha.tasks import switch
from nornir_k8sha.tasks.switch import eos, frr, ios, junos, nxos, state
from nornir_k8sha.tasks.switch.plan import plan, restore_commands
from nornir_k8sha.tasks.switch.state import FilterState, Neighbor, VipRoute, verdict
from nornir_k8sha.topology import ClusterSpec, load_cluster_spec
from nornir_k8sha.transport import SWITCH_READS_CONNECTION, CommandResult

from .conftest import LAB_INVENTORY, InventoryFactory
from .fakeswitch import FakeSwitch, Session

FIXTURES = Path(__file__).parent / "fixtures" / "switch"
PLATFORMS = ["frr", "cisco_ios", "cisco_nxos", "arista_eos", "juniper_junos"]
VIP = IPv4Address("10.88.0.100")


def golden(path: Path, text: str) -> None:
    if os.environ.get("K8SHA_UPDATE_GOLDEN"):
        path.write_text(text)
    assert path.exists(), f"{path} missing: run with K8SHA_UPDATE_GOLDEN=1"
    assert text == path.read_text(), f"{path} differs (K8SHA_UPDATE_GOLDEN=1 rewrites it)"


def production_timers(defaults: dict) -> None:
    """Drop the lab's tight BGP timers: the goldens show the production defaults."""
    for key in ("keepalive_s", "hold_s", "connect_retry_s", "advertisement_interval_s"):
        defaults["data"]["bgp"].pop(key, None)


def spec_for(make_inventory: InventoryFactory, platform: str) -> ClusterSpec:
    def set_platform(hosts: dict, groups: dict, defaults: dict) -> None:
        groups["switches"]["platform"] = platform
        production_timers(defaults)
    return load_cluster_spec(make_inventory(set_platform))


def feed(dev: FakeSwitch, lines: list[str]) -> None:
    """Type lines into the scripted switch's CLI (in process, no SSH) as netmiko would."""
    s = Session(dev, None)  # type: ignore[arg-type]
    junos_ = dev.platform == "juniper_junos"
    for line in ["configure private" if junos_ else "configure terminal", *lines,
                 *(["commit"] if junos_ else []), "exit configuration-mode" if junos_ else "end"]:
        out = s.handle(line.strip())
        assert out is None or not out.startswith(("%", "syntax error")), (line, out)


# --- golden renders --------------------------------------------------------------------------


@pytest.mark.parametrize("platform", PLATFORMS)
def test_rendered_intent_per_platform_is_golden(make_inventory: InventoryFactory,
                                                platform: str) -> None:
    spec = spec_for(make_inventory, platform)
    for name in ("switch1", "switch2"):
        golden(FIXTURES / platform / f"intent-{name}.txt", switch.intent(spec, name))


# --- plans from recorded running configs -------------------------------------------------------


@pytest.mark.parametrize("platform", PLATFORMS)
def test_plan_from_a_partial_config_is_golden_and_round_trips(make_inventory: InventoryFactory,
                                                              platform: str) -> None:
    """Sending the plan's commands to a switch model makes a second plan empty; sending the
    rollback commands after that gives the config back, line for line."""
    spec = spec_for(make_inventory, platform)
    p = switch.PLATFORMS[platform]
    running = (FIXTURES / platform / "running-partial.txt").read_text()
    the_plan = switch.plan_for(p, running, spec, "switch1")
    golden(FIXTURES / platform / "partial.commands", "\n".join(the_plan.commands) + "\n")
    golden(FIXTURES / platform / "partial.diff", the_plan.diff)
    golden(FIXTURES / platform / "partial.rollback", "\n".join(the_plan.restore) + "\n")

    dev = FakeSwitch(platform, running_text=running)
    before = dev.config_lines()
    feed(dev, the_plan.commands)
    after = dev.config_text()
    assert not switch.plan_for(p, after, spec, "switch1").changed
    feed(dev, restore_commands(after, p.parse(running), p.syntax))
    assert dev.config_lines() == before


def test_a_changed_value_replaces_its_line_and_the_rollback_restores_it(
        make_inventory: InventoryFactory) -> None:
    spec = spec_for(make_inventory, "frr")
    running = (FIXTURES / "frr" / "running-partial.txt").read_text()  # real FRR 8.4.4
    the_plan = switch.plan_for(switch.PLATFORMS["frr"], running, spec, "switch1")
    assert "- neighbor 10.88.0.11 description old-lvs1\n" in the_plan.diff
    assert "+ neighbor 10.88.0.11 description k8sha-lvs1\n" in the_plan.diff
    assert "- neighbor 10.88.0.11 timers 10 30\n" in the_plan.diff  # bgp.keepalive_s/hold_s
    assert "+ neighbor 10.88.0.11 timers 60 180\n" in the_plan.diff
    assert " neighbor 10.88.0.11 timers 60 180" in the_plan.commands
    assert " neighbor 10.88.0.11 description old-lvs1" in the_plan.restore
    assert " neighbor 10.88.0.11 timers 10 30" in the_plan.restore


TIMER_LINE = r"^\s*(neighbor \S+ )?timers \d+ \d+$|^set protocols bgp group \S+ hold-time \d+$"


@pytest.mark.parametrize("platform", PLATFORMS)
def test_a_timer_change_on_a_switch_in_sync_changes_only_the_timer_lines(
        make_inventory: InventoryFactory, platform: str) -> None:
    """A switch configured with the default timers; bgp.keepalive_s/hold_s change to 1/3: the
    plan sends the timer lines inside their parents (router bgp, NX-OS' neighbor) and nothing
    else, the diff changes only those lines, and the rollback sends the old values back."""
    p = switch.PLATFORMS[platform]
    dev = FakeSwitch(platform)
    feed(dev, switch.plan_for(p, "", spec_for(make_inventory, platform), "switch1").commands)
    applied = dev.config_text()

    def tight(hosts: dict, groups: dict, defaults: dict) -> None:
        groups["switches"]["platform"] = platform
        production_timers(defaults)
        defaults["data"]["bgp"].update(keepalive_s=1, hold_s=3)

    the_plan = switch.plan_for(p, applied, load_cluster_spec(make_inventory(tight)), "switch1")
    parents = {"router bgp 65000", "neighbor 10.88.0.11", "neighbor 10.88.0.12", "exit"}
    sent = [c.strip() for c in the_plan.commands if c.strip() not in parents]
    diff = the_plan.diff.splitlines()[2:]
    removed = [ln[1:].strip() for ln in diff if ln.startswith("-")]
    added = [ln[1:].strip() for ln in diff if ln.startswith("+")]
    per_switch = 1 if platform == "juniper_junos" else 2  # Junos: one group; else per neighbour
    assert len(sent) == per_switch and all(re.match(TIMER_LINE, c) for c in sent), sent
    assert added == sent
    assert removed == [old_value(c) for c in sent]
    assert [c.strip() for c in the_plan.restore if c.strip() not in parents] == removed
    feed(dev, the_plan.commands)
    assert not switch.plan_for(p, dev.config_text(), load_cluster_spec(make_inventory(tight)),
                               "switch1").changed


def old_value(line: str) -> str:
    return line.replace("timers 1 3", "timers 60 180").replace("hold-time 3", "hold-time 180")


def test_nested_nxos_lines_are_sent_inside_their_parents(make_inventory: InventoryFactory) -> None:
    """neighbor 10.88.0.11 exists with only the inbound route-map: the outbound one and the
    maximum-prefix go inside router bgp / neighbor / address-family, nothing else of it."""
    spec = spec_for(make_inventory, "cisco_nxos")
    running = (FIXTURES / "cisco_nxos" / "running-partial.txt").read_text()
    cmds = switch.plan_for(switch.PLATFORMS["cisco_nxos"], running, spec, "switch1").commands
    start = cmds.index("router bgp 65000")
    assert cmds[start:start + 8] == [
        "router bgp 65000", "  neighbor 10.88.0.11", "    description k8sha-lvs1",
        "    timers 60 180", "    address-family ipv4 unicast", "      advertisement-interval 0",
        "      route-map K8SHA-DENY out", "      maximum-prefix 10"]
    assert "      route-map K8SHA-VIP-IN in" not in cmds[start:start + 9]  # already there
    assert "feature bgp" not in cmds and "    remote-as 65010" in cmds  # only for 10.88.0.12


def test_ios_spelling_of_the_address_family_is_the_same_section(
        make_inventory: InventoryFactory) -> None:
    spec = spec_for(make_inventory, "cisco_ios")
    running = (FIXTURES / "cisco_ios" / "running-partial.txt").read_text()
    the_plan = switch.plan_for(switch.PLATFORMS["cisco_ios"], running, spec, "switch1")
    assert " address-family ipv4 unicast" not in the_plan.commands  # entered as `ipv4`
    assert the_plan.commands.count(" address-family ipv4") == 1


@pytest.mark.parametrize("platform, secret", [("cisco_ios", "0822455D0A16544541"),
                                              ("juniper_junos", "$9$Hk5FCA0hSyKMX7dws4JDi")])
def test_secrets_of_the_running_config_never_reach_the_diff(make_inventory: InventoryFactory,
                                                            platform: str, secret: str) -> None:
    spec = spec_for(make_inventory, platform)
    running = (FIXTURES / platform / "running-partial.txt").read_text()
    assert secret in running
    the_plan = switch.plan_for(switch.PLATFORMS[platform], running, spec, "switch1")
    assert "<redacted>" in the_plan.diff  # the line is there, as context or changed
    assert secret not in the_plan.diff + "\n".join(the_plan.commands + the_plan.restore)


def test_in_sync_config_plans_nothing_and_shows_no_diff(make_inventory: InventoryFactory) -> None:
    spec = spec_for(make_inventory, "cisco_ios")
    applied = (FIXTURES / "frr" / "running-applied.txt").read_text()  # real FRR after our lines
    the_plan = switch.plan_for(switch.PLATFORMS["cisco_ios"], applied, spec, "switch1")
    assert (the_plan.changed, the_plan.commands, the_plan.diff) == (False, [], "")


def test_junos_plan_is_set_statements_and_its_inverse_deletes() -> None:
    syntax = junos.JUNOS_SYNTAX
    the_plan = plan("set system host-name s\nset protocols bgp group G peer-as 65099\n",
                    "set protocols bgp group G peer-as 65010\nset protocols bgp group G "
                    "neighbor 10.88.0.11\n", syntax, "s")
    assert the_plan.commands == ["set protocols bgp group G peer-as 65010",
                                 "set protocols bgp group G neighbor 10.88.0.11"]
    # the inverse deletes what the statement created (G had no neighbour), not only its leaf
    assert the_plan.restore == ["delete protocols bgp group G neighbor",
                                "set protocols bgp group G peer-as 65099"]


# --- parsers of BGP state ----------------------------------------------------------------------

STATE = {
    "frr": (frr.parse_summary, frr.parse_route, "bgp-summary.json", "vip-route.json"),
    "cisco_ios": (ios.parse_summary, ios.parse_route, "bgp-summary.txt", "vip-route.txt"),
    "cisco_nxos": (nxos.parse_summary, nxos.parse_route, "bgp-summary.json", "vip-route.json"),
    "arista_eos": (eos.parse_summary, eos.parse_route, "bgp-summary.json", "vip-route.json"),
    "juniper_junos": (junos.parse_summary, junos.parse_route, "bgp-summary.json",
                      "vip-route.json"),
}


def _read(platform: str, name: str) -> Any:
    text = (FIXTURES / platform / name).read_text()
    return state.loads(text) if name.endswith(".json") else text


@pytest.mark.parametrize("platform", PLATFORMS)
def test_bgp_state_parsers(platform: str) -> None:
    summary, route, s_file, r_file = STATE[platform]
    neighbors = summary(_read(platform, s_file))
    assert neighbors[0] == Neighbor("10.88.0.11", "Established", 1)
    assert neighbors[1].address == "10.88.0.12" and not neighbors[1].established
    vip = route(_read(platform, r_file), VIP)
    assert (vip.present, vip.installed, vip.next_hops) == (True, True, ["10.88.0.11"])
    assert vip.protocol.lower() in ("bgp", "ebgp")
    assert route({} if r_file.endswith(".json") else "% Network not in table", VIP) == VipRoute()


def test_real_frr_output_of_a_session_that_is_not_up() -> None:
    doc = _read("frr", "bgp-summary-idle.json")
    assert frr.parse_summary(doc) == [Neighbor("10.88.0.11", "Active", 0)]
    text = _read("frr", "ios-bgp-summary-idle.txt")
    assert ios.parse_summary(text) == [Neighbor("10.88.0.11", "Active", None)]
    assert frr.parse_summary(state.loads("")) == []


class OneAnswer:
    """A switch connection that answers every command with the same text, or refuses it."""

    def __init__(self, answer: str | None) -> None:
        self.answer, self.sent = answer, []

    def send_command(self, command: str, **_: Any) -> str:
        self.sent.append(command)
        if self.answer is None:
            raise CommandFailed("switch1", command, 1, "% Unknown command")
        return self.answer


def test_frr_reads_its_three_commands_from_one_request_of_real_vtysh_output() -> None:
    """The answer of a lab switch's vtysh to one exec request of three lines (captured with
    `ssh netops@switch1 'show bgp ...json<LF>show ip route ...json<LF>show running-config'`):
    both JSON outputs, then the running config."""
    conn = OneAnswer((FIXTURES / "frr" / "joined-reads.txt").read_text())
    running, neighbors, route = frr.FRR().read_in_one_request(conn, VIP)
    assert conn.sent == ["show bgp ipv4 unicast summary json\nshow ip route 10.88.0.100/32 json"
                         "\nshow running-config"]
    assert [(n.address, n.state, n.prefixes_received) for n in neighbors] == [
        ("10.88.0.11", "Established", 1), ("10.88.0.12", "Established", 0)]
    assert route.installed and route.next_hops == ["10.88.0.11"]
    assert running.startswith("Building configuration...") and running.rstrip().endswith("end")
    assert frr.FRR().filter_state(frr.FRR().parse(running), VIP, PEERS).ok


@pytest.mark.parametrize("answer", [None, "% bgpd is not running\n", "{}\n% Unknown command"])
def test_frr_reads_one_by_one_when_the_joined_answer_is_not_two_json_outputs(
        answer: str | None) -> None:
    """A refused line, or output that is not JSON (bgpd down): None, so the three reads go
    one request each and what failed is named alone."""
    assert frr.FRR().read_in_one_request(OneAnswer(answer), VIP) is None
    assert ios.IOS().read_in_one_request(OneAnswer("{}{}"), VIP) is None  # one command each


def test_leading_json_splits_consecutive_documents_from_what_follows() -> None:
    assert state.leading_json(' {"a": 1}\n\n[2]\nrest\n', 2) == ([{"a": 1}, [2]], "rest\n")
    assert state.leading_json('{"a": 1} text', 2) is None
    assert state.leading_json("", 1) is None


# --- the check's verdict -------------------------------------------------------------------------

PEERS = ["10.88.0.11", "10.88.0.12"]
UP = [Neighbor(p, "Established", 1) for p in PEERS]
ROUTE = VipRoute(True, True, "bgp", ["10.88.0.11"])
GOOD_FILTER = FilterState(True, "only 10.88.0.100/32 accepted")


def test_verdict_all_good() -> None:
    v = verdict(UP, ROUTE, GOOD_FILTER, PEERS, VIP, True)
    assert v["ok"] and v["message"] == ("2/2 neighbour(s) Established, VIP 10.88.0.100/32 via "
                                         "10.88.0.11")
    assert v["neighbors"][0] == {"address": "10.88.0.11", "state": "Established",
                                 "prefixes_received": 1}


@pytest.mark.parametrize("change, message", [
    ({"neighbors": [UP[0], Neighbor("10.88.0.12", "Active")]}, "neighbour 10.88.0.12 Active"),
    ({"neighbors": UP[:1]}, "neighbour 10.88.0.12 not configured"),
    ({"route": VipRoute()}, "VIP 10.88.0.100/32 not received"),
    ({"route": VipRoute(True, False, "bgp", ["10.88.0.11"])}, "received but not installed"),
    ({"route": VipRoute(True, True, "bgp", ["10.88.0.99"])}, "via 10.88.0.99, not an LVS"),
    ({"neighbors": [Neighbor("10.88.0.11", "Established", 3), UP[1]]},
     "more than the VIP accepted from 10.88.0.11"),
    ({"filt": FilterState(False, "prefix-list K8SHA-VIP permits 0.0.0.0/0")}, "0.0.0.0/0"),
])
def test_verdict_names_what_is_wrong(change: dict[str, Any], message: str) -> None:
    args = {"neighbors": UP, "route": ROUTE, "filt": GOOD_FILTER} | change
    v = verdict(args["neighbors"], args["route"], args["filt"], PEERS, VIP, True)
    assert not v["ok"] and message in v["message"], v["message"]


@pytest.mark.parametrize("platform", PLATFORMS)
def test_filter_state_from_the_running_config(make_inventory: InventoryFactory,
                                              platform: str) -> None:
    spec = spec_for(make_inventory, platform)
    p = switch.PLATFORMS[platform]
    intent = switch.intent(spec, "switch1")
    assert p.filter_state(p.parse(intent), VIP, PEERS).ok
    wide = intent.replace("10.88.0.100/32", "0.0.0.0/0")
    bad = p.filter_state(p.parse(wide), VIP, PEERS)
    assert not bad.ok and "0.0.0.0/0" in bad.message
    partial = p.parse((FIXTURES / platform / "running-partial.txt").read_text())
    if platform not in ("frr", "juniper_junos"):
        assert p.filter_state(partial, VIP, PEERS).message == (
            "no inbound K8SHA-VIP-IN on 10.88.0.12")


# --- connection ------------------------------------------------------------------------------


class FakeNetmiko:
    """Enough of netmiko's BaseConnection for a read-only check."""

    base_prompt = "switch1"  # netmiko sets it at login

    def send_command(self, command: str, **_: object) -> str:
        return ""


def record_opens(monkeypatch: pytest.MonkeyPatch, conn: object) -> dict[str, object]:
    """Every host's `open_connection` records its arguments (the last call's) and gives
    `conn` as the connection."""
    from nornir.core.inventory import Host

    opened: dict[str, object] = {}

    def fake_open(self: Host, connection: str, configuration: object, **kw: object) -> None:
        opened.update(kw, connection=connection)
        self.connections[connection] = type("P", (), {"connection": conn})()

    monkeypatch.setattr(Host, "open_connection", fake_open)
    return opened


def test_an_frr_switch_is_driven_by_netmiko_as_cisco_ios(monkeypatch: pytest.MonkeyPatch) -> None:
    nr = open_nornir(LAB_INVENTORY).filter(name="switch1")
    host = nr.inventory.hosts["switch1"]
    host.platform = "frr"
    host.password = "a password login: no persistent master, so netmiko reads too"
    opened = record_opens(monkeypatch, FakeNetmiko())
    result = nr.run(task=switch.check, spec=load_cluster_spec(LAB_INVENTORY))["switch1"][0]
    assert result.exception is None, result.exception
    assert opened["connection"] == "netmiko" and opened["platform"] == "cisco_ios"
    assert opened["extras"]["conn_timeout"] == C.CHECK_TIMEOUT_S  # a check is bounded
    assert not result.result.ok  # a switch that says nothing proves nothing


def test_a_key_login_switch_is_read_as_netmikos_user_over_a_login_without_a_shell(
        monkeypatch: pytest.MonkeyPatch) -> None:
    nr = open_nornir(LAB_INVENTORY).filter(name="switch1")
    sent: list[str] = []

    class Reads:
        def run(self, command: str, **_: object) -> CommandResult:
            sent.append(command)
            return CommandResult(command, 0, "", "", 0.0)

    opened = record_opens(monkeypatch, Reads())
    result = nr.run(task=switch.check, spec=load_cluster_spec(LAB_INVENTORY))["switch1"][0]
    assert result.exception is None, result.exception
    assert opened["connection"] == SWITCH_READS_CONNECTION
    assert (opened["hostname"], opened["username"], opened["password"]) == (
        "10.88.0.71", "netops", None)
    extras = opened["extras"]
    assert isinstance(extras, dict)
    assert extras["shell"] is False and extras["strict_host_key"] is True
    assert extras["known_hosts"] == ".k8sha/lab/ssh/known_hosts"
    assert extras["connect_timeout"] == C.CHECK_TIMEOUT_S
    assert sorted(sent) == ["show ip bgp summary", "show ip route 10.88.0.100",
                            "show running-config"]
    assert not result.result.ok
