"""The cluster lock held on the hosts (tasks/hostlock.py): a second operator exits 1 naming the
holder, a stale lock is broken only when asked and only when stale, a dry run takes none, and
the lock is always released.

The members' commands run in a real shell (`sh -c`) on a private folder per member, so the
atomic `ln`, the heartbeat's mtime and the token checks are the real ones."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest
from nornir.core.plugins.connections import ConnectionPluginRegister
from typer.testing import CliRunner

from nornir_k8sha import constants as C
from nornir_k8sha.cli import app
from nornir_k8sha.cli import deploy as cli_deploy
from nornir_k8sha.cli import etcd as cli_etcd
from nornir_k8sha.cli import runbook as cli_runbook
from nornir_k8sha.connection import K8shaSSH
from nornir_k8sha.exceptions import ConnectionFailed, OperationLocked
from nornir_k8sha.inventory import open_nornir
from nornir_k8sha.tasks import hostlock as L
from nornir_k8sha.testing import FakeFleet, FakeHost, Gauge, install_fake
from nornir_k8sha.topology import load_cluster_spec
from nornir_k8sha.transport import CONNECTION_NAME

from .conftest import LAB_INVENTORY

SPEC = load_cluster_spec(LAB_INVENTORY)
MEMBERS = L.lock_members(SPEC)
FOLDER = os.path.dirname(C.HOST_LOCK_FILE)
runner = CliRunner()


class ShellMember:
    """A member whose lock folder is `root`: each command runs in sh with the path moved."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True)

    def __call__(self, host: FakeHost, command: str, stdin: bytes | None) -> tuple:
        res = subprocess.run(["sh", "-c", command.replace(FOLDER, str(self.root))],
                             capture_output=True, text=True, timeout=10, check=False)
        return res.returncode, res.stdout, res.stderr

    @property
    def lock(self) -> Path:
        return self.root / os.path.basename(C.HOST_LOCK_FILE)

    def holder(self) -> dict | None:
        return json.loads(self.lock.read_text()) if self.lock.exists() else None


@pytest.fixture
def members(tmp_path: Path) -> dict[str, ShellMember]:
    return {m: ShellMember(tmp_path / "hosts" / m) for m in MEMBERS}


@pytest.fixture
def fleet(members: dict[str, ShellMember], monkeypatch: pytest.MonkeyPatch,
          tmp_path: Path) -> FakeFleet:
    """Every Nornir the cli opens talks to this fleet; the members run a real shell."""
    fleet = FakeFleet()
    for name, member in members.items():
        fleet.hosts[name] = FakeHost(name, handler=member)

    def opener(directory: Path, **kw: object) -> object:
        nr = open_nornir(directory, **kw)
        install_fake(nr, fleet)
        return nr

    for module in (cli_deploy, cli_etcd, cli_runbook):
        monkeypatch.setattr(module, "open_nornir", opener)
    monkeypatch.chdir(tmp_path)  # the state dir (and its local lock) lives here
    return fleet


def nornir(fleet: FakeFleet):  # noqa: ANN201
    nr = open_nornir(LAB_INVENTORY)
    install_fake(nr, fleet)
    return nr


def other_operator(command: str = "deploy", machine: str = "ws-alice",
                   pid: int = 4242) -> L.Holder:
    return L.Holder("alice", machine, pid, time.time(), command, "a11ce" * 6)


def plant(members: dict[str, ShellMember], who: L.Holder, *, age: float = 0.0,
          on: list[str] | None = None) -> None:
    """A lock file of `who` on members (all by default), last touched `age` s ago."""
    for name in on or MEMBERS:
        members[name].lock.write_text(who.record() + "\n")
        then = time.time() - age
        os.utime(members[name].lock, (then, then))


def work(fleet: FakeFleet) -> list[str]:
    """Every command on any host that is not the cluster lock's own."""
    return [c for h in fleet.hosts.values() for c in h.commands()
            if C.HOST_LOCK_FILE not in c]


def dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


# --- refusals --------------------------------------------------------------------------------


