"""switch.configure and switch.check against scripted switches over real SSH (netmiko's real
drivers, tests/fakeswitch.py behind tests/sshserver.py), one per platform: the apply path, a
second run that sends nothing, and the rollback after a refused line, after a post-check that
finds a session down, and after a switch that stops answering half-way."""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from nornir.core.inventory import ConnectionOptions

from nornir_k8sha.inventory import open_nornir
from nornir_k8sha.tasks import switch
from nornir_k8sha.tasks.switch.apply import established_again
from nornir_k8sha.topology import ClusterSpec, load_cluster_spec

from .conftest import InventoryFactory
from .fakeswitch import FakeSwitch
from .sshserver import SSHTestServer

PLATFORMS = ["frr", "cisco_ios", "cisco_nxos", "arista_eos", "juniper_junos"]
LVS = {"10.88.0.11": 65010, "10.88.0.12": 65010}
BASE = {"juniper_junos": "set system host-name switch1\n"}
#: A line of the plan for lvs2 per platform (to refuse, or to hang on).
LVS2_LINE = {"juniper_junos": r"neighbor 10\.88\.0\.12 description",
             "cisco_nxos": r"^neighbor 10\.88\.0\.12$"}
FAST = {"timeout": 3.0, "postcheck_timeout": 1.0}


@pytest.fixture
def server(tmp_path: Path) -> Iterator[SSHTestServer]:
    srv = SSHTestServer(tmp_path / "ssh").start()
    yield srv
    srv.stop()


class Rig:
    """A lab inventory whose switch1 is a scripted switch of one platform on 127.0.0.1."""

    def __init__(self, make_inventory: InventoryFactory, server: SSHTestServer, platform: str,
                 **device: Any) -> None:
        self.server, self.platform = server, platform
        self.device = FakeSwitch(platform, running_text=BASE.get(platform, "hostname switch1\n"),
                                 peers=dict(LVS), **device)
        server.shell = self.device.serve
        self.make_inventory = make_inventory
        self.spec = self.spec_with()

    def spec_with(self, edit: Any = None) -> ClusterSpec:
        def change(hosts: dict, groups: dict, defaults: dict) -> None:
            groups["switches"]["platform"] = self.platform
            if edit:
                edit(hosts, groups, defaults)
        self.inventory = self.make_inventory(change)
        return load_cluster_spec(self.inventory)

    def run(self, task: Any, spec: ClusterSpec | None = None, *, key_login: bool = False,
            **kw: Any) -> Any:
        """`task` on switch1 in a new Nornir (as a new process would); netmiko logs in with the
        password, or with `key_login` the key alone, checking the host key."""
        nr = open_nornir(self.inventory).filter(name="switch1")
        host = nr.inventory.hosts["switch1"]
        host.hostname, host.port = "127.0.0.1", self.server.port
        host.username, host.password = "netops", self.server.password
        extras: dict[str, Any] = {"use_keys": False, "allow_agent": False, "conn_timeout": 5}
        if key_login:
            host.password = None
            extras.update(self.server.netmiko_key_login())
        host.connection_options["netmiko"] = ConnectionOptions(extras=extras)
        try:
            return nr.run(task=task, spec=spec or self.spec, **kw)["switch1"][0]
        finally:
            nr.close_connections()


def configured(rig: Rig) -> list[str]:
    return rig.device.config_received()


