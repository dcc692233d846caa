"""`runbook validate|list|run` and `verify` from the command line: exit codes and messages;
nothing touches a host (the fake fleet and a patched Nornir record every command)."""

from __future__ import annotations

from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from nornir_k8sha.cli import app as command_line
from nornir_k8sha.cli import runbook as cli_runbook
from nornir_k8sha.inventory import open_nornir
from nornir_k8sha.oplock import operation_lock
from nornir_k8sha.runbook import seams
from nornir_k8sha.testing import FakeFleet, install_fake
from nornir_k8sha.topology import load_cluster_spec

from .conftest import LAB_INVENTORY

runner = CliRunner()


@pytest.fixture(autouse=True)
def _no_lab_faults_left_behind():  # noqa: ANN202
    """The cli registers the lab's power cuts for the lab inventory: not beyond a test."""
    before = set(seams.names())
    yield
    for name in set(seams.names()) - before:
        seams.unregister(name)


@pytest.fixture
def app() -> typer.Typer:
    """The real command line (runbook and verify are registered in cli/commands.py)."""
    return command_line


@pytest.fixture
def fleet(monkeypatch: pytest.MonkeyPatch) -> FakeFleet:
    """Every Nornir the cli opens talks to this fake fleet."""
    fleet = FakeFleet()

    def opened(directory: Path | str):  # noqa: ANN202
        nr = open_nornir(directory)
        install_fake(nr, fleet)
        return nr

    monkeypatch.setattr(cli_runbook, "open_nornir", opened)
    return fleet


@pytest.mark.parametrize("name", ["verify-ha", "haproxy-maintenance",
                                  "runbooks/haproxy-maintenance.yaml"])
def test_validate_the_shipped_runbooks(app, name: str) -> None:
    result = runner.invoke(app, ["runbook", "validate", name])
    assert result.exit_code == 0, result.output
    assert "valid" in result.output


