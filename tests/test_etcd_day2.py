"""`etcd backup|backups|restore` on the fake fleet: which member, which commands, what lands in
the state dir, and the refusals (exit 2, nothing touched). The real etcd tools are proven in
test_etcd_real.py."""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from nornir_k8sha import constants as C
from nornir_k8sha.cli import app
from nornir_k8sha.cli import etcd as cli_etcd
from nornir_k8sha.inventory import open_nornir
from nornir_k8sha.pki import ClusterPKI
from nornir_k8sha.tasks import etcd
from nornir_k8sha.tasks import etcd_backup as B
from nornir_k8sha.tasks import etcd_replace as X
from nornir_k8sha.tasks import etcd_restore as R
from nornir_k8sha.testing import FakeFleet, FakeUnit, install_fake
from nornir_k8sha.topology import load_cluster_spec

from .conftest import LAB_INVENTORY, FakeTime

SPEC = load_cluster_spec(LAB_INVENTORY)
MEMBERS = [m.name for m in SPEC.role(C.ROLE_ETCD)]
IDS = {name: str(100 + i) for i, name in enumerate(MEMBERS)}


def fake_snapshot(revision: int = 42) -> bytes:
    """Bytes that pass the local bbolt check: the magic at byte 16, like etcd's files."""
    return b"\0" * 16 + struct.pack("<I", 0xED0CDAED) + os.urandom(64)


STATUS = {"hash": 1729428979, "revision": 42, "totalKey": 7, "totalSize": 20480}


def etcd_api(healthy: set[str], leader: str) -> httpx.MockTransport:
    """The members' HTTP API as etcd.check reads it: `healthy` answer, the rest refuse."""
    by_address = {str(m.address): m.name for m in SPEC.role(C.ROLE_ETCD)}

    def answer(request: httpx.Request) -> httpx.Response:
        name = by_address[request.url.host]
        if name not in healthy:
            raise httpx.ConnectError("connection refused", request=request)
        if request.url.path == "/health":
            return httpx.Response(200, json={"health": "true"})
        if request.url.path == "/v3/maintenance/status":
            return httpx.Response(200, json={"header": {"member_id": IDS[name]},
                                             "leader": IDS[leader], "dbSize": "20480"})
        return httpx.Response(200, json={"members": [{"name": n} for n in MEMBERS]})

    return httpx.MockTransport(answer)


def snapshotting(fleet: FakeFleet, data: bytes) -> None:
    """Every member writes `data` on `snapshot save` and reports STATUS on `snapshot status`."""
    for name in MEMBERS:
        host = fleet.host(name)
        host.on(r"snapshot save", lambda h, *_: h.write(C.ETCD_SNAPSHOT_TMP, data, 0o600) or "")
        host.on(r"snapshot status", stdout=json.dumps(STATUS))


