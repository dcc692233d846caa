"""Generate a large, valid inventory for the scale benchmark (`bench/scale_bench.py`).

    python bench/gen_inventory.py OUT_DIR [--hosts 1000] [--machines 0]

The shape is the seed's topology grown to N hosts: 2 LVS directors, HAProxy and masters and etcd
(5 members) spread one per machine, 1 Harbor, a few ToR switches of every supported platform,
and workers for the rest, on one private network sized to fit. Every host declares the
recommended size, so `validate` reports no warnings: what the bench times is the happy path a
large real inventory takes. Not a test.
"""

from __future__ import annotations

import argparse
import math
from ipaddress import IPv4Network
from pathlib import Path
from typing import Any

import yaml

from nornir_k8sha import constants as C

#: Vendor platforms only: FRR is the lab's switch.
SWITCH_PLATFORMS = tuple(p for p in C.SWITCH_PLATFORMS if p != "frr")
SIZES = {  # declared (cpu, memory_gb): at least the recommended table of topology.py
    C.ROLE_LVS: (4, 4),
    C.ROLE_HAPROXY: (4, 4),
    C.ROLE_ETCD: (8, 16),
    C.ROLE_MASTERS: (8, 16),
    C.ROLE_WORKERS: (16, 64),
    C.ROLE_HARBOR: (4, 8),
}


def role_counts(total: int) -> dict[str, int]:
    """How many hosts per role for `total` hosts; workers take the rest."""
    fixed = {
        C.ROLE_LVS: 2,
        C.ROLE_HAPROXY: max(2, min(8, total // 250)),
        C.ROLE_ETCD: 5 if total >= 20 else 3,
        C.ROLE_MASTERS: 3,
        C.ROLE_HARBOR: 1,
        C.ROLE_SWITCHES: max(0, min(8, total // 100)),
    }
    workers = total - sum(fixed.values())
    if workers < 1:
        raise SystemExit(f"{total} hosts are too few: the topology needs {sum(fixed.values()) + 1}")
    return {**fixed, C.ROLE_WORKERS: workers}


def host_network(total: int) -> IPv4Network:
    """A private network with room for every host, the VIP and some slack."""
    prefix = min(24, 32 - math.ceil(math.log2(total + 64)))
    return IPv4Network(f"10.64.0.0/{prefix}")


def generate(total: int = 1000, machines: int = 0) -> tuple[dict, dict, dict]:
    """hosts, groups, defaults as plain data."""
    counts = role_counts(total)
    machines = machines or max(5, total // 40)
    net = host_network(total)
    addresses = net.hosts()
    vip = next(addresses)
    hosts: dict[str, dict[str, Any]] = {}
    slot = 0
    for role, count in counts.items():
        for i in range(1, count + 1):
            name = f"{role}{i:04d}"
            # Small roles: one host per machine (i-1); workers are spread round robin.
            machine = (i - 1) % machines if role != C.ROLE_WORKERS else slot % machines
            slot += 1
            data: dict[str, Any] = {"physical_host": f"pm{machine + 1:03d}"}
            if role in SIZES:
                data["cpu"], data["memory_gb"] = SIZES[role]
            if role == C.ROLE_LVS:
                data["vrrp_priority"] = 150 - 10 * i
            entry: dict[str, Any] = {"hostname": str(next(addresses)), "groups": [role]}
            if role == C.ROLE_SWITCHES:
                entry["platform"] = SWITCH_PLATFORMS[(i - 1) % len(SWITCH_PLATFORMS)]
            entry["data"] = data
            hosts[name] = entry
    groups: dict[str, Any] = {role: {} for role in C.ROLES}
    groups[C.ROLE_SWITCHES] = {"platform": "cisco_ios"}
    defaults = {
        "username": "root",
        "port": C.SSH_PORT,
        "connection_options": {
            "k8sha_ssh": {"extras": {"key_file": ".k8sha/scale/ssh/id_ed25519",
                                     "known_hosts": ".k8sha/scale/ssh/known_hosts"}},
        },
        "data": {
            "cluster_name": "scale",
            "vip": str(vip),
            "prefix_length": net.prefixlen,
            "apiserver_port": C.APISERVER_PORT,
            "vrrp": {"version": 3, "advert_int": 0.1, "router_id": 51},
            "registry": {"name": "harbor.scale.example"},
        },
    }
    return hosts, groups, defaults


def write(directory: Path, total: int = 1000, machines: int = 0) -> Path:
    """Write hosts.yaml, groups.yaml and defaults.yaml into `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    hosts, groups, defaults = generate(total, machines)
    for name, data in (("hosts.yaml", hosts), ("groups.yaml", groups),
                       ("defaults.yaml", defaults)):
        (directory / name).write_text(yaml.safe_dump(data, sort_keys=False))
    return directory


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="directory to write the inventory into")
    parser.add_argument("--hosts", type=int, default=1000, help="number of hosts")
    parser.add_argument("--machines", type=int, default=0,
                        help="physical machines (default: hosts/40, at least 5)")
    args = parser.parse_args()
    write(args.out, args.hosts, args.machines)
    print(f"{args.hosts} hosts written to {args.out}")


if __name__ == "__main__":
    main()
