"""The strict inventory reader: every malformed input is an InventoryError with file:line.

Nornir's own SimpleInventory accepts or crashes on these; the reader must name the place instead,
and whatever it accepts Nornir must load.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from nornir_k8sha import constants as C
from nornir_k8sha.exceptions import InventoryError
from nornir_k8sha.inventory import open_nornir, read_raw_inventory
from nornir_k8sha.topology import analyse

from .conftest import LAB_INVENTORY, InventoryFactory
from .test_topology import line_of


def read_error(directory: Path) -> str:
    with pytest.raises(InventoryError) as info:
        read_raw_inventory(directory)
    return str(info.value)


def test_lab_inventory_reads_with_key_lines() -> None:
    raw = read_raw_inventory(LAB_INVENTORY)
    assert len(raw.hosts) == 15 and set(C.ROLES) <= set(raw.groups)
    assert raw.where("hosts", "lvs1", "data", "vrrp_priority") == (
        f"hosts.yaml:{line_of(LAB_INVENTORY / 'hosts.yaml', 'lvs1', 'vrrp_priority')}")
    # A key that is not written falls back to its closest written parent.
    assert raw.where("defaults", "data", "etcd", "peer_port") == (
        f"defaults.yaml:{line_of(LAB_INVENTORY / 'defaults.yaml', 'data')}")


def test_malformed_yaml_names_file_and_line(tmp_path: Path) -> None:
    (tmp_path / "hosts.yaml").write_text("lvs1:\n  hostname: 10.88.0.11\n  groups: [lvs\n"
                                         "lvs2:\n  hostname: 10.88.0.12\n")
    message = read_error(tmp_path)
    assert f"{tmp_path / 'hosts.yaml'}:4: invalid YAML" in message


def test_bad_indentation_names_file_and_line(tmp_path: Path) -> None:
    (tmp_path / "hosts.yaml").write_text("lvs1:\n  hostname: 10.88.0.11\n groups: [lvs]\n")
    assert f"{tmp_path / 'hosts.yaml'}:3: invalid YAML" in read_error(tmp_path)


def test_duplicate_key_names_both_lines(tmp_path: Path) -> None:
    (tmp_path / "hosts.yaml").write_text(
        "lvs1:\n  hostname: 10.88.0.11\nlvs2:\n  hostname: 10.88.0.12\n"
        "lvs1:\n  hostname: 10.88.0.13\n")
    message = read_error(tmp_path)
    assert f"{tmp_path / 'hosts.yaml'}:5: invalid YAML: duplicate key 'lvs1' (first at line 1)" \
        in message


def test_duplicate_nested_key(tmp_path: Path) -> None:
    (tmp_path / "hosts.yaml").write_text("lvs1:\n  hostname: 10.88.0.11\n  data:\n"
                                         "    cpu: 4\n    cpu: 8\n")
    assert "hosts.yaml:5: invalid YAML: duplicate key 'cpu' (first at line 4)" in (
        read_error(tmp_path))


def test_yaml_merge_keys_are_allowed_and_overridable(make_inventory: InventoryFactory) -> None:
    inv = make_inventory()
    text = (inv / "hosts.yaml").read_text()
    (inv / "hosts.yaml").write_text(
        text.replace("worker1:\n  hostname: 10.88.0.51\n",
                     "worker1: &worker\n  hostname: 10.88.0.51\n")
        + "worker3:\n  <<: *worker\n  hostname: 10.88.0.53\n")
    raw = read_raw_inventory(inv)
    assert raw.hosts["worker3"]["hostname"] == "10.88.0.53"
    assert raw.hosts["worker3"]["groups"] == ["workers"]
    assert analyse(inv).errors == []


def test_missing_hosts_file(tmp_path: Path) -> None:
    assert read_error(tmp_path) == f"{tmp_path / 'hosts.yaml'}: file not found"


def test_missing_directory(tmp_path: Path) -> None:
    assert "inventory directory not found" in read_error(tmp_path / "nope")


def test_top_level_must_be_a_mapping(tmp_path: Path) -> None:
    (tmp_path / "hosts.yaml").write_text("- lvs1\n- lvs2\n")
    assert "hosts.yaml: expected a mapping at the top level" in read_error(tmp_path)


def test_unknown_host_field_names_file_line_host(make_inventory: InventoryFactory) -> None:
    inv = make_inventory(lambda h, g, d: h["etcd2"].update(hostnmae="10.88.0.32"))
    line = line_of(inv / "hosts.yaml", "etcd2", "hostnmae")
    assert f"hosts.yaml:{line}: host etcd2: field 'hostnmae': unknown field" in read_error(inv)


def test_unknown_defaults_field(make_inventory: InventoryFactory) -> None:
    inv = make_inventory(lambda h, g, d: d.update(usrname="root"))
    line = line_of(inv / "defaults.yaml", "usrname")
    message = read_error(inv)
    assert message.startswith(f"inventory {inv} is invalid:")
    assert f"defaults.yaml:{line}: defaults: field 'usrname': unknown field" in message


def test_unknown_group(make_inventory: InventoryFactory) -> None:
    inv = make_inventory(lambda h, g, d: h["worker1"].update(groups=["worker"]))
    line = line_of(inv / "hosts.yaml", "worker1", "groups")
    assert f"hosts.yaml:{line}: host worker1: field 'groups': unknown group 'worker'" in (
        read_error(inv))


def test_unknown_parent_group(make_inventory: InventoryFactory) -> None:
    inv = make_inventory(lambda h, g, d: g.update(etcd={"groups": ["dc1"]}))
    assert "group etcd: field 'groups': unknown group 'dc1'" in read_error(inv)


def test_group_cycle(make_inventory: InventoryFactory) -> None:
    inv = make_inventory(lambda h, g, d: g.update(a={"groups": ["b"]}, b={"groups": ["a"]}))
    assert "groups inherit from themselves: a -> b -> a" in read_error(inv)


@pytest.mark.parametrize(("edit", "expected"), [
    (lambda h, g, d: h["lvs1"].update(groups="lvs"), "host lvs1: field 'groups': must be a list"),
    (lambda h, g, d: h["lvs1"].update(data=["x"]), "host lvs1: field 'data': must be a mapping"),
    (lambda h, g, d: h.update(lvs1=["x"]), "host lvs1: expected a mapping"),
    (lambda h, g, d: g.update(lvs=None), "group lvs: empty entry (write `lvs: {}`)"),
    (lambda h, g, d: h["lvs1"].update(port="ssh"), "field 'port': 'ssh' is not a port number"),
    (lambda h, g, d: h["lvs1"].update(port=0), "field 'port': 0 is not a port number"),
    (lambda h, g, d: d.update(password=1234), "defaults: field 'password': 1234 must be a "
                                              "string (quote it)"),
    (lambda h, g, d: d.update(connection_options=["x"]),
     "field 'connection_options': must be a mapping"),
    (lambda h, g, d: d["connection_options"]["k8sha_ssh"].update(key_file="k"),
     "k8sha_ssh: unknown field 'key_file' (plugin settings go under 'extras')"),
    (lambda h, g, d: d["connection_options"]["k8sha_ssh"].update(extras="k"),
     "k8sha_ssh: field 'extras' must be a mapping"),
])
def test_nornir_shapes(make_inventory: InventoryFactory, edit, expected: str) -> None:  # noqa: ANN001
    assert expected in read_error(make_inventory(edit))


def test_null_host_data_is_accepted_like_nornir_does(make_inventory: InventoryFactory) -> None:
    inv = make_inventory(lambda h, g, d: h["worker1"].update(data=None))
    analysis = analyse(inv)
    assert analysis.errors == []
    assert [f.host for f in analysis.warnings if f.rule == "physical-host"] == ["worker1"]


def test_accepted_inventory_opens_in_nornir_with_its_roles(make_inventory: InventoryFactory
                                                          ) -> None:
    def edit(h: dict, g: dict, d: dict) -> None:
        g["rack-a"] = {"groups": ["workers"]}
        h["worker2"]["groups"] = ["rack-a"]

    nr = open_nornir(make_inventory(edit))
    assert len(nr.inventory.hosts) == 15
    workers = nr.filter(filter_func=lambda host: host.has_parent_group("workers"))
    assert sorted(workers.inventory.hosts) == ["worker1", "worker2"]
    assert nr.inventory.hosts["lvs1"]["vrrp_priority"] == 150


def test_open_nornir_refuses_a_bad_inventory(make_inventory: InventoryFactory) -> None:
    inv = make_inventory(lambda h, g, d: h["lvs1"].update(group=["lvs"]))
    with pytest.raises(InventoryError, match="host lvs1: field 'group': unknown field"):
        open_nornir(inv)


def test_a_failed_task_prints_no_traceback_yet_root_logging_still_sees_it(
        make_inventory: InventoryFactory) -> None:
    """Nornir logs every task exception at ERROR; with its logging off it reached stderr as a
    traceback (Python's last-resort handler) in the middle of a deploy's output, for failures
    our phases handle and report (a BGP poll retried). Run in a new interpreter: pytest's own
    log capture would hide the last-resort handler."""
    script = textwrap.dedent(f"""
        import logging, sys
        from nornir_k8sha.inventory import open_nornir
        nr = open_nornir({str(make_inventory(lambda h, g, d: None))!r})
        def boom(task):
            raise RuntimeError("handled by the caller")
        if sys.argv[1:] == ["root"]:
            logging.basicConfig(level=logging.ERROR)
        assert nr.filter(name="lvs1").run(task=boom).failed
    """)
    quiet = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert quiet.returncode == 0, quiet.stderr
    assert quiet.stderr == ""
    logged = subprocess.run([sys.executable, "-c", script, "root"], capture_output=True,
                            text=True)
    assert "failed with traceback" in logged.stderr  # a caller's own logging still gets it
