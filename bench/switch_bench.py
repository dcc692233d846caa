"""netmiko vs scrapli on the lab's FRR switches: the switch check and an apply, side by side.

    sudo .venv/bin/python bench/switch_bench.py [--rounds 5] [--switch switch1]

Needs a deployed lab (`lab up` + `deploy`) and, for the scrapli column, scrapli 1.x:
`pip install 'scrapli<2026.2.21'` (nornir-scrapli pins it below 2026.2.21; scrapli 2026.x is a
rewrite). Both libraries log in the same way (the lab's key, known_hosts verified, user netops,
whose login shell is vtysh) and run the same commands:

- check: log in, `show ip bgp summary`, `show ip route <vip>`, `show running-config`, log out
  (what `switch.check` sends on a cisco_ios switch);
- apply: log in, enter configuration mode, send every line of the rendered intent inside its
  parents (all already present: the switch does not change), leave, log out.

Prints per library and job the median and min of `--rounds` runs per switch. Run from the
repository root, as root (the lab's key is root's). Changes nothing on the switches.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from nornir_k8sha import constants as C  # noqa: E402
from nornir_k8sha.tasks import switch  # noqa: E402
from nornir_k8sha.topology import ClusterSpec, load_cluster_spec  # noqa: E402

INVENTORY = REPO / "inventory" / "lab"
KEY = REPO / ".k8sha" / "lab" / "ssh" / "id_ed25519"
KNOWN_HOSTS = REPO / ".k8sha" / "lab" / "ssh" / "known_hosts"
USER = "netops"


def intent_commands(spec: ClusterSpec, name: str) -> list[str]:
    """The whole intent as a command list with parents (a plan against an empty config)."""
    platform = switch.PLATFORMS["cisco_ios"]
    return switch.plan_for(platform, "", spec, name).commands


def check_commands(spec: ClusterSpec) -> list[str]:
    return ["show ip bgp summary", f"show ip route {spec.vip}", "show running-config"]


# --- netmiko ------------------------------------------------------------------------------------

def netmiko_connect(address: str) -> Any:
    from netmiko import ConnectHandler

    return ConnectHandler(device_type="cisco_ios", host=address, username=USER,
                          use_keys=True, key_file=str(KEY), allow_agent=False,
                          ssh_strict=True, alt_host_keys=True, alt_key_file=str(KNOWN_HOSTS))


def netmiko_check(address: str, spec: ClusterSpec) -> None:
    conn = netmiko_connect(address)
    try:
        for c in check_commands(spec):
            conn.send_command(c)
    finally:
        conn.disconnect()


def netmiko_apply(address: str, lines: list[str]) -> None:
    conn = netmiko_connect(address)
    try:
        conn.send_config_set(lines, error_pattern=switch.ERROR_PATTERN, exit_config_mode=False,
                             read_timeout=C.SWITCH_COMMAND_TIMEOUT)
    finally:
        conn.exit_config_mode()
        conn.disconnect()


# --- scrapli 1.x ----------------------------------------------------------------------------------

def scrapli_connect(address: str) -> Any:
    from scrapli.driver.core import IOSXEDriver  # FRR's vtysh answers like IOS

    conn = IOSXEDriver(host=address, auth_username=USER, auth_private_key=str(KEY),
                       auth_strict_key=True, ssh_known_hosts_file=str(KNOWN_HOSTS),
                       transport="system", timeout_ops=C.SWITCH_COMMAND_TIMEOUT)
    conn.open()
    return conn


def scrapli_check(address: str, spec: ClusterSpec) -> None:
    conn = scrapli_connect(address)
    try:
        conn.send_commands(check_commands(spec))
    finally:
        conn.close()


def scrapli_apply(address: str, lines: list[str]) -> None:
    conn = scrapli_connect(address)
    try:
        result = conn.send_configs([ln.strip() for ln in lines], stop_on_failed=True)
        if result.failed:
            raise RuntimeError(f"scrapli: a line was refused: {result.result[-300:]}")
    finally:
        conn.close()


# --- the table ------------------------------------------------------------------------------------

def timed(fn: Callable[[], None], rounds: int) -> list[float]:
    out = []
    for _ in range(rounds):
        start = time.monotonic()
        fn()
        out.append(time.monotonic() - start)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--switch", action="append", help="switch name(s); default: all")
    args = ap.parse_args()
    spec = load_cluster_spec(INVENTORY)
    names = args.switch or [h.name for h in spec.role(C.ROLE_SWITCHES)]
    try:
        import scrapli  # noqa: F401
        libraries = ("netmiko", "scrapli")
    except ImportError:
        print("scrapli is not installed (pip install 'scrapli<2026.2.21'): netmiko only",
              file=sys.stderr)
        libraries = ("netmiko",)
    jobs: dict[tuple[str, str], list[float]] = {}
    for name in names:
        address = str(spec.host(name).address)
        lines = intent_commands(spec, name)
        for lib in libraries:
            check = netmiko_check if lib == "netmiko" else scrapli_check
            apply = netmiko_apply if lib == "netmiko" else scrapli_apply
            jobs.setdefault((lib, "check"), []).extend(
                timed(lambda c=check, a=address: c(a, spec), args.rounds))
            jobs.setdefault((lib, f"apply ({len(lines)} lines)"), []).extend(
                timed(lambda p=apply, a=address, ls=lines: p(a, ls), args.rounds))
    print(f"{'library':<10} {'job':<20} {'median s':>9} {'min s':>7} {'runs':>5}")
    for (lib, job), times in sorted(jobs.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        print(f"{lib:<10} {job:<20} {statistics.median(times):>9.3f} {min(times):>7.3f} "
              f"{len(times):>5}")


if __name__ == "__main__":
    main()