def test_validate_against_an_inventory_names_the_line(app, tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("title: x\nmethod:\n  - task: faults.stop_service\n    hosts: role:db\n"
                    "    args: {unit: x}\n")
    result = runner.invoke(app, ["runbook", "validate", str(path)])
    assert result.exit_code == 0, result.output  # well formed
    result = runner.invoke(app, ["runbook", "validate", str(path), "-i", str(LAB_INVENTORY)])
    assert result.exit_code == 2
    assert f"{path}:4: method[0].hosts: no host has role 'db'" in result.output


def test_validate_a_broken_file_exits_2(app, tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("title: x\ncases:\n  - name: a\n    method:\n      - explode: now\n")
    result = runner.invoke(app, ["runbook", "validate", str(path)])
    assert result.exit_code == 2
    assert f"{path}:5: cases[0].method[0]: unknown step kind" in result.output
    assert "nothing was touched" in result.output
    result = runner.invoke(app, ["runbook", "validate", "no-such-runbook"])
    assert result.exit_code == 2 and "built-in: " in result.output


def test_list_shows_the_built_in_runbooks(app) -> None:
    result = runner.invoke(app, ["runbook", "list"])
    assert result.exit_code == 0
    assert "verify-ha" in result.output and "haproxy-maintenance" in result.output


def test_verify_dry_run_touches_nothing(app, fleet: FakeFleet) -> None:
    result = runner.invoke(app, ["verify", "-i", str(LAB_INVENTORY), "--dry-run",
                                 "--case", "haproxy-stopped", "--case", "etcd-majority-lost"])
    assert result.exit_code == 0, result.output
    assert "2 case(s)" in result.output and "nothing was touched" in result.output
    assert "would run on etcd1, etcd2" in result.output  # pick: majority of role:etcd
    assert all(not h.calls for h in fleet.hosts.values())


def test_a_lab_case_on_a_real_inventory_is_refused_up_front(app, fleet, make_inventory) -> None:
    inv = make_inventory(lambda h, g, d: d["data"].update(cluster_name="prod"))
    result = runner.invoke(app, ["verify", "-i", str(inv), "--yes", "--case",
                                 "director-power-cut"])
    assert result.exit_code == 2
    assert "lab-only fault 'power_off' on cluster 'prod'" in result.output
    assert all(not h.calls for h in fleet.hosts.values())


def test_a_disruptive_runbook_on_a_real_inventory_needs_yes(app, fleet, make_inventory) -> None:
    inv = make_inventory(lambda h, g, d: d["data"].update(cluster_name="prod"))
    result = runner.invoke(app, ["verify", "-i", str(inv), "--case", "haproxy-stopped"])
    assert result.exit_code == 2 and "pass --yes" in result.output
    assert all(not h.calls for h in fleet.hosts.values())


def test_an_invalid_inventory_exits_2(app, fleet, make_inventory) -> None:
    inv = make_inventory(lambda h, g, d: h.pop("etcd3"))
    result = runner.invoke(app, ["runbook", "run", "haproxy-maintenance", "-i", str(inv)])
    assert result.exit_code == 2 and "etcd" in result.output
    assert all(not h.calls for h in fleet.hosts.values())


def test_the_cluster_busy_with_a_deploy_exits_1_naming_it(app, fleet, monkeypatch,
                                                           tmp_path) -> None:
    monkeypatch.chdir(tmp_path)  # the state dir .k8sha/lab/ lives under the working dir
    monkeypatch.setattr(cli_runbook, "_instruments", lambda: None)
    with operation_lock(Path(".k8sha/lab"), "deploy"):
        result = runner.invoke(app, ["verify", "-i", str(LAB_INVENTORY), "--case",
                                     "haproxy-stopped"])
    assert result.exit_code == 1 and "deploy" in result.output
    assert all(not h.calls for h in fleet.hosts.values())


def test_bad_var_exits_2(app) -> None:
    result = runner.invoke(app, ["runbook", "validate", "haproxy-maintenance", "--var", "x"])
    assert result.exit_code == 2 and "NAME=VALUE" in result.output
    result = runner.invoke(app, ["runbook", "validate", "haproxy-maintenance", "--var",
                                 "node=haproxy2"])
    assert result.exit_code == 0


@pytest.mark.parametrize("bound,says", [
    ("apiserver-stopped", "write CASE=SECONDS"), ("apiserver-stopped=soon", "write CASE=SECONDS"),
    ("apiserver-stopped=-1", "write CASE=SECONDS"),
    ("no-such-case=1", "--bound names no-such-case, which is not a case of this run")])
def test_a_bad_bound_exits_2_before_anything_runs(app, fleet, bound: str, says: str) -> None:
    result = runner.invoke(app, ["verify", "-i", str(LAB_INVENTORY), "--case",
                                 "apiserver-stopped", "--bound", bound])
    assert result.exit_code == 2 and says in result.output, result.output
    assert all(not h.calls for h in fleet.hosts.values())


@pytest.mark.parametrize("unit,code", [("haproxy", 0), ("broken", 1)])
def test_run_exits_0_when_every_case_passed_and_1_when_one_failed(
        app, fleet, monkeypatch, tmp_path, unit: str, code: int) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(cli_runbook, "_instruments", lambda: None)
    rendered = []
    monkeypatch.setattr(cli_runbook, "_render", lambda result, **kw: rendered.append(result))
    fleet.host("haproxy1").on(r"systemctl stop broken", exit_code=5, stderr="Unit broken not "
                              "found.")
    path = tmp_path / "rb.yaml"
    path.write_text("title: t\nvariables: {unit: x}\nmethod:\n"
                    "  - task: faults.stop_service\n    hosts: haproxy1\n"
                    "    args: {unit: \"${unit}\"}\n    fault: true\nrollbacks:\n"
                    "  - task: faults.start_service\n    hosts: '@fault'\n"
                    "    args: {unit: \"${unit}\"}\n")
    result = runner.invoke(app, ["runbook", "run", str(path), "-i", str(LAB_INVENTORY),
                                 "--var", f"unit={unit}"])
    assert result.exit_code == code, result.output
    (case,) = rendered[0].cases
    assert case.name == "rb" and case.verdict == ("passed" if code == 0 else "failed")
    assert f"{case.verdict} rb" in result.output  # the line each finished case leaves
    assert fleet.host("haproxy1").commands() == [f"systemctl stop {unit}",
                                                 f"systemctl start {unit}"]


class FakeLabFaults:
    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def __getattr__(self, name: str):  # noqa: ANN204
        return lambda *args, **kw: self.calls.append((name, *args, *kw.values()))


def test_the_lab_power_cuts_reach_runbooks_through_the_seam() -> None:
    spec = load_cluster_spec(LAB_INVENTORY)
    fake = FakeLabFaults()
    cli_runbook.register_lab_faults(spec, fake)
    pm1 = [h.name for h in spec.machines["pm1"]]
    assert seams.apply("power_off", spec, pm1) == "power cut: pm1"
    assert seams.apply("power_off", spec, ["lvs2"]) == "power cut: lvs2"
    seams.apply("power_on", spec, pm1)
    assert fake.calls == [("kill_machine", "pm1"), ("kill_host", "lvs2"),
                          ("restore_machine", "pm1", True)]


def test_validate_with_the_lab_inventory_accepts_the_lab_cases(app) -> None:
    result = runner.invoke(app, ["runbook", "validate", "verify-ha", "-i", str(LAB_INVENTORY)])
    assert result.exit_code == 0, result.output
    assert "machine-pm3" in result.output
