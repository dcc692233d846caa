"""`validate` as a user runs it: tables, exit codes, `--json` as the only thing on stdout."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from nornir_k8sha.cli import app

from .conftest import LAB_INVENTORY, REPO, InventoryFactory
from .test_topology import five_etcd_on_two_machines

runner = CliRunner()

TABLE_TITLES = ("roles (VIP 10.88.0.100:6443)", "etcd quorum and failure tolerance",
                "loss of one physical machine")


def validate(*args: str):  # noqa: ANN201 - click's Result
    return runner.invoke(app, ["validate", *args])


def even_etcd(h: dict, g: dict, d: dict) -> None:
    """Valid, with exactly one warning (4 etcd members tolerate what 3 do)."""
    h["etcd4"] = {"hostname": "10.88.0.34", "groups": ["etcd"],
                  "data": {"physical_host": "pm3"}}


def test_lab_is_valid_and_shows_the_tables() -> None:
    result = validate("-i", str(LAB_INVENTORY))
    assert result.exit_code == 0, result.output
    for title in TABLE_TITLES:
        assert title in result.stdout
    assert "valid: 0 warning(s)" in result.stdout
    assert "API survives" in result.stdout


def test_errors_exit_2_naming_file_host_and_field(make_inventory: InventoryFactory) -> None:
    inv = make_inventory(lambda h, g, d: h["lvs2"]["data"].update(vrrp_priority=150))
    result = validate("-i", str(inv))
    assert result.exit_code == 2
    assert "error hosts.yaml:" in result.stdout
    assert "host lvs2: field 'vrrp_priority': priority 150 is also used by lvs1" in result.stdout
    assert "invalid: 1 error(s)" in result.stdout


def test_warnings_exit_0_without_strict_and_1_with(make_inventory: InventoryFactory) -> None:
    inv = make_inventory(even_etcd)
    relaxed = validate("-i", str(inv))
    assert relaxed.exit_code == 0, relaxed.output
    assert "warning hosts.yaml: 4 etcd members tolerate 1 failure(s)" in relaxed.stdout
    assert validate("-i", str(inv), "--strict").exit_code == 1


def test_strict_on_a_clean_inventory_exits_0() -> None:
    assert validate("-i", str(LAB_INVENTORY), "--strict").exit_code == 0


def test_json_is_one_document_with_everything() -> None:
    result = validate("-i", str(LAB_INVENTORY), "--json")
    assert result.exit_code == 0
    doc = json.loads(result.stdout)  # the whole stdout: nothing else may be printed
    assert doc["valid"] is True and doc["errors"] == [] and doc["warnings"] == []
    assert [h["name"] for h in doc["roles"]["etcd"]] == ["etcd1", "etcd2", "etcd3"]
    assert doc["roles"]["lvs"][0] == {"name": "lvs1", "address": "10.88.0.11", "machine": "pm1"}
    assert (doc["etcd"]["members"], doc["etcd"]["quorum"], doc["etcd"]["tolerates"]) == (3, 2, 1)
    assert [row["members"] for row in doc["etcd"]["table"]] == [1, 3, 5, 7]
    assert {m["machine"]: m["api_survives"] for m in doc["machine_losses"]} == {
        "pm1": True, "pm2": True, "pm3": True}


def test_json_with_findings(make_inventory: InventoryFactory) -> None:
    inv = make_inventory(five_etcd_on_two_machines)
    result = validate("-i", str(inv), "--json", "--strict")
    assert result.exit_code == 1
    doc = json.loads(result.stdout)
    losses = {m["machine"]: m for m in doc["machine_losses"]}
    assert losses["pm1"]["etcd_left"] == 2 and losses["pm1"]["etcd_quorum"] == 3
    assert losses["pm1"]["verdict"] == "cluster DOWN: etcd loses quorum"
    assert {w["rule"] for w in doc["warnings"]} == {"machine-loss", "machine-count"}


def test_json_with_errors_exits_2(make_inventory: InventoryFactory) -> None:
    inv = make_inventory(lambda h, g, d: d["data"]["vrrp"].update(bogus=1))
    result = validate("-i", str(inv), "--json")
    assert result.exit_code == 2
    doc = json.loads(result.stdout)
    assert doc["valid"] is False
    assert doc["errors"][0]["field"] == "vrrp.bogus"
    assert doc["errors"][0]["where"].startswith("defaults.yaml:")


def test_malformed_yaml_exits_2_with_file_and_line(make_inventory: InventoryFactory) -> None:
    inv = make_inventory()
    (inv / "groups.yaml").write_text("lvs: {}\nhaproxy: {\netcd: {}\n")
    result = validate("-i", str(inv))
    assert result.exit_code == 2
    assert isinstance(result.exception, SystemExit)  # no exception escaped
    assert "Traceback" not in result.output
    assert f"{inv / 'groups.yaml'}:" in result.stderr
    assert "invalid YAML" in result.stderr
    assert result.stdout == ""


def test_malformed_yaml_with_json_is_still_one_document(make_inventory: InventoryFactory
                                                       ) -> None:
    inv = make_inventory()
    (inv / "hosts.yaml").write_text("lvs1:\n  hostname: 10.88.0.11\nlvs1: {}\n")
    result = validate("-i", str(inv), "--json")
    assert result.exit_code == 2
    doc = json.loads(result.stdout)
    assert doc["valid"] is False and doc["warnings"] == []
    assert "hosts.yaml:3: invalid YAML: duplicate key 'lvs1'" in doc["errors"][0]["message"]


def test_markup_in_user_input_is_printed_literally(make_inventory: InventoryFactory) -> None:
    inv = make_inventory(lambda h, g, d: d["data"].update({"[bold]x[/bold]": 1}))
    result = validate("-i", str(inv))
    assert result.exit_code == 2
    assert "field '[bold]x[/bold]': unknown field" in result.stdout


def test_missing_inventory_dir_exits_2(tmp_path: Path) -> None:
    result = validate("-i", str(tmp_path / "none"))
    assert result.exit_code == 2
    assert "inventory directory not found" in result.stderr


def test_real_entry_point_on_the_lab() -> None:
    """`python -m nornir_k8sha validate -i inventory/lab`, as the README tells a user."""
    env = {**os.environ, "COLUMNS": "120"}
    proc = subprocess.run([sys.executable, "-m", "nornir_k8sha", "validate", "-i",
                           "inventory/lab"], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    for title in TABLE_TITLES:
        assert title in proc.stdout
    assert "Traceback" not in proc.stderr


#: Every command that reads an inventory, with the arguments it needs besides `-i DIR --json`.
INVENTORY_COMMANDS = (["validate"], ["render", "-o", "{tmp}/out"], ["pki", "--state-dir",
                      "{tmp}/state"], ["deploy", "--dry-run"], ["check"], ["reset", "--yes"])
INVALID_KEYS = {"inventory", "valid", "errors", "warnings"}
FINDING_KEYS = {"severity", "rule", "message", "where", "host", "field"}


def test_every_command_prints_one_invalid_shape(make_inventory: InventoryFactory,
                                                tmp_path: Path) -> None:
    """Broken rules and unreadable YAML: exit 2, the same JSON keys from every command, the
    findings as objects, and nothing written."""
    broken = make_inventory(lambda h, g, d: h.pop("etcd3"))
    unreadable = tmp_path / "unreadable"
    unreadable.mkdir()
    for name in ("hosts.yaml", "groups.yaml", "defaults.yaml"):
        (unreadable / name).write_text((broken / name).read_text())
    (unreadable / "hosts.yaml").write_text("lvs1: {\n")
    for inv, rule in ((broken, None), (unreadable, "inventory")):
        for command in INVENTORY_COMMANDS:
            args = [a.format(tmp=tmp_path) for a in command]
            result = runner.invoke(app, [*args, "-i", str(inv), "--json"])
            assert result.exit_code == 2, (command, result.output)
            doc = json.loads(result.stdout)
            assert INVALID_KEYS <= set(doc), command
            assert doc["valid"] is False and doc["inventory"] == str(inv), command
            assert doc["errors"] and all(set(e) == FINDING_KEYS for e in doc["errors"]), command
            if rule:
                assert doc["errors"][0]["rule"] == rule, command
            if rule or command != ["validate"]:  # validate's findings are its output
                assert result.stderr.startswith("error:"), command
    assert not (tmp_path / "out").exists() and not (tmp_path / "state").exists()


def test_an_unknown_host_or_phase_is_invalid_input_in_the_same_shape(tmp_path: Path) -> None:
    for args, option in ((["render", "-o", str(tmp_path / "out"), "--host", "nosuch"], "--host"),
                         (["deploy", "--phase", "nosuch"], "--phase"),
                         (["deploy", "--limit", "nosuch"], "--limit")):
        result = runner.invoke(app, [*args, "-i", str(LAB_INVENTORY), "--json"])
        assert result.exit_code == 2, result.output
        doc = json.loads(result.stdout)
        assert doc["valid"] is False and doc["errors"][0]["field"] == option
        assert "nosuch" in doc["errors"][0]["message"] and "nosuch" in result.stderr
    assert not (tmp_path / "out").exists()


def test_commands_that_reach_hosts_refuse_the_lab_inventory_while_the_lab_is_down(
        monkeypatch) -> None:  # noqa: ANN001
    """With the lab down, its 10.88.0.0/24 addresses would go out of this machine's default
    route: check/deploy/verify refuse (exit 2, nothing sent); validate/render still work."""
    from typer.testing import CliRunner

    from nornir_k8sha.cli import app, common

    monkeypatch.setattr(common, "lab_is_down", lambda spec: True)
    for args in (["check"], ["deploy", "--dry-run"], ["verify"]):
        result = CliRunner().invoke(app, [*args, "-i", str(LAB_INVENTORY)])
        assert result.exit_code == 2, (args, result.output)
        assert "run `lab up` first" in result.output
    assert CliRunner().invoke(app, ["validate", "-i", str(LAB_INVENTORY)]).exit_code == 0


def test_version_is_printed_and_exits_0() -> None:
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("nornir-k8sha 0.1.0 (nornir ")
    assert runner.invoke(app, ["--help"]).stdout.count("--version") == 1
