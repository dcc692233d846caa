"""The lab's FRR switches as a user changes them (issue 13, item 5), on the real lab.

A BGP timer changed in a copy of the inventory: `deploy --dry-run` shows the timer lines and
touches nothing, `deploy` applies them, a second deploy changes nothing on the switches. Then a
bad neighbour setting that breaks the sessions (the switch told the directors are AS 65011,
through the inventory: `bgp.lvs_asn` in a copy, deployed to switch1 alone with `--phase network
--limit switch1`, so the directors keep AS 65010): the post-check fails, switch1 is rolled back
to the config it had, and its sessions are Established again — read from the switch itself
(`vtysh -c 'show bgp summary json'`) and from `check --json`. The lab ends in its default
configuration (the original inventory deployed again).
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import LAB_INVENTORY
from tests.lab.test_lab_deploy import cli, outcomes, report_of, wait_for

pytestmark = pytest.mark.lab

SWITCHES = ("switch1", "switch2")
TIMER = re.compile(r"^neighbor \S+ timers \d+ \d+$")


@pytest.fixture(scope="module")
def deployed(lab) -> None:
    """A fresh lab, deployed from the shipped inventory (its tight timers: 1 / 3)."""
    lab.lab.down()
    lab.lab.up()
    proc = cli("deploy", "-i", str(LAB_INVENTORY), "--json")
    assert proc.returncode == 0, report_of(proc)["phases"]


def inventory_copy(tmp_path: Path, **bgp: Any) -> Path:
    inv = tmp_path / "inv"
    shutil.copytree(LAB_INVENTORY, inv)
    defaults = yaml.safe_load((inv / "defaults.yaml").read_text())
    defaults["data"]["bgp"].update(bgp)
    (inv / "defaults.yaml").write_text(yaml.safe_dump(defaults, sort_keys=False))
    return inv


def running(lab, switch: str) -> str:
    """The switch's running config as vtysh prints it (root's shell on the switch)."""
    _, out, _ = lab.run(switch, "vtysh -c 'show running-config'")
    return "\n".join(ln for ln in out.splitlines() if not ln.startswith("Building"))


def sessions(lab, switch: str) -> dict[str, str]:
    """Neighbour -> state, from the switch's own `show bgp summary json`."""
    _, out, _ = lab.run(switch, "vtysh -c 'show bgp summary json'")
    doc = json.loads(out)
    doc = doc.get("ipv4Unicast", doc)
    return {addr: p.get("state", "?") for addr, p in (doc.get("peers") or {}).items()}


def all_established(lab, switch: str) -> bool:
    states = sessions(lab, switch)
    return len(states) == 2 and set(states.values()) == {"Established"}


def vip_received(lab, switch: str) -> bool:
    """The VIP /32 is in the switch's routing table, learnt by BGP (what `check` asks of it)."""
    vip = lab.spec.vip
    _, out, _ = lab.run(switch, f"vtysh -c 'show ip route {vip}/32 json'")
    routes = json.loads(out or "{}").get(f"{vip}/32") or []
    return any(r.get("protocol") == "bgp" and r.get("selected") for r in routes)


def switch_rows(report: dict) -> dict[str, dict]:
    return {h: o for (phase, h), o in outcomes(report).items() if phase == "switches"}


def network(report: dict) -> dict[str, dict]:
    return {h: o for (phase, h), o in outcomes(report).items()
            if phase == "network" and h in SWITCHES}


def changed_lines(diff: str) -> list[str]:
    return [ln[1:].strip() for ln in diff.splitlines()
            if ln[:1] in "+-" and not ln.startswith(("+++", "---"))]


