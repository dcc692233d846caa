"""netmiko vs scrapli on the lab's FRR switches: the switch check and an apply, side by side.

    python bench/switch_bench.py [--rounds 5] [--switch switch1] [--transport system ...]

Needs a deployed lab (`lab up` + `deploy`) and, for the scrapli columns, scrapli's classic line
(the one nornir-scrapli supports: it pins scrapli below 2026.2.21; later scrapli is a rewrite)
installed for the bench only, never into the project's environment:

    python -m pip install --target .bench-scrapli 'scrapli<2026.2.21'

(the bench puts `.bench-scrapli` on its path). scrapli runs with each `--transport` asked for
(default: `system`, OpenSSH, scrapli's own default; its `paramiko` transport loads RSA keys
only, and the lab's key is ed25519). Both libraries log in the same way (the lab's key,
known_hosts verified, user netops, whose login shell is vtysh) and run the same commands:

- check: log in, `show ip bgp summary`, `show ip route <vip>`, `show running-config`, log out
  (what `switch.check` sends on a cisco_ios switch);
- apply: log in, enter configuration mode, send every line of the rendered intent inside its
  parents (all already present: the switch does not change), leave, log out.

Prints per library and job the median, min and max of `--rounds` runs per switch (the libraries
take turns, round by round, so that each sees the same load). Run from the
repository root, as root (the lab's key is root's). Changes nothing on the switches.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.append(str(REPO / ".bench-scrapli"))  # scrapli for the bench only (see above)

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

def scrapli_connect(address: str, transport: str) -> Any:
    from scrapli.driver.core import IOSXEDriver  # FRR's vtysh answers like IOS

    conn = IOSXEDriver(host=address, auth_username=USER, auth_private_key=str(KEY),
                       auth_strict_key=True, ssh_known_hosts_file=str(KNOWN_HOSTS),
                       transport=transport, timeout_ops=C.SWITCH_COMMAND_TIMEOUT)
    conn.open()
    return conn


def scrapli_check(address: str, spec: ClusterSpec, transport: str) -> None:
    conn = scrapli_connect(address, transport)
    try:
        result = conn.send_commands(check_commands(spec))
        if result.failed:
            raise RuntimeError(f"scrapli: a show command failed: {result.result[-300:]}")
    finally:
        conn.close()


def scrapli_apply(address: str, lines: list[str], transport: str) -> None:
    conn = scrapli_connect(address, transport)
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
    ap.add_argument("--transport", action="append", choices=("system", "paramiko"),
                    help="scrapli transport(s); default: system (scrapli's paramiko "
                    "transport loads RSA keys only; the lab's key is ed25519)")
    args = ap.parse_args()
    spec = load_cluster_spec(INVENTORY)
    names = args.switch or [h.name for h in spec.role(C.ROLE_SWITCHES)]
    runners: dict[str, tuple[Callable[..., None], Callable[..., None]]] = {
        "netmiko": (netmiko_check, netmiko_apply)}
    try:
        import scrapli  # noqa: F401
        for t in args.transport or ("system",):
            runners[f"scrapli/{t}"] = (partial(scrapli_check, transport=t),
                                       partial(scrapli_apply, transport=t))
    except ImportError:
        print("scrapli is not installed (see the docstring): netmiko only", file=sys.stderr)
    jobs: dict[tuple[str, str], list[float]] = {}
    for _ in range(args.rounds):  # interleaved: each library sees the same machine load
        for name in names:
            address = str(spec.host(name).address)
            lines = intent_commands(spec, name)
            for lib, (check, apply) in runners.items():
                jobs.setdefault((lib, "check"), []).extend(
                    timed(lambda c=check, a=address: c(a, spec), 1))
                jobs.setdefault((lib, f"apply ({len(lines)} lines)"), []).extend(
                    timed(lambda p=apply, a=address, ls=lines: p(a, ls), 1))
    print(f"{'library':<18} {'job':<20} {'median s':>9} {'min s':>7} {'max s':>7} {'runs':>5}")
    for (lib, job), times in sorted(jobs.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        print(f"{lib:<18} {job:<20} {statistics.median(times):>9.3f} {min(times):>7.3f} "
              f"{max(times):>7.3f} {len(times):>5}")


if __name__ == "__main__":
    main()
