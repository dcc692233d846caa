"""Host primitives on the FakeFleet: idempotence, dry runs, validation, diffs, service logic."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from nornir import InitNornir
from nornir.core import Nornir
from nornir.core.task import Result, Task

from nornir_k8sha.exceptions import CommandFailed
from nornir_k8sha.tasks import (
    commands,
    connect,
    facts,
    file,
    packages,
    restore_backup,
    service,
    sysctl,
)
from nornir_k8sha.testing import FakeFleet, FakeHost, FakeUnit, install_fake

CFG = "/etc/haproxy/haproxy.cfg"


@pytest.fixture
def nr(tmp_path: Path) -> Nornir:
    inv = tmp_path / "inv"
    inv.mkdir()
    hosts = {name: {"hostname": f"10.0.0.{i}"} for i, name in enumerate(["h1", "h2"], 1)}
    (inv / "hosts.yaml").write_text(yaml.safe_dump(hosts))
    (inv / "groups.yaml").write_text("{}\n")
    (inv / "defaults.yaml").write_text("{}\n")
    return InitNornir(inventory={"plugin": "SimpleInventory", "options": {
        "host_file": str(inv / "hosts.yaml"), "group_file": str(inv / "groups.yaml"),
        "defaults_file": str(inv / "defaults.yaml")}}, logging={"enabled": False})


@pytest.fixture
def fleet(nr: Nornir) -> FakeFleet:
    return install_fake(nr, FakeFleet(debian=True))


@pytest.fixture
def h1(fleet: FakeFleet) -> FakeHost:
    return fleet.host("h1")


def run1(nr: Nornir, task: Any, dry_run: bool | None = None, **kwargs: Any) -> Result:
    """Run `task` on h1 and return its Result (raising what the task raised)."""
    agg = nr.filter(name="h1").run(task=task, dry_run=dry_run, on_failed=True, **kwargs)
    multi = agg["h1"]
    if multi.failed:
        raise multi.exception  # type: ignore[misc]
    return multi[0]


# --- the seam ---------------------------------------------------------------------------


def test_install_fake_routes_every_host(nr: Nornir, fleet: FakeFleet) -> None:
    def who(task: Task) -> Result:
        return Result(host=task.host, result=connect(task).run("hostname").command)

    res = nr.run(task=who)
    assert not res.failed
    assert fleet.host("h1").commands() == ["hostname"] == fleet.host("h2").commands()
    nr.close_connections()
    assert fleet.host("h1").closed


def test_commands_batches_and_dry_run(nr: Nornir, h1: FakeHost) -> None:
    h1.on(r"^echo b", stdout="b\n")
    r = run1(nr, commands, cmds=["echo a", "echo b"])
    assert r.changed and [x.stdout for x in r.result] == ["", "b\n"]
    h1.on(r"^false", exit_code=1, stderr="nope\n")
    with pytest.raises(CommandFailed, match="nope"):
        run1(nr, commands, cmds=["true", "false", "echo never"])
    assert "echo never" not in h1.commands()
    calls = len(h1.calls)
    r = run1(nr, commands, cmds=["rm -rf /x"], dry_run=True)
    assert r.changed and r.diff == "would run: rm -rf /x" and len(h1.calls) == calls
    r = run1(nr, commands, cmds=["cat /etc/hostname"], read_only=True, dry_run=True)
    assert not r.changed and h1.commands()[-1] == "cat /etc/hostname"


# --- facts --------------------------------------------------------------------------------


def test_facts_in_one_batch(nr: Nornir, h1: FakeHost) -> None:
    h1.on(r"^head -n 100000 /etc/os-release", stdout=(
        "==> /etc/os-release <==\n"
        'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nID=debian\nVERSION_ID="12"\n\n'
        "==> /proc/sys/kernel/hostname <==\nh1\n\n"
        "==> /proc/meminfo <==\nMemTotal:  8388608 kB\nSwapTotal: 0 kB\n\n"
        "==> /proc/modules <==\nip_vs 1 0 - Live 0x0\nbr_netfilter 2 0 - Live 0x0\n\n"
        "==> /proc/cpuinfo <==\n" + "".join(f"processor\t: {i}\nflags\t: x\n\n"
                                            for i in range(4))),
        stderr="head: cannot open '/proc/sys/kernel/osrelease' for reading\n", exit_code=1)
    h1.on(r"^ss -ltnH", stdout="LISTEN 0 128 0.0.0.0:22 0.0.0.0:*\n"
          "LISTEN 0 4096 [::]:6443 [::]:*\nLISTEN 0 10 127.0.0.1%lo:53 0.0.0.0:*\n")
    h1.on(r"^date", stdout="1700000000.5\n")
    r = run1(nr, facts, dry_run=True)
    f = r.result
    assert not r.changed
    assert (f["os"], f["os_id"], f["os_version"], f["cpus"]) == (
        "Debian GNU/Linux 12 (bookworm)", "debian", "12", 4)
    assert (f["memory_mb"], f["swap_mb"]) == (8192, 0)
    assert f["modules"] == ["br_netfilter", "ip_vs"]
    assert f["listening_ports"] == [22, 53, 6443]
    assert {"address": "127.0.0.1", "port": 53} in f["listening"]
    assert f["time"] == 1700000000.5 and f["clock_skew_s"] < -1e6
    assert f["kernel"] is None and "osrelease" in f["errors"]["files"]
    assert f["hostname"] == "h1"
    assert len(h1.commands()) == 3  # one batch of 3 processes, recorded command by command


# --- files --------------------------------------------------------------------------------


def test_file_is_created_then_idempotent(nr: Nornir, h1: FakeHost) -> None:
    r = run1(nr, file, path="/etc/app.conf", content="a=1\n", mode=0o640)
    assert r.changed and r.result == "/etc/app.conf created"
    assert r.diff.startswith("--- /dev/null\n+++ /etc/app.conf\n") and "+a=1" in r.diff
    assert h1.read("/etc/app.conf") == "a=1\n" and h1.modes["/etc/app.conf"] == 0o640
    assert "/etc/app.conf.k8sha-bak" not in h1.files  # nothing to back up
    writes = len(h1.writes())
    r = run1(nr, file, path="/etc/app.conf", content="a=1\n", mode=0o640)
    assert not r.changed and r.diff == "" and len(h1.writes()) == writes


def test_file_diff_and_backup(nr: Nornir, h1: FakeHost) -> None:
    h1.write("/etc/app.conf", "keep\nold\n", mode=0o644)
    r = run1(nr, file, path="/etc/app.conf", content="keep\nnew\n")
    assert r.changed
    assert "--- /etc/app.conf\n+++ /etc/app.conf\n" in r.diff
    assert r.diff.splitlines()[2:] == ["@@ -1,2 +1,2 @@", " keep", "-old", "+new"]
    assert h1.read("/etc/app.conf") == "keep\nnew\n"
    assert h1.read("/etc/app.conf.k8sha-bak") == "keep\nold\n"


def test_dry_run_writes_nothing(nr: Nornir, h1: FakeHost) -> None:
    h1.write(CFG, "old\n")
    r = run1(nr, file, path=CFG, content="new\n", validate="haproxy -c -f {path}", dry_run=True)
    assert r.changed and "-old" in r.diff and "+new" in r.diff
    r = run1(nr, file, path="/etc/other", content="x", dry_run=True)
    assert r.changed and "+x" in r.diff
    assert h1.writes() == [] and h1.commands() == []  # not even the validator
    assert h1.read(CFG) == "old\n" and "/etc/other" not in h1.files
    nr.data.dry_run = True  # the global flag is honoured too
    assert run1(nr, file, path="/etc/other", content="x").changed
    assert h1.writes() == []


def test_validator_runs_on_the_temp_file_before_the_swap(nr: Nornir, h1: FakeHost) -> None:
    h1.write(CFG, "old\n")
    seen = {}

    def validator(host: FakeHost, command: str, stdin: bytes | None) -> Any:
        path = command.split()[-1]
        seen[path] = host.read(path)
        return (0, "Configuration file is valid\n", "")

    h1.on(r"^haproxy -c -f ", validator)
    r = run1(nr, file, path=CFG, content="new\n", validate="haproxy -c -f {path}")
    assert r.changed
    assert seen == {"/etc/haproxy/.k8sha-new.haproxy.cfg": "new\n"}
    assert h1.read(CFG) == "new\n" and h1.read(CFG + ".k8sha-bak") == "old\n"
    assert "/etc/haproxy/.k8sha-new.haproxy.cfg" not in h1.files


def test_validator_failure_leaves_the_old_file(nr: Nornir, h1: FakeHost) -> None:
    h1.write(CFG, "old\n")
    h1.on(r"^haproxy -c -f ", exit_code=1,
          stderr="[ALERT] parsing [haproxy.cfg:3]: unknown keyword 'bogus'\n")
    with pytest.raises(CommandFailed) as info:
        run1(nr, file, path=CFG, content="bogus\n", validate="haproxy -c -f {path}")
    e = info.value
    assert e.host == "h1" and e.exit_code == 1 and "unknown keyword 'bogus'" in e.stderr
    assert "validation failed" in str(e) and CFG in str(e)
    assert h1.read(CFG) == "old\n"
    assert set(h1.files) == {CFG}  # no temp file, no backup left behind


def test_secret_files_hide_their_content(nr: Nornir, h1: FakeHost) -> None:
    r = run1(nr, file, path="/etc/etcd/pki/server.key", content="PRIVATE-KEY-BYTES\n",
             mode=0o600)
    assert r.changed and "(content hidden)" in r.diff and "PRIVATE" not in r.diff
    r = run1(nr, file, path="/etc/etcd/pki/server.key", content="OTHER-KEY\n", mode=0o600)
    assert "(content hidden)" in r.diff and "KEY" not in r.diff.replace("server.key", "")
    assert h1.modes["/etc/etcd/pki/server.key.k8sha-bak"] == 0o600


def test_mode_and_owner_changes_are_changes(nr: Nornir, h1: FakeHost) -> None:
    h1.write("/etc/x", "same\n", mode=0o644)
    r = run1(nr, file, path="/etc/x", content="same\n", mode=0o600, owner="etcd")
    assert r.changed and "mode 0644 -> 0600" in r.diff and "owner root:root -> etcd" in r.diff
    assert h1.modes["/etc/x"] == 0o600 and h1.owners["/etc/x"] == "etcd:etcd"
    assert not run1(nr, file, path="/etc/x", content="same\n", mode=0o600, owner="etcd").changed


def test_restore_backup(nr: Nornir, h1: FakeHost) -> None:
    assert not run1(nr, restore_backup, path=CFG).changed
    h1.write(CFG, "v1\n")
    run1(nr, file, path=CFG, content="v2\n")
    r = run1(nr, restore_backup, path=CFG, dry_run=True)
    assert r.changed and "-v2" in r.diff and h1.read(CFG) == "v2\n"
    r = run1(nr, restore_backup, path=CFG)
    assert r.changed and h1.read(CFG) == "v1\n" and CFG + ".k8sha-bak" not in h1.files


# --- packages -----------------------------------------------------------------------------


def test_packages_noop_when_present(nr: Nornir, h1: FakeHost) -> None:
    h1.debian.packages.update({"haproxy": "2.6.12-1", "keepalived": "1:2.2.7-1"})
    r = run1(nr, packages, names=["haproxy", "keepalived"])
    assert not r.changed
    assert len(h1.commands()) == 1 and h1.commands()[0].startswith("dpkg-query -W")


def test_packages_install_missing_then_idempotent(nr: Nornir, h1: FakeHost) -> None:
    h1.debian.packages["haproxy"] = "2.6"
    r = run1(nr, packages, names=["haproxy", "etcd-server"], dry_run=True)
    assert r.changed and r.diff == "+ package etcd-server"
    assert not [c for c in h1.commands() if "apt-get" in c]
    r = run1(nr, packages, names=["haproxy", "etcd-server"])
    assert r.changed and "etcd-server" in h1.debian.packages
    install = [c for c in h1.commands() if "apt-get install" in c][0]
    assert "DEBIAN_FRONTEND=noninteractive" in install and "policy-rc.d" in install
    assert "'haproxy'" not in install and "etcd-server" in install  # only what is missing
    assert not run1(nr, packages, names=["haproxy", "etcd-server"]).changed


def test_packages_version_pins(nr: Nornir, h1: FakeHost) -> None:
    h1.debian.packages["kubeadm"] = "1.29.1-1.1"
    assert run1(nr, packages, names=["kubeadm=1.30.*"]).changed
    assert h1.debian.packages["kubeadm"] == "1.30.0"
    assert not run1(nr, packages, names=["kubeadm=1.30.*"]).changed


def test_unknown_package_refreshes_lists_then_fails_clearly(nr: Nornir, h1: FakeHost) -> None:
    h1.debian.available = {"haproxy"}
    with pytest.raises(CommandFailed) as info:
        run1(nr, packages, names=["no-such-pkg"])
    assert "Unable to locate package no-such-pkg" in str(info.value)
    assert info.value.host == "h1"
    assert [c for c in h1.commands() if c.startswith("apt-get update")]


# --- sysctl -------------------------------------------------------------------------------


def test_sysctl_writes_applies_and_is_idempotent(nr: Nornir, h1: FakeHost) -> None:
    path = "/etc/sysctl.d/60-k8sha.conf"
    wanted = {"net.ipv4.conf.all.arp_ignore": 1, "net.ipv4.conf.all.arp_announce": 2}
    h1.debian.sysctls.update({"net.ipv4.conf.all.arp_ignore": "0",
                              "net.ipv4.conf.all.arp_announce": "0"})
    r = run1(nr, sysctl, settings=wanted, path=path, dry_run=True)
    assert r.changed and path not in h1.files and h1.debian.sysctls[
        "net.ipv4.conf.all.arp_ignore"] == "0"
    r = run1(nr, sysctl, settings=wanted, path=path)
    assert r.changed and "net.ipv4.conf.all.arp_ignore = 1" in h1.read(path)
    assert h1.debian.sysctls["net.ipv4.conf.all.arp_announce"] == "2"
    assert not run1(nr, sysctl, settings=wanted, path=path).changed
    h1.debian.sysctls["net.ipv4.conf.all.arp_ignore"] = "0"  # drifted at runtime
    r = run1(nr, sysctl, settings=wanted, path=path)
    assert r.changed and "# sysctl net.ipv4.conf.all.arp_ignore -> 1" in r.diff
    assert h1.debian.sysctls["net.ipv4.conf.all.arp_ignore"] == "1"


# --- services -----------------------------------------------------------------------------


def test_service_enable_and_start_only_when_needed(nr: Nornir, h1: FakeHost) -> None:
    h1.debian.units["haproxy"] = FakeUnit()
    r = run1(nr, service, unit="haproxy")
    # the SysV mirror (update-rc.d, a Perl run: seconds on a UML director) is skipped
    assert r.changed and r.result == ("SYSTEMCTL_SKIP_SYSV=1 systemctl enable haproxy, "
                                      "systemctl start haproxy")
    u = h1.debian.units["haproxy"]
    assert u.enabled and u.active and u.starts == 1
    assert h1.commands()[-1] == "systemctl is-active haproxy"  # waited until active
    before = len(h1.commands())
    r = run1(nr, service, unit="haproxy")
    assert not r.changed and len(h1.commands()) == before + 1  # one `systemctl show`


def test_a_started_unit_is_seen_active_in_the_start_channel(nr: Nornir, h1: FakeHost) -> None:
    h1.debian.units["haproxy"] = FakeUnit()
    assert run1(nr, service, unit="haproxy").changed
    assert h1.round_trips == 2  # its state; then enable, start and is-active in one channel
    h1.debian.units["etcd"] = FakeUnit(enabled=True)
    seen = iter([(3, "activating\n", ""), (0, "active\n", "")])
    h1.on(r"^systemctl is-active etcd", lambda h, c, s: next(seen))
    assert run1(nr, service, unit="etcd").changed  # still starting: waited for, as before
    assert h1.round_trips == 2 + 3 and h1.commands()[-1] == "systemctl is-active etcd"


def test_service_reload_or_restart_only_when_inputs_changed(nr: Nornir, h1: FakeHost) -> None:
    u = h1.debian.units["haproxy"] = FakeUnit(enabled=True, active=True)
    assert not run1(nr, service, unit="haproxy").changed
    assert run1(nr, service, unit="haproxy", reload_if_changed=True).changed
    assert (u.reloads, u.restarts) == (1, 0)
    assert run1(nr, service, unit="haproxy", restart_if_changed=True).changed
    assert (u.reloads, u.restarts) == (1, 1)
    r = run1(nr, service, unit="haproxy", restart_if_changed=True, dry_run=True)
    assert r.changed and r.diff == "would run: systemctl restart haproxy" and u.restarts == 1
    assert run1(nr, service, unit="haproxy", state="stopped").changed and not u.active
    assert not run1(nr, service, unit="haproxy", state="stopped").changed


def test_service_daemon_reload_when_unit_file_changed(nr: Nornir, h1: FakeHost) -> None:
    u = h1.debian.units["etcd"] = FakeUnit(enabled=True, active=True, need_daemon_reload=True)
    r = run1(nr, service, unit="etcd", restart_if_changed=True)
    assert r.result == "systemctl daemon-reload, systemctl restart etcd"
    assert not u.need_daemon_reload and u.restarts == 1


def test_service_unknown_unit_and_bad_state(nr: Nornir, h1: FakeHost) -> None:
    with pytest.raises(CommandFailed, match="unit nope not found"):
        run1(nr, service, unit="nope")
    with pytest.raises(ValueError, match="state must be one of"):
        run1(nr, service, unit="haproxy", state="running")


def test_failed_reload_reports_the_journal_and_rolls_back(nr: Nornir, h1: FakeHost) -> None:
    u = h1.debian.units["haproxy"] = FakeUnit(enabled=True, active=True)
    h1.write(CFG, "good\n")
    assert run1(nr, file, path=CFG, content="bad\n").changed
    u.fail_start = True
    with pytest.raises(CommandFailed) as info:
        run1(nr, service, unit="haproxy", restart_if_changed=True, rollback=[CFG])
    e = info.value
    assert e.command == "systemctl restart haproxy" and e.host == "h1"
    assert "fake journal line 2" in e.stderr and "journalctl -u haproxy -n 20" in e.stderr
    assert f"restored {CFG}" in str(e)
    assert h1.read(CFG) == "good\n"  # the bad config does not stay


def test_wait_active_gives_up_with_a_clear_error(nr: Nornir, h1: FakeHost) -> None:
    h1.debian.units["slow"] = FakeUnit(enabled=True)
    h1.on(r"^systemctl is-active", stdout="activating\n", exit_code=3)
    with pytest.raises(CommandFailed) as info:
        run1(nr, service, unit="slow", timeout=0.5)
    assert "slow is activating (waited up to 0.5s)" in info.value.stderr
    assert len([c for c in h1.commands() if "is-active" in c]) >= 2