def test_a_deploy_while_another_operator_holds_the_cluster_exits_1_naming_them(
        fleet: FakeFleet, members: dict[str, ShellMember]) -> None:
    alice = other_operator("deploy")
    plant(members, alice)
    done = runner.invoke(app, ["deploy", "-i", str(LAB_INVENTORY)])
    assert done.exit_code == 1, done.output
    assert "the cluster is locked by alice@ws-alice pid 4242, `deploy`" in done.output
    assert "lock file on etcd1" in done.output and "try again when it ends" in done.output
    assert work(fleet) == []  # stopped at the first member: nothing else ran anywhere
    assert [h for h, m in members.items() if m.holder() != json.loads(alice.record())] == []


def test_verify_and_etcd_commands_are_refused_the_same_way(
        fleet: FakeFleet, members: dict[str, ShellMember],
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli_runbook, "_instruments", lambda: None)
    # the cli registers the lab's power cuts for the lab inventory: not beyond this test
    monkeypatch.setattr(cli_runbook, "register_lab_faults", lambda spec: None)
    plant(members, other_operator("etcd replace etcd2"))
    for args in (["verify", "--case", "haproxy-stopped"], ["etcd", "backup"],
                 ["reset", "--yes"]):
        done = runner.invoke(app, [*args, "-i", str(LAB_INVENTORY)])
        assert done.exit_code == 1, (args, done.output)
        assert "alice@ws-alice pid 4242, `etcd replace etcd2`" in done.output, args
    assert work(fleet) == []


def _contend(fleet: FakeFleet, name: str, token: str, start: threading.Barrier,
             outcomes: dict[str, object]) -> None:
    nr = nornir(fleet)
    me = L.Holder(name, f"machine-{name}", 1000, time.time(), "deploy", token)
    start.wait()
    try:
        outcomes[name] = L.acquire(nr, SPEC, "deploy", me=me)
    except OperationLocked as exc:
        outcomes[name] = exc


def test_two_operators_at_once_exactly_one_gets_it(fleet: FakeFleet,
                                                   members: dict[str, ShellMember]) -> None:
    for round_ in range(5):
        outcomes: dict[str, object] = {}
        start = threading.Barrier(2)
        threads = [threading.Thread(target=_contend,
                                    args=(fleet, n, f"{n}-{round_}", start, outcomes))
                   for n in ("ann", "bob")]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        won = [n for n, o in outcomes.items() if isinstance(o, L.HeldLock)]
        assert len(won) == 1, outcomes
        (loser,) = {"ann", "bob"} - set(won)
        assert f"{won[0]}@machine-{won[0]}" in str(outcomes[loser])
        L.release(nornir(fleet), outcomes[won[0]])  # type: ignore[arg-type]
        assert all(m.holder() is None for m in members.values())


# --- stale locks -----------------------------------------------------------------------------


def test_a_lock_of_a_dead_process_on_this_machine_is_broken_only_with_the_flag(
        fleet: FakeFleet, members: dict[str, ShellMember]) -> None:
    gone = L.Holder("bob", socket.gethostname(), dead_pid(), time.time(), "deploy", "b0b" * 8)
    plant(members, gone)
    refused = runner.invoke(app, ["reset", "--yes", "-i", str(LAB_INVENTORY)])
    assert refused.exit_code == 1
    assert "looks stale" in refused.output and f"process {gone.pid}" in refused.output
    assert "--break-lock" in refused.output and members["etcd1"].holder() is not None
    done = runner.invoke(app, ["reset", "--yes", "--break-lock", "-i", str(LAB_INVENTORY)])
    assert done.exit_code == 0, done.output
    assert "broke a stale cluster lock: bob@" in done.output
    assert all(m.holder() is None for m in members.values())  # ours released at the end


def test_a_lock_without_heartbeat_for_the_ttl_is_stale_a_fresh_one_is_never_broken(
        fleet: FakeFleet, members: dict[str, ShellMember]) -> None:
    plant(members, other_operator(), age=5.0)
    alive = runner.invoke(app, ["reset", "--yes", "--break-lock", "-i", str(LAB_INVENTORY)])
    assert alive.exit_code == 1
    assert "looks alive" in alive.output and "not break it" in alive.output
    assert all(m.holder() is not None for m in members.values())
    plant(members, other_operator(), age=C.HOST_LOCK_TTL_S + 60)
    done = runner.invoke(app, ["reset", "--yes", "--break-lock", "-i", str(LAB_INVENTORY)])
    assert done.exit_code == 0, done.output
    assert "broke a stale cluster lock: alice@ws-alice" in done.output
    assert "no heartbeat for" in done.output


# --- holding ---------------------------------------------------------------------------------


