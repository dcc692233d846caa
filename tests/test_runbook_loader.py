"""Bad runbooks are refused with file:line and the field, before anything runs; the shipped
runbooks validate."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from nornir_k8sha.exceptions import RunbookError
from nornir_k8sha.runbook import loader, seams
from nornir_k8sha.runbook.loader import builtin_runbooks, find_runbook
from nornir_k8sha.topology import load_cluster_spec

from .conftest import LAB_INVENTORY

GOOD = """\
title: t
variables: {svc: haproxy}
steady_state:
  - probe: check:etcd
cases:
  - name: one
    method:
      - task: faults.stop_service
        hosts: role:haproxy
        args: {unit: "${svc}"}
        fault: true
      - wait: {probe: check:vip, max_time: 5, check_interval: 0.5}
    rollbacks:
      - task: faults.start_service
        hosts: "@fault"
        args: {unit: "${svc}"}
"""


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "rb.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def _error(path: Path, spec=None) -> str:  # noqa: ANN001
    with pytest.raises(RunbookError) as info:
        loaded = loader.load(path)
        if spec is not None:
            loader.check_against(loaded, spec)
    return str(info.value)


@pytest.fixture
def spec():  # noqa: ANN201
    return load_cluster_spec(LAB_INVENTORY)


def test_a_good_runbook_loads_with_variables_substituted(tmp_path: Path, spec) -> None:
    loaded = loader.load(_write(tmp_path, GOOD))
    loader.check_against(loaded, spec)
    (_, case), = loaded.cases(spec)
    assert case.method[0].args == {"unit": "haproxy"}
    assert case.method[1].wait.check_interval == 0.5
    assert loader.load(_write(tmp_path, GOOD), {"svc": "etcd"}).runbook.cases[0].method[0] \
        .args == {"unit": "etcd"}


@pytest.mark.parametrize("bad,line,words", [
    # YAML error
    (GOOD.replace("title: t", "title: [t"), 2, ["invalid YAML"]),
    # unknown step kind
    (GOOD.replace("      - wait: {probe", "      - jump: 1\n      - wait: {probe"), 12,
     ["cases[0].method[1]", "unknown step kind", "jump"]),
    # unknown task
    (GOOD.replace("faults.stop_service", "faults.stop_everything"), 8,
     ["cases[0].method[0].task: unknown task 'faults.stop_everything'"]),
    # unknown module
    (GOOD.replace("faults.stop_service", "nosuch.thing"), 8,
     ["no module nornir_k8sha.tasks.nosuch"]),
    # an unknown package of anyone's task
    (GOOD.replace("faults.stop_service", "no_such_pkg.mod:task"), 8,
     ["unknown task 'no_such_pkg.mod:task': no module no_such_pkg.mod"]),
    # not a Nornir task
    (GOOD.replace("faults.stop_service", "faults._safe"), 8, ["is not a Nornir task"]),
    # unknown check row
    (GOOD.replace("check:etcd", "check:nope"), 4, ["steady_state[0].probe", "unknown check row"]),
    # missing field: a wait without max_time
    (GOOD.replace("max_time: 5, ", ""), 12, ["cases[0].method[1].wait.max_time: missing field"]),
    # missing field: a task step without hosts
    (GOOD.replace("        hosts: role:haproxy\n", ""), 8, ["method[0].hosts: missing field"]),
    # wrong type
    (GOOD.replace("fault: true", "fault: sometimes"), 11, ["method[0].fault: ", "boolean"]),
    (GOOD.replace("check_interval: 0.5", "check_interval: soon"), 12,
     ["wait.check_interval", "number"]),
    # unknown field
    (GOOD.replace("    rollbacks:", "    colour: red\n    rollbacks:"), 13,
     ["cases[0].colour", "unknown field"]),
    # unknown variable
    (GOOD.replace('"${svc}"}\n        fault', '"${service}"}\n        fault'), 10,
     ["cases[0].method[0].args.unit", "unknown variable ${service}"]),
    # malformed selector
    (GOOD.replace("role:haproxy", "rack:7"), 9, ["method[0].hosts", "unknown selector kind"]),
    # @fault before any fault step
    (GOOD.replace("        fault: true\n", ""), 14, ["rollbacks[0].hosts", "@fault before"]),
    # `continuous` belongs to steady-state probes only, and is a positive number of seconds
    (GOOD.replace("check_interval: 0.5}", "check_interval: 0.5, continuous: 1}"), 12,
     ["cases[0].method[1].wait.continuous", "unknown field"]),
    (GOOD.replace("  - probe: check:etcd", "  - probe: check:etcd\n    continuous: 0"), 5,
     ["steady_state[0].continuous", "greater than 0"]),
])
def test_bad_runbooks_name_file_line_and_field(tmp_path: Path, bad: str, line: int,
                                               words: list[str]) -> None:
    path = _write(tmp_path, bad)
    message = _error(path)
    assert message.startswith(f"{path}:{line}:"), message
    for word in words:
        assert word in message, message


@pytest.mark.parametrize("selector,why", [
    ("role:nosuch", "no host has role 'nosuch'"),
    ("name:ghost", "no host named 'ghost'"),
    ("ghost", "no host named 'ghost'"),
    ("machine:pm9", "no physical machine 'pm9'"),
    ("lease-holder:kube-proxy", "unknown lease 'kube-proxy'"),
    ("backend-of:master1", "'master1' is not an HAProxy host"),
])
def test_a_selector_that_matches_nothing_is_refused_up_front(tmp_path: Path, spec,
                                                             selector: str, why: str) -> None:
    path = _write(tmp_path, GOOD.replace("role:haproxy", selector))
    loaded = loader.load(path)  # syntax is fine: only the inventory can tell
    message = _error(path, spec)
    assert message.startswith(f"{path}:9: cases[0].method[0].hosts: "), message
    assert why in message
    assert loaded.runbook.cases[0].method[0].hosts == selector


def test_a_lab_fault_needs_the_lab_and_a_registered_provider(tmp_path: Path, spec,
                                                             make_inventory) -> None:
    text = GOOD.replace("task: faults.stop_service", "lab: power_off")
    path = _write(tmp_path, text)
    assert "lab fault 'power_off' is not available" in _error(path, spec)
    seams.register("power_off", lambda spec, hosts: "off")
    try:
        loader.check_against(loader.load(path), spec)
        real = load_cluster_spec(make_inventory(
            lambda h, g, d: d["data"].update(cluster_name="prod")))
        message = _error(path, real)
        assert f"{path}:8: cases[0].method[0]: lab-only fault 'power_off' on cluster 'prod'" \
            in message
    finally:
        seams.unregister("power_off")


def test_top_level_method_is_one_case_named_after_the_file(tmp_path: Path, spec) -> None:
    path = tmp_path / "drain.yaml"
    path.write_text("title: d\nexpect: {kind: none}\nload: true\nmethod:\n  - pause: 1\n")
    (_, case), = loader.load(path).cases(spec)
    assert (case.name, case.load, case.expect.kind) == ("drain", True, "none")
    path.write_text("title: d\nmethod:\n  - pause: 1\ncases:\n  - name: x\n    method: "
                    "[{pause: 1}]\n")
    assert "either `cases` or a top-level `method`" in _error(path)


def test_for_each_machine_expands_one_case_per_machine(tmp_path: Path, spec) -> None:
    path = _write(tmp_path, """\
        title: m
        cases:
          - name: machine-${item}
            for_each: machine
            expect: {kind: machine, params: {machine: "${item}"}}
            method:
              - task: faults.reboot
                hosts: machine:${item}
                fault: true
        """)
    cases = [c for _, c in loader.load(path).cases(spec)]
    assert [c.name for c in cases] == ["machine-pm1", "machine-pm2", "machine-pm3"]
    assert cases[1].expect.params == {"machine": "pm2"}
    assert cases[1].method[0].hosts == "machine:pm2"


@pytest.mark.parametrize("name", ["verify-ha", "haproxy-maintenance"])
def test_shipped_runbooks_validate_and_are_found_from_the_package(name: str, spec) -> None:
    path = find_runbook(name)
    assert path.is_file() and path.name == f"{name}.yaml"
    loaded = loader.load(path)
    for step_name in ("power_off", "power_on"):
        seams.register(step_name, lambda spec, hosts: "")
    try:
        loader.check_against(loaded, spec)
    finally:
        for step_name in ("power_off", "power_on"):
            seams.unregister(step_name)
    assert name in {p.stem for p in builtin_runbooks()}


def test_verify_ha_has_a_case_per_checklist_line(spec) -> None:
    cases = [c.name for _, c in loader.load(find_runbook("verify-ha")).cases(spec)]
    assert cases == [
        "director-keepalived-stopped", "director-keepalived-frozen", "director-power-cut",
        "director-link-cut", "haproxy-stopped", "apiserver-stopped", "apiserver-frozen",
        "etcd-leader-killed", "etcd-leader-partitioned", "etcd-majority-lost",
        "controller-manager-lease",
        "scheduler-lease", "machine-pm1", "machine-pm2", "machine-pm3"]