def test_a_timer_change_is_shown_then_applied_then_in_sync(lab, deployed, tmp_path: Path) -> None:
    inv = inventory_copy(tmp_path, keepalive_s=2, hold_s=6)
    before = {s: running(lab, s) for s in SWITCHES}
    assert all(" timers 1 3" in before[s] for s in SWITCHES)
    try:
        # dry run: the diff is the timer lines, nothing is sent
        proc = cli("deploy", "-i", str(inv), "--dry-run", "--json")
        assert proc.returncode == 0, proc.stderr[-2000:]
        for name, o in network(report_of(proc)).items():
            lines = changed_lines(o["diff"])
            assert o["status"] == "changed", (name, o["message"])
            assert sorted(lines) == sorted(
                [f"neighbor 10.88.0.1{i} timers 1 3" for i in (1, 2)]
                + [f"neighbor 10.88.0.1{i} timers 2 6" for i in (1, 2)]), lines
        assert {s: running(lab, s) for s in SWITCHES} == before

        # the deploy applies them (the directors' FRR gets them too and restarts)
        proc = cli("deploy", "-i", str(inv), "--json")
        report = report_of(proc)
        assert proc.returncode == 0, network(report)
        for name, o in network(report).items():
            assert o["status"] == "changed", (name, o["message"])
            assert "applied" in o["message"], o["message"]
        for s in SWITCHES:
            after = running(lab, s)
            assert " timers 2 6" in after and " timers 1 3" not in after
            assert ([ln for ln in before[s].splitlines() if not TIMER.match(ln.strip())]
                    == [ln for ln in after.splitlines() if not TIMER.match(ln.strip())])

        # a second deploy: nothing to do on the switches
        proc = cli("deploy", "-i", str(inv), "--json")
        report = report_of(proc)
        assert proc.returncode == 0
        assert {n: o["status"] for n, o in network(report).items()} == dict.fromkeys(
            SWITCHES, "ok")
        assert all(wait_for(lambda s=s: all_established(lab, s), 20) for s in SWITCHES)
    finally:  # the lab's own timers again
        proc = cli("deploy", "-i", str(LAB_INVENTORY), "--json")
        assert proc.returncode == 0, network(report_of(proc))
    assert all(" timers 1 3" in running(lab, s) for s in SWITCHES)


def test_a_bad_neighbour_setting_is_rolled_back_with_sessions_up(lab, deployed,
                                                                 tmp_path: Path) -> None:
    assert wait_for(lambda: all_established(lab, "switch1"), 20), sessions(lab, "switch1")
    before = running(lab, "switch1")
    inv = inventory_copy(tmp_path, lvs_asn=65011)
    args = ["deploy", "-i", str(inv), "--phase", "network", "--limit", "switch1", "--json"]
    proc = cli(*args, "--dry-run")  # what it will send: the two remote-as lines
    (o,) = network(report_of(proc)).values()
    assert o["status"] == "changed" and sorted(changed_lines(o["diff"])) == sorted(
        [f"neighbor 10.88.0.1{i} remote-as {asn}" for i in (1, 2) for asn in (65010, 65011)])
    assert running(lab, "switch1") == before

    proc = cli(*args)
    (o,) = network(report_of(proc)).values()
    assert proc.returncode != 0 and o["status"] == "failed", o
    assert "post-check failed: BGP session(s) 10.88.0.11, 10.88.0.12 not Established" in (
        o["message"])
    assert "config is as before the change" in o["message"], o["message"]
    # 60 s of "Bad Peer AS" leave FRR's idle hold at 30-60 s: the rollback clears the sessions
    assert "2 session(s) Established again" in o["message"], o["message"]

    after = running(lab, "switch1")
    assert after == before and "remote-as 65011" not in after
    assert wait_for(lambda: all_established(lab, "switch1"), 30), sessions(lab, "switch1")
    # the directors announce the VIP again once a session is up: a moment after Established
    assert wait_for(lambda: vip_received(lab, "switch1"), 20)
    proc = cli("check", "-i", str(LAB_INVENTORY), "--json", timeout=120)
    rows = switch_rows(report_of(proc))
    assert set(rows) == set(SWITCHES)
    assert all(r["status"] == "ok" for r in rows.values()), rows
    states = {n["address"]: n["state"] for n in rows["switch1"]["values"]["neighbors"]}
    assert states == {"10.88.0.11": "Established", "10.88.0.12": "Established"}