def test_a_dry_run_takes_no_lock(fleet: FakeFleet, members: dict[str, ShellMember]) -> None:
    plant(members, other_operator())
    done = runner.invoke(app, ["reset", "--dry-run", "-i", str(LAB_INVENTORY)])
    assert done.exit_code == 0, done.output
    assert not any(C.HOST_LOCK_FILE in c for h in fleet.hosts.values() for c in h.commands())


def test_the_lock_names_us_while_held_heartbeats_and_goes_when_the_command_fails(
        fleet: FakeFleet, members: dict[str, ShellMember]) -> None:
    seen: dict = {}
    with L.cluster_lock(nornir(fleet), SPEC, "etcd backup", heartbeat=0.05) as held:
        seen = {n: m.holder() for n, m in members.items()}
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not any(
                "touch -c" in c for c in fleet.host("etcd1").commands()):
            time.sleep(0.05)
    assert held.members == MEMBERS
    assert {h["command"] for h in seen.values()} == {"etcd backup"}
    assert {h["pid"] for h in seen.values()} == {os.getpid()}
    assert any("touch -c" in c for c in fleet.host("etcd1").commands())
    assert all(m.holder() is None for m in members.values())
    # a day-2 command that fails on a host still releases the lock
    done = runner.invoke(app, ["etcd", "backup", "-i", str(LAB_INVENTORY)])
    assert done.exit_code == 1  # no healthy member: nothing answers HTTP here
    assert any(C.HOST_LOCK_FILE in c for c in fleet.host("etcd1").commands())
    assert all(m.holder() is None for m in members.values())


def test_one_dead_member_still_leaves_a_majority_two_do_not(
        fleet: FakeFleet, members: dict[str, ShellMember]) -> None:
    fleet.host("etcd1").on(C.HOST_LOCK_FILE, exit_code=255, stderr="ssh: no route to host")
    with L.cluster_lock(nornir(fleet), SPEC, "etcd replace etcd1") as held:
        assert held.members == ["etcd2", "etcd3"] and list(held.unreachable) == ["etcd1"]
    fleet.host("etcd2").on(C.HOST_LOCK_FILE, exit_code=255, stderr="ssh: no route to host")
    with pytest.raises(OperationLocked, match=r"needs 2 of the etcd members .* only 1 answered"):
        L.acquire(nornir(fleet), SPEC, "deploy")
    assert members["etcd3"].holder() is None  # the minority it got was given back


def test_release_never_removes_a_lock_that_is_no_longer_ours(
        fleet: FakeFleet, members: dict[str, ShellMember]) -> None:
    held = L.acquire(nornir(fleet), SPEC, "deploy")
    plant(members, other_operator(), on=["etcd2"])  # ours was broken there and retaken
    L.release(nornir(fleet), held)
    assert members["etcd1"].holder() is None and members["etcd3"].holder() is None
    assert members["etcd2"].holder()["user"] == "alice"


def test_release_tries_a_member_again_after_its_ssh_session_died(
        fleet: FakeFleet, members: dict[str, ShellMember]) -> None:
    held = L.acquire(nornir(fleet), SPEC, "runbook run verify-ha.yaml")
    tries = iter([(255, "", "Socket is closed")])  # rebooted by a power cut: once
    fleet.host("etcd1").on("rm -f", lambda *_: next(tries, None))
    said: list[str] = []
    L.release(nornir(fleet), held, say=said.append)
    assert said == [] and all(m.holder() is None for m in members.values())


# --- opening the members' connections ------------------------------------------------------


class Handshaking:
    """A `k8sha_ssh` plugin whose open (the SSH handshake) returns only once every lock
    member's open is in flight (a barrier: opened one after the other, the first one waits
    in vain and fails); the connection it opens is the member's FakeHost. `refuse`: members
    whose handshake fails (a dead host), after the barrier."""

    fleet: FakeFleet
    barrier: threading.Barrier
    gauge: Gauge
    opened: list[str]
    refuse: set[str] = set()

    def open(self, hostname: str | None, username: str | None, password: str | None,
             port: int | None, platform: str | None, extras: dict | None = None,
             configuration: object = None) -> None:
        name = next(h.name for h in SPEC.hosts if str(h.address) == hostname)
        self.opened.append(name)
        with self.gauge.inside():
            self.barrier.wait()
        if name in self.refuse:
            raise ConnectionFailed(name, f"{hostname}: timed out after 10s")
        self.connection = self.fleet.host(name)

    def close(self) -> None:
        pass


