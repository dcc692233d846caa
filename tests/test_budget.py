"""The SSH connection budget: a deploy never works more connections at once than
`ssh.max_connections`, handshakes to one address stay under sshd's MaxStartups, and the report
says what the run cost (peak connections, peak RSS)."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from nornir.core.configuration import Config
from nornir.core.inventory import Defaults, Host
from nornir.core.plugins.connections import ConnectionPluginRegister
from nornir.core.task import Result, Task
from pydantic import ValidationError

from nornir_k8sha import constants as C
from nornir_k8sha.budget import BUDGET, ConnectionBudget, measured
from nornir_k8sha.deploy import DeployContext, NornirPhase, run_stages
from nornir_k8sha.inventory import open_nornir
from nornir_k8sha.report import RunReport
from nornir_k8sha.settings import ClusterSettings
from nornir_k8sha.tasks import host as H
from nornir_k8sha.testing import FakeFleet, Gauge, LatencyModel, install_fake
from nornir_k8sha.topology import load_cluster_spec
from nornir_k8sha.transport import CONNECTION_NAME

from .conftest import InventoryFactory

LIMIT = C.MIN_MAX_SSH_CONNECTIONS
#: Short sleeps so that calls overlap (what is counted is overlap, never time).
QUICK = LatencyModel(connect=0.02, exec=0.03, per_command=0.0, sftp=0.01)


class Busy(NornirPhase):
    """Three round trips on every Linux host."""

    roles = C.LINUX_ROLES

    def __init__(self, name: str) -> None:
        self.name = self.title = name

    def task(self, task: Task, ctx: DeployContext) -> Result:
        conn = H.connect(task)
        conn.run("true")
        conn.run_batch(["true", "true"])
        conn.get("/etc/hostname")
        return Result(host=task.host)


def test_a_stage_never_works_more_connections_at_once_than_the_budget(
        make_inventory: InventoryFactory) -> None:
    def tight(hosts: dict, groups: dict, defaults: dict) -> None:
        defaults["data"]["ssh"] = {"max_connections": LIMIT}
        for i in range(1, 11):  # 25 Linux hosts: two phases could work 2 x 10 at once
            hosts[f"worker{i + 10}"] = {**hosts["worker1"], "hostname": f"10.88.0.{150 + i}"}

    inventory = make_inventory(tight)
    spec = load_cluster_spec(inventory)
    nr = open_nornir(inventory)
    fleet = install_fake(nr, FakeFleet(latency=QUICK))
    ctx = DeployContext(spec, nr, RunReport("deploy", spec.name))
    report = run_stages(ctx, [[Busy("one"), Busy("two")]])
    assert report.exit_code == 0
    assert nr.runner.num_workers == LIMIT  # Nornir's workers follow the setting
    assert 1 < fleet.gauge.peak <= LIMIT, fleet.gauge.peak
    assert fleet.gauge.peak <= report.resources["peak_connections"] <= LIMIT
    linux = [h.name for h in spec.hosts if not h.has_role(C.ROLE_SWITCHES)]
    # idle connections stay open for the next phase (and count as open)
    assert report.resources["peak_open_connections"] >= len(linux)
    assert report.resources["peak_rss_mb"] > 0
    assert {fleet.host(h).round_trips for h in linux} == {2 * 3}


class SlowOpen:
    """A `k8sha_ssh` plugin whose handshake takes a while and records how many are in flight
    per address."""

    gauges: dict[str, Gauge] = {}
    lock = threading.Lock()

    def open(self, hostname: str | None, username: str | None, password: str | None,
             port: int | None, platform: str | None, extras: dict[str, Any] | None = None,
             configuration: Config | None = None) -> None:
        with self.lock:
            gauge = self.gauges.setdefault(f"{hostname}:{port}", Gauge())
        with gauge.inside():
            time.sleep(0.05)
        self.connection = self

    def close(self) -> None:
        pass


def test_handshakes_to_one_address_stay_under_sshd_maxstartups(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """30 inventory hosts behind one address:port (a bastion's forwarded port, say): never
    more than MaxStartups' `start` (10) unauthenticated connections to it at once."""
    monkeypatch.setitem(ConnectionPluginRegister.available, CONNECTION_NAME, SlowOpen)
    monkeypatch.setattr(BUDGET, "_limit", 100)  # room for all 31 at once but for the cap
    SlowOpen.gauges = {}
    hosts = [Host(f"node{i}", hostname="192.0.2.10", port=2222, defaults=Defaults())
             for i in range(30)] + [Host("other", hostname="192.0.2.11", port=22,
                                         defaults=Defaults())]
    with ThreadPoolExecutor(max_workers=len(hosts)) as pool:
        list(pool.map(lambda h: H.open_connection(h, Config()), hosts))
    shared = SlowOpen.gauges["192.0.2.10:2222"]
    assert 1 < shared.peak <= C.SSHD_MAXSTARTUPS_START, shared.peak
    assert SlowOpen.gauges["192.0.2.11:22"].peak == 1
    for h in hosts:
        BUDGET.closed(h.connections[CONNECTION_NAME].connection)


def test_the_budget_is_reentrant_and_follows_a_new_limit() -> None:
    budget = ConnectionBudget(limit=1)
    with budget.working(), budget.working():  # one operation made of others: one slot
        assert budget.peak_working == 1
    entered = threading.Event()

    def second() -> None:
        with budget.working():
            entered.set()

    with budget.working():
        worker = threading.Thread(target=second)
        worker.start()
        assert not entered.wait(0.1)  # the only slot is taken
        budget.set_limit(2)
        assert entered.wait(5)
    worker.join()
    assert budget.peak_working == 2


def test_a_budget_below_ten_is_refused_naming_the_field() -> None:
    with pytest.raises(ValidationError) as err:
        ClusterSettings(vip="10.0.0.100", ssh={"max_connections": 4})
    assert "ssh.max_connections" in str(err.value).replace("\n", ".")


def test_a_run_inside_a_run_adds_to_its_figures() -> None:
    """The post-checks run `check` inside the deploy: the deploy's peaks stay the deploy's."""
    budget = ConnectionBudget(limit=50)
    with measured(None, 50, budget) as outer:
        with budget.working():
            budget.opened(holder := Gauge())
        with measured(None, 50, budget) as inner:  # does not reset the outer run's peaks
            pass
    assert inner["peak_connections"] == 1 and inner["peak_open_connections"] == 1
    assert outer["peak_connections"] == 1 and outer["peak_open_connections"] == 1
    budget.closed(holder)
    with measured(None, 50, budget) as fresh:
        pass
    assert fresh["peak_connections"] == 0 and fresh["peak_open_connections"] == 0


def test_only_connections_that_needed_a_handshake_count_as_handshakes() -> None:
    """A connection that rode a persistent master says so (`handshake` False): the report's
    `handshakes` is what the run really cost the hosts' sshd."""

    class Conn:
        def __init__(self, handshake: bool | None) -> None:
            if handshake is not None:
                self.handshake = handshake

    budget = ConnectionBudget()
    held = [Conn(None), Conn(True), Conn(False), Conn(False)]  # None: paramiko-era, counts
    for c in held:
        budget.opened(c)
    assert budget.snapshot()["handshakes"] == 2
    budget.reset_peaks()
    budget.opened(Conn(False))
    assert budget.snapshot()["handshakes"] == 0 and budget.snapshot()["peak_open_connections"] == 5


def test_a_runs_handshakes_include_the_connections_opened_just_before_it() -> None:
    """A deploy's cluster lock opens its connections to the etcd members before the phases'
    run starts: the report counts them; the next run does not count them again."""

    class Conn:
        handshake = True

    budget = ConnectionBudget(limit=50)
    lock = [Conn(), Conn(), Conn()]  # the lock's three members, before the run
    for c in lock:
        budget.opened(c)
    with measured(None, 50, budget) as first:
        budget.opened(phase := Conn())
        with measured(None, 50, budget) as inner:  # the post-checks: part of the deploy
            pass
    assert first["handshakes"] == 4 and inner["handshakes"] == 4
    with measured(None, 50, budget) as second:  # the next run rides what is open
        pass
    assert second["handshakes"] == 0
    for c in (*lock, phase):
        budget.closed(c)
