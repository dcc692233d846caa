"""`render` through the CLI: what a user sees — exit codes, the tree it writes, nothing on bad
input."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from typer.testing import CliRunner

from nornir_k8sha import constants as C
from nornir_k8sha.cli import app
from nornir_k8sha.render import render_all
from nornir_k8sha.topology import load_cluster_spec
from tests.conftest import EXAMPLE_INVENTORY, LAB_INVENTORY

runner = CliRunner()


def _render(*args: str) -> Any:
    return runner.invoke(app, ["render", *args])


def _tree(directory: Path) -> list[Path]:
    return sorted(p for p in directory.rglob("*") if p.is_file()) if directory.exists() else []


def test_render_lab_writes_every_file_of_every_host(tmp_path: Path) -> None:
    out = tmp_path / "rendered"
    result = _render("-i", str(LAB_INVENTORY), "-o", str(out))
    assert result.exit_code == 0, result.output
    spec = load_cluster_spec(LAB_INVENTORY)
    expected = render_all(spec)
    assert sorted(p.name for p in out.iterdir()) == sorted(h.name for h in spec.hosts)
    count = 0
    for host, files in expected.items():
        for f in files:
            on_disk = out / host / f.path.lstrip("/")
            assert on_disk.read_text() == f.content
            assert on_disk.stat().st_mode & 0o777 == f.mode
            count += 1
    assert len(_tree(out)) == count
    assert (out / "haproxy1" / C.HAPROXY_CFG.lstrip("/")).exists()
    assert f"{count} file(s) for {len(spec.hosts)} host(s)" in result.output
    assert "nothing was sent to any host" in result.output


def test_render_example_inventory(tmp_path: Path) -> None:
    result = _render("-i", str(EXAMPLE_INVENTORY), "-o", str(tmp_path))
    assert result.exit_code == 0, result.output
    assert (tmp_path / "tor-a" / C.SWITCH_BGP_CONFIG).read_text().count("neighbor") > 0
    assert "set protocols bgp" in (tmp_path / "tor-b" / C.SWITCH_BGP_CONFIG).read_text()


def test_example_inventory_validates() -> None:
    result = runner.invoke(app, ["validate", "-i", str(EXAMPLE_INVENTORY), "--strict"])
    assert result.exit_code == 0, result.output


def test_invalid_inventory_exits_2_and_writes_nothing(make_inventory: Any,
                                                      tmp_path: Path) -> None:
    def one_etcd(hosts: dict, groups: dict, defaults: dict) -> None:
        del hosts["etcd2"], hosts["etcd3"]

    out = tmp_path / "out"
    result = _render("-i", str(make_inventory(one_etcd)), "-o", str(out))
    assert result.exit_code == 2
    assert "etcd" in result.output
    assert not out.exists()


def test_malformed_inventory_exits_2_and_writes_nothing(tmp_path: Path) -> None:
    inv = tmp_path / "inv"
    inv.mkdir()
    (inv / "hosts.yaml").write_text("lvs1: [unclosed\n")
    out = tmp_path / "out"
    result = _render("-i", str(inv), "-o", str(out))
    assert result.exit_code == 2
    assert "hosts.yaml" in result.output
    assert not out.exists()


def test_host_filter_and_json(tmp_path: Path) -> None:
    result = _render("-i", str(LAB_INVENTORY), "-o", str(tmp_path), "-H", "lvs1", "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert list(doc["hosts"]) == ["lvs1"]
    entry = doc["hosts"]["lvs1"][0]
    assert entry == {"path": C.KEEPALIVED_CONF, "component": "keepalived", "mode": "0o640",
                     "validate": "keepalived -t -f {path}", "service": "keepalived"}
    assert [p.name for p in tmp_path.iterdir()] == ["lvs1"]
    bad = _render("-i", str(LAB_INVENTORY), "-o", str(tmp_path / "x"), "-H", "nope")
    assert bad.exit_code == 2 and not (tmp_path / "x").exists()


def test_big_inventory_summary_has_one_row_per_role(make_inventory: Any, tmp_path: Path) -> None:
    def grow(hosts: dict, groups: dict, defaults: dict) -> None:
        for i in range(60):
            hosts[f"w{i:02d}"] = {"hostname": f"10.88.0.{150 + i}", "groups": ["workers"],
                                  "data": {"physical_host": "pm3"}}

    result = runner.invoke(app, ["render", "-i", str(make_inventory(grow)), "-o",
                                 str(tmp_path)], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "workers (62)" in result.output
    assert "w59" not in result.output  # no row per host
    assert (tmp_path / "w59" / C.KUBEADM_JOIN_WORKER.lstrip("/")).is_file()