@pytest.mark.parametrize("platform", PLATFORMS)
def test_apply_saves_and_a_second_run_sends_nothing(make_inventory: InventoryFactory,
                                                    server: SSHTestServer, platform: str) -> None:
    rig = Rig(make_inventory, server, platform)
    before = rig.device.config_lines()
    dry = rig.run(switch.configure, dry_run=True)
    assert dry.changed and not dry.failed, dry.result
    assert "+" in dry.diff and "10.88.0.12" in dry.diff
    assert configured(rig) == [] and rig.device.config_lines() == before  # nothing sent
    first = rig.run(switch.configure, **FAST)
    assert first.changed and not first.failed, first.result
    assert "applied, no session was up before" in first.result, first.result
    text = rig.device.config_text()
    assert "10.88.0.12" in text and "10.88.0.100/32" in text and "65010" in text
    if platform == "juniper_junos":
        assert "commit confirmed" in first.result  # confirmed: persistent, nothing to save
    else:
        assert rig.device.saves == 1
    sent = len(rig.device.received)
    second = rig.run(switch.configure, **FAST)
    assert not second.changed and not second.failed and second.result == "in sync"
    assert [c for c in rig.device.received[sent:]
            if not c.startswith(("show ", "terminal", "set cli"))] == []
    check = rig.run(switch.check)
    assert check.result.ok, check.result
    assert {n["address"]: n["state"] for n in check.result.values["neighbors"]} == {
        a: "Established" for a in LVS}
    assert check.result.values["vip_route"]["present"] and sorted(
        check.result.values["vip_route"]["next_hops"]) == sorted(LVS)


@pytest.mark.parametrize("platform", PLATFORMS)
def test_a_refused_line_rolls_the_switch_back(make_inventory: InventoryFactory,
                                              server: SSHTestServer, platform: str) -> None:
    rig = Rig(make_inventory, server, platform,
              reject=LVS2_LINE.get(platform, r"neighbor 10\.88\.0\.12 description"))
    before = rig.device.config_lines()
    result = rig.run(switch.configure, **FAST)
    assert result.failed and not result.changed
    assert re.search(r"load failed \(ConfigInvalidException", result.result), result.result
    assert "config is as before the change" in result.result, result.result
    assert rig.device.config_lines() == before
    assert rig.device.saves == 0


@pytest.mark.parametrize("platform", PLATFORMS)
def test_a_session_that_does_not_come_back_is_rolled_back(make_inventory: InventoryFactory,
                                                          server: SSHTestServer,
                                                          platform: str) -> None:
    rig = Rig(make_inventory, server, platform)
    assert not rig.run(switch.configure, **FAST).failed
    good = rig.device.config_lines()
    saves = rig.device.saves
    # a bad neighbour setting: the directors' AS is wrong, both sessions drop
    bad = rig.spec_with(lambda h, g, d: d["data"]["bgp"].update(lvs_asn=65011))
    result = rig.run(switch.configure, spec=bad, **FAST)
    assert result.failed and not result.changed
    assert "post-check failed: BGP session(s) 10.88.0.11, 10.88.0.12 not Established" in \
        result.result, result.result
    assert "config is as before the change" in result.result
    assert rig.device.config_lines() == good
    assert set(rig.device.sessions().values()) == {"Established"}
    assert rig.device.saves == saves  # the bad config was never saved


@pytest.mark.parametrize("platform", PLATFORMS)
def test_sessions_held_idle_by_the_back_off_are_cleared_after_the_rollback(
        make_inventory: InventoryFactory, server: SSHTestServer, platform: str) -> None:
    """A real BGP speaker holds a session that kept failing Idle for a back-off (FRR: up to
    120 s, doubled per failure; seen on the lab switches as 31 s to go right after a 60 s
    post-check): the rollback clears the sessions that were up and waits for them."""
    rig = Rig(make_inventory, server, platform, idle_hold=True)
    assert not rig.run(switch.configure, **FAST).failed
    bad = rig.spec_with(lambda h, g, d: d["data"]["bgp"].update(lvs_asn=65011))
    result = rig.run(switch.configure, spec=bad, **FAST)
    assert result.failed and "config is as before the change" in result.result, result.result
    assert ("2 session(s) Established again (cleared 10.88.0.11, 10.88.0.12)"
            in result.result), result.result
    assert sorted(rig.device.cleared) == sorted(LVS)
    assert set(rig.device.sessions().values()) == {"Established"}


@pytest.mark.parametrize("platform", PLATFORMS)
def test_a_switch_that_stops_answering_half_way_is_rolled_back_on_a_new_session(
        make_inventory: InventoryFactory, server: SSHTestServer, platform: str) -> None:
    rig = Rig(make_inventory, server, platform,
              hang=LVS2_LINE.get(platform, r"neighbor 10\.88\.0\.12 description"))
    before = rig.device.config_lines()
    result = rig.run(switch.configure, timeout=1.5, postcheck_timeout=1.0)
    assert result.failed and not result.changed
    assert re.search(r"load failed \(\w*Timeout", result.result), result.result
    assert "config is as before the change" in result.result, result.result
    assert rig.device.config_lines() == before