@pytest.fixture
def cli(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> tuple[CliRunner, FakeFleet]:
    """The CLI on the fake fleet, run from an empty working dir (the state dir lands there)."""
    fleet = FakeFleet()

    def opener(directory: Path, **kw: object) -> object:
        nr = open_nornir(directory, **kw)
        install_fake(nr, fleet)
        return nr

    monkeypatch.setattr(cli_etcd, "open_nornir", opener)
    monkeypatch.setattr(cli_etcd, "HTTP_TRANSPORT", etcd_api(set(MEMBERS), "etcd2"))
    monkeypatch.chdir(tmp_path)
    return CliRunner(), fleet


def work(fleet: FakeFleet, name: str) -> list[str]:
    """The commands run on a host, the cluster lock's own (tasks/hostlock.py) left out."""
    return [c for c in fleet.host(name).commands() if C.HOST_LOCK_FILE not in c]


def inv() -> list[str]:
    return ["-i", str(LAB_INVENTORY)]


# --- backup -----------------------------------------------------------------------------------


def test_backup_snapshots_the_leader_checks_it_and_keeps_it_private(cli: tuple) -> None:
    runner, fleet = cli
    data = fake_snapshot()
    snapshotting(fleet, data)
    done = runner.invoke(app, ["etcd", "backup", *inv()])
    assert done.exit_code == 0, done.output
    assert "from etcd2" in done.output and "revision 42" in done.output
    # the leader saved, checked with etcd's own tool, and its copy was removed
    cmds = work(fleet, "etcd2")
    assert [c.split(" snapshot ")[-1].split()[0] for c in cmds if " snapshot " in c] == [
        "save", "status"]
    assert any(f"--cert {C.ETCD_SERVER_CERT}" in c and "https://127.0.0.1:2379" in c
               for c in cmds)
    assert fleet.host("etcd2").writes()[-1] == C.ETCD_SNAPSHOT_TMP  # removed after the copy
    assert C.ETCD_SNAPSHOT_TMP not in fleet.host("etcd2").files
    assert work(fleet, "etcd1") == [] == work(fleet, "etcd3")
    saved = list((SPEC.state_dir / C.STATE_BACKUPS_DIR).glob("etcd-*-etcd2.db"))
    assert len(saved) == 1 and saved[0].read_bytes() == data
    assert saved[0].stat().st_mode & 0o777 == 0o600
    meta = json.loads(saved[0].with_suffix(".json").read_text())
    assert meta["member"] == "etcd2" and meta["revision"] == 42 and meta["total_keys"] == 7
    assert B.verify_local(saved[0])[0].sha256 == meta["sha256"]


def test_backup_without_a_healthy_leader_takes_a_healthy_follower(
        cli: tuple, monkeypatch: pytest.MonkeyPatch) -> None:
    runner, fleet = cli
    snapshotting(fleet, fake_snapshot())
    monkeypatch.setattr(cli_etcd, "HTTP_TRANSPORT", etcd_api({"etcd1", "etcd3"}, "etcd2"))
    done = runner.invoke(app, ["etcd", "backup", *inv(), "--json"])
    assert done.exit_code == 0, done.output
    assert json.loads(done.output)["member"] == "etcd1"


def test_backup_fails_when_no_member_is_healthy_and_stores_nothing(
        cli: tuple, monkeypatch: pytest.MonkeyPatch) -> None:
    runner, fleet = cli
    monkeypatch.setattr(cli_etcd, "HTTP_TRANSPORT", etcd_api(set(), "etcd1"))
    done = runner.invoke(app, ["etcd", "backup", *inv()])
    assert done.exit_code == 1 and "no healthy etcd member" in done.output
    assert all(work(fleet, n) == [] for n in MEMBERS)
    assert not (SPEC.state_dir / C.STATE_BACKUPS_DIR).exists()


def test_a_snapshot_etcd_cannot_read_is_not_reported_good(cli: tuple) -> None:
    runner, fleet = cli
    snapshotting(fleet, fake_snapshot())
    fleet.host("etcd2").on(r"snapshot status", stdout="",
                           stderr="Error: snapshot file integrity check failed", exit_code=1)
    done = runner.invoke(app, ["etcd", "backup", *inv()])
    assert done.exit_code == 1 and "integrity check failed" in done.output
    assert B.list_backups(SPEC.state_dir) == []


def test_backups_keeps_the_newest_n_and_lists_them_oldest_first(tmp_path: Path) -> None:
    status = B.SnapshotStatus(1, 5, 3, 100)
    for i in range(7):
        B.store(tmp_path, "etcd1", fake_snapshot(), status, now=1_700_000_000 + 60 * i)
    gone = B.prune(tmp_path, 5)
    assert len(gone) == 2 and all(not p.exists() and not p.with_suffix(".json").exists()
                                  for p in gone)
    kept = B.list_backups(tmp_path)
    assert [b.taken for b in kept] == sorted(b.taken for b in kept) and len(kept) == 5
    assert kept[0].taken == "2023-11-14T22:15:20Z"  # the third one taken: two oldest pruned


def test_two_backups_in_one_second_are_two_files(tmp_path: Path) -> None:
    """The lab test took 6 backups in 5 s: names to the second made two of them one file."""
    status = B.SnapshotStatus(1, 5, 3, 100)
    first = B.store(tmp_path, "etcd1", fake_snapshot(), status, now=1_700_000_000.120)
    second = B.store(tmp_path, "etcd1", fake_snapshot(), status, now=1_700_000_000.870)
    assert first.path != second.path
    assert [b.path for b in B.list_backups(tmp_path)] == [first.path, second.path]


def test_backups_command_lists_json(cli: tuple) -> None:
    runner, fleet = cli
    snapshotting(fleet, fake_snapshot())
    assert runner.invoke(app, ["etcd", "backup", *inv()]).exit_code == 0
    listed = runner.invoke(app, ["etcd", "backups", *inv(), "--json"])
    assert listed.exit_code == 0
    (only,) = json.loads(listed.output)
    assert only["member"] == "etcd2" and only["revision"] == 42


# --- restore ----------------------------------------------------------------------------------


def a_backup(data: bytes | None = None) -> Path:
    status = B.SnapshotStatus(STATUS["hash"], STATUS["revision"], STATUS["totalKey"], 20480)
    return B.store(SPEC.state_dir, "etcd2", data or fake_snapshot(), status).path


def untouched(fleet: FakeFleet) -> bool:
    """Nothing but the cluster lock (taken and released) happened on any member."""
    return all(work(fleet, n) == [] and not fleet.host(n).writes() for n in MEMBERS)


@pytest.fixture
def waits(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The waits after the start, recorded instead of polled."""
    seen: list[str] = []
    monkeypatch.setattr(R.etcd, "wait_for_quorum",
                        lambda *a, **k: seen.append("quorum") or 3)
    monkeypatch.setattr(R.kubeadm, "wait_for_api", lambda *a, **k: seen.append("api"))
    return seen


def test_restore_runs_each_step_on_every_member_with_a_new_token(
        cli: tuple, monkeypatch: pytest.MonkeyPatch, waits: list[str]) -> None:
    runner, fleet = cli
    snapshotting(fleet, b"")
    monkeypatch.setattr(cli_etcd, "HTTP_TRANSPORT", etcd_api({"etcd1"}, "etcd1"))  # no quorum
    source = a_backup()
    done = runner.invoke(app, ["etcd", "restore", *inv(), "--from", str(source)])
    assert done.exit_code == 0, done.output
    cluster = SPEC.etcd_initial_cluster()
    for m in SPEC.role(C.ROLE_ETCD):
        calls = [c for c in fleet.host(m.name).calls if C.HOST_LOCK_FILE not in c.command]
        assert calls, (m.name, done.output)
        assert calls[0].op == "put" and calls[0].path == C.ETCD_RESTORE_TMP
        assert calls[0].mode == 0o600
        cmds = work(fleet, m.name)
        token = cmds[3].split("--initial-cluster-token ")[1].split()[0]
        assert token.startswith("k8sha-etcd-restore-") and token != SPEC.settings.etcd.cluster_token
        aside = cmds[2].split()[-2].rstrip(";")
        assert cmds == [
            f"ETCDCTL_API=3 etcdctl snapshot status {C.ETCD_RESTORE_TMP} -w json",
            "systemctl stop etcd",
            f"if [ -e /var/lib/etcd ]; then mv /var/lib/etcd {aside}; fi",
            f"ETCDCTL_API=3 etcdctl snapshot restore {C.ETCD_RESTORE_TMP} --name {m.name} "
            f"--initial-cluster {cluster} --initial-cluster-token {token} "
            f"--initial-advertise-peer-urls https://{m.address}:2380 --data-dir /var/lib/etcd",
            f"rm -f {C.ETCD_RESTORE_TMP}",
            "systemctl start --no-block etcd",
        ]
        assert aside.startswith("/var/lib/etcd.before-restore-")
    assert waits == ["quorum"]  # no admin.conf here: no control plane to wait for
    assert "new cluster token" in done.output and "restore every data dir" in done.output


def test_restore_waits_for_the_api_when_there_is_a_control_plane(
        cli: tuple, monkeypatch: pytest.MonkeyPatch, waits: list[str]) -> None:
    runner, fleet = cli
    snapshotting(fleet, b"")
    (SPEC.state_dir).mkdir(parents=True, exist_ok=True)
    (SPEC.state_dir / C.STATE_ADMIN_KUBECONFIG).write_text("kubeconfig")
    source = a_backup()
    done = runner.invoke(app, ["etcd", "restore", *inv(), "--from", str(source), "--force"])
    assert done.exit_code == 0, done.output
    assert waits == ["quorum", "api"] and "through the VIP" in done.output


def test_restore_refuses_a_healthy_cluster_without_force(cli: tuple, waits: list[str]) -> None:
    runner, fleet = cli
    done = runner.invoke(app, ["etcd", "restore", *inv(), "--from", str(a_backup())])
    assert done.exit_code == 2 and "--force" in done.output and "3 members up" in done.output
    assert untouched(fleet) and waits == []


@pytest.mark.parametrize("case", ["missing", "not-a-snapshot", "tampered", "no-sidecar"])
def test_restore_refuses_bad_snapshots_naming_the_file(cli: tuple, case: str) -> None:
    runner, fleet = cli
    source = a_backup()
    if case == "missing":
        source = source.with_name("etcd-nope.db")
    elif case == "not-a-snapshot":
        source.write_bytes(b"hello, I am a text file, not a bbolt database\n" * 4)
    elif case == "tampered":
        source.write_bytes(source.read_bytes() + b"x")
    else:
        source.with_suffix(".json").unlink()
    done = runner.invoke(app, ["etcd", "restore", *inv(), "--from", str(source), "--force"])
    assert done.exit_code == 2, done.output
    assert source.name in done.output and "nothing was touched" in done.output
    assert untouched(fleet)


def test_a_member_reading_another_revision_stops_the_restore_before_any_stop(
        cli: tuple, monkeypatch: pytest.MonkeyPatch, waits: list[str]) -> None:
    runner, fleet = cli
    snapshotting(fleet, b"")
    fleet.host("etcd3").on(r"snapshot status", stdout=json.dumps({**STATUS, "revision": 41}))
    source = a_backup()
    done = runner.invoke(app, ["etcd", "restore", *inv(), "--from", str(source), "--force"])
    assert done.exit_code == 1 and "etcd3" in done.output and "revision 41" in done.output
    assert all("systemctl stop etcd" not in work(fleet, n) for n in MEMBERS)
    assert waits == []


# --- the members' snapshot timer ----------------------------------------------------------------


def test_deploy_installs_and_starts_the_snapshot_timer_then_changes_nothing(
        tmp_path: Path) -> None:
    fleet = FakeFleet(debian=True)
    fleet.host("etcd1").debian.units["etcd"] = FakeUnit()
    ClusterPKI(SPEC, tmp_path).ensure()
    nr = open_nornir(LAB_INVENTORY).filter(name="etcd1")
    install_fake(nr, fleet)
    first = nr.run(task=etcd.configure, spec=SPEC, state_dir=tmp_path)["etcd1"]
    assert not first.failed, first[0].exception
    host = fleet.host("etcd1")
    timer = host.debian.units[C.ETCD_BACKUP_TIMER_UNIT]
    assert timer.enabled and timer.active
    assert host.modes[C.ETCD_BACKUP_SCRIPT] == 0o755
    assert f"keep={SPEC.settings.etcd.backup_keep_on_host}\n" in host.read(C.ETCD_BACKUP_SCRIPT)
    assert any(c.startswith("bash -n ") for c in host.commands())  # validated before the swap
    again = nr.run(task=etcd.configure, spec=SPEC, state_dir=tmp_path)["etcd1"]
    assert not again.failed and not again[0].changed, again[0].result
    assert timer.starts == 1 and timer.restarts == 0


# --- replace: the refusals (the sequence itself runs on real etcd in test_etcd_real.py) ---------


def test_replace_refuses_an_unknown_member(cli: tuple) -> None:
    runner, fleet = cli
    done = runner.invoke(app, ["etcd", "replace", "etcd9", *inv()])
    assert done.exit_code == 2 and "'etcd9' is not an etcd member" in done.output
    assert untouched(fleet)


def test_replace_without_quorum_says_restore(cli: tuple, monkeypatch: pytest.MonkeyPatch,
                                             fake_time: FakeTime) -> None:
    runner, fleet = cli
    monkeypatch.setattr(cli_etcd, "HTTP_TRANSPORT", etcd_api({"etcd1"}, "etcd1"))
    done = runner.invoke(app, ["etcd", "replace", "etcd2", *inv(), "--force"])
    assert done.exit_code == 2 and "etcd restore" in done.output, done.output
    assert fake_time.now >= C.ETCD_QUORUM_SETTLE_S  # asked again for a while first
    assert untouched(fleet)


def test_replace_waits_for_the_others_to_elect_a_leader_before_judging_quorum(
        cli: tuple, monkeypatch: pytest.MonkeyPatch, fake_time: FakeTime) -> None:
    """Right after a power cut of the leader, the others answer /health false ("no leader")
    for an election or two: seen in CI as a refusal with "0 other member(s) healthy"."""
    runner, fleet = cli
    healthy = etcd_api(set(MEMBERS), "etcd1")
    rounds = {"health": 0}

    def electing(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/health":
            rounds["health"] += 1
            if rounds["health"] <= 2 * len(MEMBERS):  # two rounds without a leader
                return httpx.Response(503, json={"health": "false", "reason": "RAFT NO LEADER"})
        return healthy.handle_request(request)

    monkeypatch.setattr(cli_etcd, "HTTP_TRANSPORT", httpx.MockTransport(electing))
    done = runner.invoke(app, ["etcd", "replace", "etcd2", *inv()])
    # quorum found on the third look: the verdict is then about etcd2 itself (healthy)
    assert done.exit_code == 2 and "--force" in done.output, done.output
    assert "etcd restore" not in done.output
    assert fake_time.now < C.ETCD_QUORUM_SETTLE_S
    assert untouched(fleet)


def test_replace_refuses_a_healthy_member_without_force(cli: tuple) -> None:
    runner, fleet = cli
    done = runner.invoke(app, ["etcd", "replace", "etcd3", *inv()])
    assert done.exit_code == 2 and "--force" in done.output and "etcd3" in done.output
    assert untouched(fleet)


def test_replace_prints_each_step_and_promotes_after_not_in_sync(
        cli: tuple, monkeypatch: pytest.MonkeyPatch, fake_time: FakeTime) -> None:
    runner, fleet = cli
    monkeypatch.setattr(cli_etcd, "HTTP_TRANSPORT", etcd_api({"etcd1", "etcd2"}, "etcd1"))
    monkeypatch.setattr(X.etcd, "wait_for_quorum", lambda *a, **k: 3)
    helper = fleet.host("etcd1")
    helper.on(r"member list", stdout=json.dumps({"members": [
        {"ID": 11, "name": "etcd1", "peerURLs": []}, {"ID": 12, "name": "etcd2"},
        {"ID": 255, "name": "etcd3", "peerURLs": []}]}))
    helper.on(r"member add", stdout=json.dumps({"member": {"ID": 4096, "isLearner": True}}))
    tries = iter([(1, "", "Error: etcdserver: can only promote a learner member which is in "
                          "sync with leader"), (0, "promoted", "")])
    helper.on(r"member promote", lambda *_: next(tries))
    done = runner.invoke(app, ["etcd", "replace", "etcd3", *inv()])
    assert done.exit_code == 0, done.output
    assert "as a learner" in done.output and "ff -> 1000" in done.output
    assert fake_time.slept == [1.0]  # the promotion asked again once, a second later
    steps = [c.split(" member ")[1].split()[0] for c in helper.commands() if " member " in c]
    assert steps == ["list", "remove", "add", "promote", "promote"]
    assert any(" member remove ff" in c for c in helper.commands())
    target = work(fleet, "etcd3")
    assert target[0] == "systemctl stop etcd" and "before-replace-" in target[1]
    assert "s|^initial-cluster: .*$|initial-cluster: " in target[2]  # the cluster it joins
    assert '"existing"' in target[3] and target[4] == "systemctl start --no-block etcd"
    assert f"initial-cluster: {json.dumps(SPEC.etcd_initial_cluster())}" in target[5]
    assert '"new"/' in target[6].split("s/^")[1]  # the rendered config again


# --- the restore-drill runbook's tasks ----------------------------------------------------------


def test_the_restore_drill_runbook_is_valid_on_the_lab_inventory(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from nornir_k8sha.cli import runbook as cli_runbook

    # the cli registers the lab's power cuts for the lab inventory: not beyond this test
    monkeypatch.setattr(cli_runbook, "register_lab_faults", lambda spec: None)
    runner = CliRunner()
    done = runner.invoke(app, ["runbook", "validate", "restore-drill", "-i", str(LAB_INVENTORY)])
    assert done.exit_code == 0, done.output
    assert "1 case(s): restore-drill" in done.output


class ConfigMaps:
    """The API's ConfigMaps through the VIP, in memory (`down`: the API refuses)."""

    def __init__(self) -> None:
        self.items: dict[str, dict] = {}
        self.down = False

    def handler(self, request: httpx.Request) -> httpx.Response:
        if self.down:
            raise httpx.ConnectError("connection refused", request=request)
        name = request.url.path.rsplit("/", 1)[1]
        if request.method == "POST":
            body = json.loads(request.content)
            self.items[body["metadata"]["name"]] = body
            return httpx.Response(201, json=body)
        if request.method == "DELETE":
            return httpx.Response(200 if self.items.pop(name, None) else 404, json={})
        return httpx.Response(200 if name in self.items else 404, json=self.items.get(name, {}))


def test_drill_markers_backup_destroy_and_one_restore_plan_for_every_member(
        tmp_path: Path) -> None:
    from nornir_k8sha.tasks import etcd_drill as D

    fleet = FakeFleet()
    snapshotting(fleet, fake_snapshot())
    nr = open_nornir(LAB_INVENTORY)
    install_fake(nr, fleet)
    api = ConfigMaps()
    t = httpx.MockTransport(api.handler)
    ClusterPKI(SPEC, tmp_path).ensure()
    kw = {"spec": SPEC, "state_dir": tmp_path}
    one = nr.filter(name="etcd2")
    assert not one.run(task=D.write_markers, count=3, transport=t, **kw).failed
    assert len(api.items) == 3
    assert not one.run(task=D.backup, **kw).failed
    assert len(B.list_backups(tmp_path)) == 1
    majority = nr.filter(filter_func=lambda h: h.name in ("etcd1", "etcd2"))
    assert not majority.run(task=D.destroy_member, **kw).failed
    assert any("mv /var/lib/etcd /var/lib/etcd.before-drill" in c
               for c in work(fleet, "etcd1"))
    members = nr.filter(filter_func=lambda h: h.name in MEMBERS)
    for step in (D.upload_snapshot, D.restore_member):
        agg = members.run(task=step, **kw)
        assert not agg.failed, {n: m[0].exception for n, m in agg.items()}
    tokens = {c.split("--initial-cluster-token ")[1].split()[0]
              for m in MEMBERS for c in work(fleet, m) if "snapshot restore" in c}
    assert len(tokens) == 1 and next(iter(tokens)).startswith("k8sha-etcd-restore-")
    good = one.run(task=D.markers, transport=t, **kw)["etcd2"][0].result
    assert good.ok and "all 3 markers written before the backup are back" in good.message
    api.items.pop(next(iter(api.items)))  # one marker lost: the probe must say so
    probe = one.run(task=D.markers, transport=t, **kw)["etcd2"][0].result
    assert not probe.ok and "missing: k8sha-drill-" in probe.message
    assert probe.values["recovered_s"] is not None
