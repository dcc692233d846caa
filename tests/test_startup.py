"""What `check` loads at start-up: its imports are most of its wall clock on a small machine
(issue 12.3), so modules it never uses stay unloaded. Counted, never timed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _loaded_after(statement: str, modules: list[str]) -> list[str]:
    code = (f"import sys\n{statement}\n"
            f"print('\\nloaded:', *(m for m in {modules!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                         text=True, check=True, timeout=60)
    return out.stdout.splitlines()[-1].split()[1:]  # the last line: what a command printed


def test_check_does_not_load_the_template_engine() -> None:
    # the tasks render in `configure` only; `check` renders nothing
    assert _loaded_after("import nornir_k8sha.cli.check", ["jinja2"]) == []


def test_rendering_still_loads_it_on_first_use() -> None:
    assert _loaded_after("from nornir_k8sha.render import template\n"
                         "template('keepalived/keepalived.conf.j2')", ["jinja2"]) == ["jinja2"]


#: What a command's start loads that it may not: netmiko (switches only), invoke's body
#: (paramiko's `Match exec` only), the pydantic models before the command asks for them.
SWITCHES_ONLY = ["netmiko", "nornir_netmiko", "nornir_k8sha.tasks.switch"]
INVOKE_BODY = ["invoke.collection", "invoke.context", "unittest.mock"]


def _command_start(command: str, modules: list[str]) -> list[str]:
    """`modules` loaded once the command line has imported `command` as the console script
    does and opened its Nornir on the lab's inventory, as `check` and `deploy` do before they
    reach their first host."""
    return _loaded_after(
        "from nornir_k8sha.cli import startup\n"
        "with startup.imports():\n"
        "    from nornir_k8sha.cli import commands\n"
        f"    commands.build({command!r})\n"
        "from nornir_k8sha.inventory import open_nornir\n"
        "open_nornir('inventory/lab')", modules)


def test_check_and_deploy_start_without_netmiko_or_invoke() -> None:
    # check loads netmiko in its switches row, deploy in its network phase: not at the start
    for command in ("check", "deploy"):
        assert _command_start(command, SWITCHES_ONLY + INVOKE_BODY) == [], command


def test_check_starts_without_rich_which_json_output_never_draws_with() -> None:
    assert _command_start("check", ["rich", "rich.console"]) == []
    assert _loaded_after("from nornir_k8sha import console\nconsole.out()",
                         ["rich.console"]) == ["rich.console"]


def test_the_switches_row_and_the_network_phase_still_load_netmiko() -> None:
    assert _loaded_after("from nornir_k8sha.checks.sweep import switch_sessions\n"
                         "from nornir_k8sha.checks import CheckContext\n"
                         "from nornir_k8sha.inventory import open_nornir\n"
                         "from nornir_k8sha.topology import load_cluster_spec\n"
                         "spec = load_cluster_spec('inventory/lab')\n"
                         "class Never:\n"
                         "    def run(self, *a, **k): return {}\n"
                         "cx = CheckContext(spec, None, spec.state_dir)\n"
                         "CheckContext.run = Never.run\n"
                         "switch_sessions(cx)", ["netmiko"]) == ["netmiko"]
    assert _loaded_after("from nornir_k8sha.phases.network import _switch\n"
                         "_switch().connect", ["netmiko"]) == ["netmiko"]


def test_a_deferred_invoke_still_serves_paramikos_match_exec() -> None:
    code = ("from nornir_k8sha.cli import startup\n"
            "with startup.imports():\n    import paramiko\n"
            "before = 'invoke.collection' in sys.modules\n"
            "config = paramiko.SSHConfig.from_text('Match exec \"true\"\\n  User bob\\n')\n"
            "assert config.lookup('somehost')['user'] == 'bob'\n"
            "print('body loaded before:', before)")
    out = subprocess.run([sys.executable, "-c", f"import sys\n{code}"], cwd=REPO,
                         capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == "body loaded before: False"


def test_the_package_loads_its_topology_api_on_first_use() -> None:
    assert _loaded_after("import nornir_k8sha", ["pydantic", "nornir"]) == []
    assert _loaded_after("from nornir_k8sha import ClusterSpec, load_cluster_spec\n"
                         "load_cluster_spec('inventory/lab')", ["pydantic"]) == ["pydantic"]


def test_the_collector_is_back_on_after_a_commands_imports() -> None:
    import gc

    from nornir_k8sha.cli import startup

    frozen = gc.get_freeze_count()
    with startup.imports():
        assert not gc.isenabled()
        made = [[n] for n in range(1000)]  # tracked objects, alive at the freeze
    assert gc.isenabled()
    assert gc.get_freeze_count() >= frozen + len(made)
    gc.unfreeze()
    gc.disable()  # a program that runs with the collector off keeps it off
    try:
        with startup.imports():
            pass
        assert not gc.isenabled()
    finally:
        gc.enable()
        gc.unfreeze()


def test_a_host_registers_a_connection_plugin_when_it_first_opens_one(monkeypatch) -> None:
    from importlib import metadata

    from nornir.core.plugins.connections import ConnectionPluginRegister

    from nornir_k8sha import inventory

    opened = []

    class Plugin:
        def open(self, **kwargs: object) -> None:
            opened.append(kwargs["hostname"])
            self.connection = "a session"

        def close(self) -> None:
            pass

    entry = metadata.EntryPoint("k8sha_test_plugin", "x:y", inventory.CONNECTION_PLUGINS_GROUP)
    monkeypatch.setattr(metadata.EntryPoint, "load", lambda self: Plugin)
    monkeypatch.setattr(inventory.metadata, "entry_points", lambda group: [entry])
    nr = inventory.open_nornir(REPO / "inventory" / "lab")
    try:
        assert "k8sha_test_plugin" not in ConnectionPluginRegister.available
        host = nr.inventory.hosts["master1"]
        assert host.get_connection("k8sha_test_plugin", nr.config) == "a session"
        assert opened == [host.hostname]
        assert ConnectionPluginRegister.get_plugin("k8sha_test_plugin") is Plugin
    finally:
        ConnectionPluginRegister.available.pop("k8sha_test_plugin", None)