@pytest.mark.parametrize("platform", PLATFORMS)
def test_a_check_reads_its_commands_without_finding_the_prompt_again(
        make_inventory: InventoryFactory, server: SSHTestServer, platform: str) -> None:
    """Once logged in, `check` sends its `show` commands and no bare newline (netmiko's
    find_prompt before every command: a round trip each); it still reads every line of an
    output that arrives line by line, although the running config prints the hostname that
    netmiko's base prompt is."""
    rig = Rig(make_inventory, server, platform)
    assert not rig.run(switch.configure, **FAST).failed
    rig.device.blank_lines = 0
    assert not rig.run(lambda task, spec: switch.connect(task)).failed
    login = rig.device.blank_lines  # what the login itself sends
    rig.device.blank_lines, rig.device.line_delay = 0, 0.01
    sent = len(rig.device.received)
    check = rig.run(switch.check)
    assert check.result.ok, check.result
    assert check.result.values["filter"]["ok"], check.result.values
    assert [c for c in rig.device.received[sent:] if c.startswith("show ")] != []
    assert rig.device.blank_lines == login


@pytest.mark.parametrize("platform", PLATFORMS)
def test_a_check_with_a_key_login_reads_by_exec_requests_riding_one_master(
        make_inventory: InventoryFactory, server: SSHTestServer, platform: str) -> None:
    """A switch netmiko reaches with a key alone is read by exec requests (`ssh switch CMD`,
    the command as it is) riding a persistent master: its three reads side by side, or on FRR
    one request whose three lines vtysh runs in turn. No interactive login, and the next check
    (a new Nornir, as the next process) pays no handshake."""
    rig = Rig(make_inventory, server, platform)
    assert not rig.run(switch.configure, **FAST).failed  # configured over netmiko
    one_request = platform == "frr"
    side_by_side = threading.Barrier(1 if one_request else 3, timeout=5)

    def answer(chan: Any, command: str) -> None:  # the three reads must be in flight at once
        try:
            side_by_side.wait()
        except threading.BrokenBarrierError:
            command = "one read at a time"  # refused: the check fails
        rig.device.answer(chan, command)

    server.cli = answer
    logins, handshakes, sent = rig.device.logins, server.handshakes, len(server.commands)
    first = rig.run(switch.check, key_login=True)
    assert first.result.ok, first.result
    assert first.result.values["filter"]["ok"], first.result.values
    assert first.result.values["vip_route"]["installed"], first.result.values
    assert rig.device.logins == logins  # no netmiko session
    requests = server.commands[sent:]
    assert rig.device.exec_requests == len(requests) == (1 if one_request else 3), requests
    lines = [ln for c in requests for ln in c.splitlines()]
    assert len(lines) == 3 and all(ln.startswith("show ") for ln in lines), requests
    assert server.handshakes == handshakes + 1
    again = rig.run(switch.check, key_login=True)
    assert again.result.ok, again.result
    assert server.handshakes == handshakes + 1  # it rode the master the first one left
    assert rig.device.exec_requests == 2 * len(requests)


def test_a_command_the_switch_refuses_over_exec_fails_the_check_naming_it(
        make_inventory: InventoryFactory, server: SSHTestServer) -> None:
    rig = Rig(make_inventory, server, "frr", reject=r"^show running-config")
    server.cli = rig.device.answer
    res = rig.run(switch.check, key_login=True)
    assert res.failed
    assert "`show running-config` exited 1: % Unknown command: show running-config" in str(
        res.exception)


def test_a_kept_change_and_a_rollback_say_the_sessions_back_in_one_wording() -> None:
    assert established_again(set()) == "no session was up before"
    assert established_again(set(LVS)) == "2 session(s) Established again"
    assert established_again(set(LVS), cleared=["10.88.0.12"]) == \
        "2 session(s) Established again (cleared 10.88.0.12)"