@pytest.fixture
def handshaking(fleet: FakeFleet, members: dict[str, ShellMember],
                monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Connections opened through `Handshaking` (not pre-installed fakes) by the Nornir objects
    of `handshaking_nornir`; returns the log of lock commands as they reached the members:
    "member: acquire" / "member: release"."""
    tries: list[str] = []
    for name, member in members.items():
        def logged(host: FakeHost, command: str, stdin: bytes | None,
                   member: ShellMember = member) -> tuple:
            tries.append(f"{host.name}: {'acquire' if ' ln ' in command else 'release'}")
            return member(host, command, stdin)
        fleet.hosts[name].handler = logged
    monkeypatch.setattr(Handshaking, "fleet", fleet, raising=False)
    monkeypatch.setattr(Handshaking, "barrier", threading.Barrier(len(MEMBERS), timeout=3),
                        raising=False)
    monkeypatch.setattr(Handshaking, "gauge", Gauge(), raising=False)
    monkeypatch.setattr(Handshaking, "opened", [], raising=False)
    monkeypatch.setattr(Handshaking, "refuse", set())
    return tries


def handshaking_nornir(monkeypatch: pytest.MonkeyPatch):  # noqa: ANN201
    """A Nornir on the lab inventory whose connections open through `Handshaking` (opening a
    Nornir registers the real plugin: put in place after it)."""
    available = ConnectionPluginRegister.available
    monkeypatch.setitem(available, CONNECTION_NAME, K8shaSSH)
    nr = open_nornir(LAB_INVENTORY)
    monkeypatch.setitem(available, CONNECTION_NAME, Handshaking)
    return nr


def test_the_members_connections_open_at_once_the_tries_go_in_name_order_and_stop_at_a_conflict(
        members: dict[str, ShellMember], handshaking: list[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    held = L.acquire(handshaking_nornir(monkeypatch), SPEC, "deploy")
    assert held.members == MEMBERS and held.unreachable == {}
    assert Handshaking.gauge.peak == len(MEMBERS)  # every handshake in flight at once
    assert handshaking == [f"{m}: acquire" for m in MEMBERS]  # then tried one at a time
    Handshaking.barrier = threading.Barrier(1)  # release opens its connections one by one
    L.release(handshaking_nornir(monkeypatch), held)
    assert all(m.holder() is None for m in members.values())

    handshaking.clear()
    Handshaking.barrier = threading.Barrier(len(MEMBERS), timeout=3)
    plant(members, other_operator(), on=["etcd2"])
    with pytest.raises(OperationLocked, match="locked by alice@ws-alice .*lock file on etcd2"):
        L.acquire(handshaking_nornir(monkeypatch), SPEC, "deploy")
    # etcd2's conflict stopped the attempt: etcd3 (connected) was never tried, etcd1 given back
    assert handshaking == ["etcd1: acquire", "etcd2: acquire", "etcd1: release"]
    assert members["etcd1"].holder() is None and members["etcd3"].holder() is None


def test_a_member_whose_handshake_fails_is_unreachable_without_a_second_handshake(
        members: dict[str, ShellMember], handshaking: list[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    Handshaking.refuse = {"etcd1"}
    held = L.acquire(handshaking_nornir(monkeypatch), SPEC, "etcd replace etcd1")
    assert held.members == ["etcd2", "etcd3"]
    assert held.unreachable == {"etcd1": "etcd1: cannot connect: 10.88.0.31: timed out after 10s"}
    assert sorted(Handshaking.opened) == MEMBERS  # etcd1's connect timeout paid once
    assert handshaking == ["etcd2: acquire", "etcd3: acquire"]


def test_release_reaches_the_members_at_once(fleet: FakeFleet,
                                             members: dict[str, ShellMember]) -> None:
    held = L.acquire(nornir(fleet), SPEC, "deploy")
    together = threading.Barrier(len(MEMBERS), timeout=3)  # one after the other: broken

    def meet(*_: object) -> None:
        together.wait()  # then the member's shell runs it

    for m in MEMBERS:
        fleet.host(m).on("rm -f", meet)
    said: list[str] = []
    L.release(nornir(fleet), held, say=said.append)
    assert said == [] and all(m.holder() is None for m in members.values())
