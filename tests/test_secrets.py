"""No secret in any output: a VRRPv2 password and Harbor's passwords reach their hosts, and
never the console, a dry run's diff, `--json`, `--report` or a saved report; every report and
local secret file is 0600 from its creation. Harbor refuses without its offline installer.

Everything runs through the real CLI (typer's runner) on the fake fleet.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import yaml
from typer.testing import CliRunner

from nornir_k8sha import constants as C
from nornir_k8sha.cli import app
from nornir_k8sha.cli import deploy as cli_deploy
from nornir_k8sha.inventory import open_nornir
from nornir_k8sha.render import SECRET_NAMES, files_for_component
from nornir_k8sha.report import RunReport
from nornir_k8sha.statefiles import write_private
from nornir_k8sha.tasks import harbor
from nornir_k8sha.tasks import kubeadm as K
from nornir_k8sha.tasks.harbor import harbor_secrets_path
from nornir_k8sha.tasks.host import HIDDEN
from nornir_k8sha.testing import FakeFleet, FakeRegistry, FakeUnit, install_fake
from nornir_k8sha.topology import load_cluster_spec

from .conftest import LAB_INVENTORY, InventoryFactory
from .test_components import UNITS

VRRP_PASSWORD = "Vr9pPw7x"  # VRRPv2 uses the first 8 characters only


def vrrp_v2(password: str) -> Callable[[dict, dict, dict], None]:
    def edit(hosts: dict, groups: dict, defaults: dict) -> None:
        defaults["data"]["vrrp"].update(version=2, advert_int=1, auth_pass=password)
    return edit


def harbor_engine(hosts: dict, groups: dict, defaults: dict) -> None:
    defaults["data"]["registry"]["engine"] = "harbor"


class Deployer:
    """`deploy` through the CLI, against the fake fleet, in a scratch working directory."""

    def __init__(self, fleet: FakeFleet, cwd: Path) -> None:
        self.fleet = fleet
        self.cwd = cwd
        self.outputs: list[str] = []

    def __call__(self, inventory: Path, *args: str) -> tuple[int, str]:
        result = CliRunner().invoke(app, ["deploy", "-i", str(inventory), *args])
        self.outputs += [result.stdout, result.stderr]
        return result.exit_code, result.stdout

    def reports(self) -> list[Path]:
        return sorted((self.cwd / C.STATE_ROOT).glob(f"*/{C.STATE_REPORTS_DIR}/*.json"))


@pytest.fixture
def deployer(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Deployer]:
    fleet = FakeFleet(debian=True)

    def opener(directory: Path, **kw: object) -> object:
        nr = open_nornir(directory, **kw)
        for name in nr.inventory.hosts:
            units = fleet.host(name).debian.units
            for unit in UNITS:
                units.setdefault(unit, FakeUnit())
        install_fake(nr, fleet)
        return nr

    monkeypatch.setattr(cli_deploy, "open_nornir", opener)
    registry = FakeRegistry()  # the registry phase pushes its probe image over HTTP
    monkeypatch.setattr(harbor, "registry_client",
                        lambda *a, **k: httpx.Client(transport=registry.transport))
    cwd = tmp_path / "work"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    before = os.umask(0o022)  # a usual umask: 0600 must come from our code, not from it
    try:
        yield Deployer(fleet, cwd)
    finally:
        os.umask(before)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def assert_nowhere(secrets: list[str], texts: list[str], files: list[Path]) -> None:
    for secret in secrets:
        for text in texts:
            assert secret not in text
        for f in files:
            assert secret not in f.read_text(), f


# --- VRRPv2 password ---------------------------------------------------------------------------


def test_vrrp_password_is_in_no_output_and_reports_are_0600(
        make_inventory: InventoryFactory, deployer: Deployer, tmp_path: Path) -> None:
    inv = make_inventory(vrrp_v2(VRRP_PASSWORD))
    lb = ("--phase", "pki", "--phase", "lb")
    code, out = deployer(inv, *lb, "--dry-run", "--json")
    assert code == 0, out
    dry = json.loads(out)
    diff = dry["phases"][1]["hosts"]["lvs1"]["diff"]
    assert C.KEEPALIVED_CONF in diff and HIDDEN in diff  # it changes; what is not shown

    report_file = tmp_path / "F.json"
    code, out = deployer(inv, *lb, "--report", str(report_file))
    assert code == 0, out
    conf = deployer.fleet.host("lvs1").read(C.KEEPALIVED_CONF)
    assert conf is not None and f"auth_pass {VRRP_PASSWORD}" in conf  # it did reach the host

    # a changed password: the dry run's diff would show the old and the new one
    changed = make_inventory(vrrp_v2("Zq4kLm2w"))
    code, out = deployer(changed, *lb, "--dry-run")
    assert code == 0, out
    assert HIDDEN in out

    reports = deployer.reports()
    assert len(reports) >= 2 and report_file.exists()
    for path in (*reports, report_file):
        assert mode(path) == 0o600, path
    assert_nowhere([VRRP_PASSWORD, "Zq4kLm2w"], deployer.outputs, [*reports, report_file])


def test_keepalived_conf_is_secret_only_with_a_password(make_inventory: InventoryFactory
                                                        ) -> None:
    for edit, secret in ((vrrp_v2(VRRP_PASSWORD), True), (None, False)):
        spec = load_cluster_spec(make_inventory(edit))
        files = files_for_component(spec, "lvs1", "keepalived")
        assert [f.secret for f in files] == [secret]
    harbor = files_for_component(spec, "harbor1", "harbor")
    assert [f.secret for f in harbor] == [True]


# --- Harbor ------------------------------------------------------------------------------------


def test_harbor_without_its_installer_fails_the_host_saying_what_to_place_where(
        make_inventory: InventoryFactory, deployer: Deployer) -> None:
    inv = make_inventory(harbor_engine)
    code, out = deployer(inv, "--phase", "pki", "--phase", "registry", "--json")
    assert code == 1
    outcome = json.loads(out)["phases"][1]["hosts"]["harbor1"]
    assert outcome["status"] == "failed"
    assert C.HARBOR_INSTALLER in outcome["message"]
    assert "harbor-offline-installer-v2.11.1.tgz" in outcome["message"]
    assert "registry.engine: distribution" in outcome["message"]
    host = deployer.fleet.host("harbor1")
    assert host.read(C.HARBOR_YML) is None
    assert not any("install.sh" in c for c in host.commands())


def test_harbor_gets_generated_passwords_once_and_no_output_shows_them(
        make_inventory: InventoryFactory, deployer: Deployer, tmp_path: Path) -> None:
    inv = make_inventory(harbor_engine)
    host = deployer.fleet.host("harbor1")
    host.write(C.HARBOR_INSTALLER, "#!/bin/sh\n", mode=0o755)
    installs: list[str] = []
    host.on(r"install\.sh", lambda h, cmd, *_: installs.append(cmd) or "")
    phases = ("--phase", "pki", "--phase", "registry")
    shown = harbor_secrets_path(C.STATE_ROOT / "lab")  # the state dir, as the user sees it
    secrets_file = deployer.cwd / shown

    code, out = deployer(inv, *phases, "--dry-run", "--json")
    assert code == 0, out
    assert not secrets_file.exists() and installs == []  # a dry run generates nothing

    report_file = tmp_path / "F.json"
    code, out = deployer(inv, *phases, "--report", str(report_file))
    assert code == 0, out
    assert mode(secrets_file) == 0o600 and mode(secrets_file.parent) == 0o700
    passwords = json.loads(secrets_file.read_text())
    assert set(passwords) == set(SECRET_NAMES)
    harbor_yml = yaml.safe_load(host.read(C.HARBOR_YML) or "")
    assert harbor_yml["harbor_admin_password"] == passwords["harbor_admin_password"]
    assert harbor_yml["database"]["password"] == passwords["harbor_db_password"]
    assert host.stat(C.HARBOR_YML).mode == 0o600
    assert len(installs) == 1
    assert f"Harbor admin password (user admin): {shown}" in out  # where it is

    code, out = deployer(inv, *phases, "--json")
    assert code == 0, out
    doc = json.loads(out)
    assert doc["phases"][1]["hosts"]["harbor1"]["status"] == "ok"  # same passwords: no change
    assert json.loads(secrets_file.read_text()) == passwords and len(installs) == 1

    secrets_file.write_text(json.dumps({n: p + "x" for n, p in passwords.items()}))
    code, out = deployer(inv, *phases, "--dry-run")  # a diff exists now: it must not show
    assert code == 0 and HIDDEN in out

    reports = deployer.reports()
    for path in (*reports, report_file):
        assert mode(path) == 0o600, path
    everything = [*passwords.values(), *(p + "x" for p in passwords.values())]
    assert_nowhere(everything, deployer.outputs, [*reports, report_file])


def test_the_lab_keeps_the_distribution_registry(make_inventory: InventoryFactory,
                                                 deployer: Deployer) -> None:
    code, out = deployer(make_inventory(), "--phase", "pki", "--phase", "registry")
    assert code == 0, out
    host = deployer.fleet.host("harbor1")
    assert host.debian.unit("docker-registry").active and host.read(C.HARBOR_YML) is None
    assert not (deployer.cwd / C.STATE_ROOT / "lab" / C.STATE_SECRETS_DIR).exists()


# --- local files: 0600 from their creation -----------------------------------------------------


def test_private_files_are_0600_from_creation_and_exclusive_never_overwrites(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    modes: list[int] = []
    real_open = os.open

    def recording_open(path: object, flags: int, mode: int = 0o777, **kw: object) -> int:
        if flags & os.O_CREAT:
            modes.append(mode)
        return real_open(path, flags, mode, **kw)

    monkeypatch.setattr(os, "open", recording_open)
    target = tmp_path / "a" / "secret.json"
    assert write_private(target, "one", exclusive=True)
    assert not write_private(target, "two", exclusive=True)
    assert target.read_text() == "one" and mode(target) == 0o600
    assert modes and all(m == 0o600 for m in modes)
    public = tmp_path / "report.json"
    public.write_text("old")
    public.chmod(0o644)
    RunReport("deploy", "lab").write_json(public)
    assert mode(public) == 0o600 and json.loads(public.read_text())["command"] == "deploy"


def test_admin_kubeconfig_is_written_0600(make_inventory: InventoryFactory, tmp_path: Path
                                          ) -> None:
    inv = make_inventory()
    spec = load_cluster_spec(inv)
    fleet = FakeFleet(debian=True)
    fleet.host("master1").write(C.ADMIN_KUBECONFIG, "server: https://10.88.0.41:6443\n",
                                mode=0o600)
    nr = open_nornir(inv).filter(name="master1")
    install_fake(nr, fleet)
    state = tmp_path / "state"
    result = nr.run(task=K.fetch_admin_kubeconfig, spec=spec, state_dir=state)["master1"][0]
    assert not result.failed, result.exception
    target = state / C.STATE_ADMIN_KUBECONFIG
    assert mode(target) == 0o600
    assert target.read_text() == f"server: https://{spec.api_endpoint}\n"


def test_a_second_deploy_beside_a_running_one_exits_1_naming_the_holder(
        deployer: Deployer) -> None:
    """One operation at a time on a cluster: the second deploy (or reset) names the holder,
    exits 1 and touches nothing; a dry run needs no lock."""
    from nornir_k8sha.oplock import operation_lock

    with operation_lock(C.STATE_ROOT / "lab", "runbook run verify-ha.yaml"):
        code, _ = deployer(LAB_INVENTORY, "--phase", "lb")
        assert code == 1 and "runbook run verify-ha.yaml" in deployer.outputs[-1]  # stderr
        assert all(not h.calls for h in deployer.fleet.hosts.values())
        code, _ = deployer(LAB_INVENTORY, "--phase", "pki", "--phase", "lb", "--dry-run")
        assert code == 0
