"""The lab network: one bridge, the controller on it, a veth or tap per host, and partitions.

No route out and no forwarding: the bridge carries only lab traffic, the controller (this
machine) holds the first address of the subnet. Bridge netfilter is switched off for the bridge
so that LVS direct routing (frames addressed to a real server's MAC carrying the VIP) crosses it
untouched. Partitions are nftables rules in a `bridge` family table of our own.
"""

from __future__ import annotations

import hashlib
import subprocess
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

from nornir_k8sha.exceptions import LabError

IFNAMSIZ = 15
NFT_TABLE = "k8sha_lab"
NETNS_DIR = Path("/run/netns")
BRIDGE_NF = ("bridge-nf-call-iptables", "bridge-nf-call-ip6tables", "bridge-nf-call-arptables")


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run `ip`; on failure raise LabError with the command and its stderr."""
    proc = subprocess.run(["ip", *args], capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise LabError(f"`ip {' '.join(args)}` failed: {proc.stderr.strip()}")
    return proc


def _ifname(prefix: str, name: str) -> str:
    """A link name within IFNAMSIZ: readable when it fits, hashed when it does not."""
    candidate = f"{prefix}{name}"
    if len(candidate) <= IFNAMSIZ and all(c.isalnum() or c in "-_." for c in name):
        return candidate
    return prefix + hashlib.sha1(name.encode()).hexdigest()[: IFNAMSIZ - len(prefix)]


def bridge_name(cluster: str) -> str:
    return _ifname("k8sha-", f"{cluster}0")


def veth_name(host: str) -> str:
    return _ifname("k8l-", host)


def tap_name(host: str) -> str:
    return _ifname("k8t-", host)


def netns_name(host: str) -> str:
    return f"k8sha-{host}"


def controller_address(network: IPv4Network) -> IPv4Address:
    """The controller takes the subnet's first host address."""
    return next(network.hosts())


def mac_for(address: IPv4Address) -> str:
    """A stable, locally administered MAC from the IPv4 address (ARP caches survive restarts)."""
    octets = address.packed
    return "02:88:" + ":".join(f"{b:02x}" for b in octets)


def link_exists(name: str, netns: str | None = None) -> bool:
    args = ["-n", netns] if netns else []
    return ip(*args, "link", "show", "dev", name, check=False).returncode == 0


def netns_exists(name: str) -> bool:
    return (NETNS_DIR / name).exists()


def ensure_bridge(name: str, controller: IPv4Address, prefix: int) -> None:
    if not link_exists(name):
        ip("link", "add", name, "type", "bridge", "stp_state", "0", "forward_delay", "0")
    ip("link", "set", name, "type", "bridge", "nf_call_iptables", "0", "nf_call_ip6tables", "0",
       "nf_call_arptables", "0", check=False)
    addr = f"{controller}/{prefix}"
    if addr not in ip("-o", "addr", "show", "dev", name).stdout:
        ip("addr", "add", addr, "dev", name)
    ip("link", "set", name, "up")


def host_sysctls(min_inotify_instances: int = 1024) -> list[str]:
    """Raise the inotify limit (each guest systemd takes several) and turn bridge netfilter off.

    Returns what was changed, for the log. Forwarding is never touched.
    """
    changed = []
    inotify = Path("/proc/sys/fs/inotify/max_user_instances")
    if int(inotify.read_text()) < min_inotify_instances:
        inotify.write_text(str(min_inotify_instances))
        changed.append(f"fs.inotify.max_user_instances={min_inotify_instances}")
    for knob in BRIDGE_NF:
        path = Path("/proc/sys/net/bridge") / knob
        if path.exists() and path.read_text().strip() != "0":
            path.write_text("0")
            changed.append(f"net.bridge.{knob}=0")
    return changed


def ensure_veth(host: str, bridge: str, address: IPv4Address, prefix: int) -> tuple[str, str]:
    """Netns `k8sha-<host>` with eth0 (the host's address) wired to the bridge by a veth."""
    ns, link = netns_name(host), veth_name(host)
    if not netns_exists(ns):
        ip("netns", "add", ns)
    if not link_exists("eth0", ns):
        if link_exists(link):  # a stale half of an old pair
            ip("link", "del", link, check=False)
        ip("link", "add", link, "type", "veth", "peer", "name", "eth0", "netns", ns)
    elif not link_exists(link):
        raise LabError(f"{host}: netns {ns} has an eth0 but the bridge side {link} is missing")
    ip("-n", ns, "link", "set", "eth0", "address", mac_for(address), check=False)
    if f"{address}/{prefix}" not in ip("-n", ns, "-o", "addr", "show", "dev", "eth0").stdout:
        ip("-n", ns, "addr", "add", f"{address}/{prefix}", "dev", "eth0")
    ip("-n", ns, "link", "set", "lo", "up")
    ip("-n", ns, "link", "set", "eth0", "up")
    ip("link", "set", link, "master", bridge, "up")
    return ns, link


def ensure_tap(host: str, bridge: str) -> str:
    tap = tap_name(host)
    if not link_exists(tap):
        ip("tuntap", "add", "dev", tap, "mode", "tap")
    ip("link", "set", tap, "master", bridge, "up")
    return tap


def set_link(name: str, up: bool) -> None:
    ip("link", "set", name, "up" if up else "down")


def link_is_up(name: str) -> bool:
    out = ip("-o", "link", "show", "dev", name, check=False).stdout
    flags = out[out.find("<") + 1: out.find(">")].split(",") if "<" in out else []
    return "UP" in flags


def delete_link(name: str) -> None:
    if link_exists(name):
        ip("link", "del", name, check=False)


def delete_netns(name: str) -> None:
    if netns_exists(name):
        ip("netns", "del", name, check=False)


# --- partitions --------------------------------------------------------------------------------


def _nft(script: str) -> None:
    proc = subprocess.run(["nft", "-f", "-"], input=script, capture_output=True, text=True)
    if proc.returncode != 0:
        raise LabError(f"nft failed: {proc.stderr.strip()}")


def partition_ruleset(groups: list[list[str]]) -> str:
    """nft script: ports inside a group reach each other (and the controller), nothing else.

    `groups` are lists of bridge-side link names. Traffic to the controller is the bridge's
    own input, not forwarding, so the controller keeps seeing both sides.
    """
    lines = [f"table bridge {NFT_TABLE} {{", "  chain forward {",
             "    type filter hook forward priority 0; policy accept;"]
    for group in groups:
        members = ", ".join(f'"{m}"' for m in group)
        lines.append(f"    iifname {{ {members} }} oifname != {{ {members} }} drop")
        lines.append(f"    oifname {{ {members} }} iifname != {{ {members} }} drop")
    lines += ["  }", "}"]
    return "\n".join(lines) + "\n"


def apply_partitions(groups: list[list[str]]) -> None:
    """Replace the whole table, so the rules are exactly `groups`."""
    clear_partitions()
    if groups:
        _nft(partition_ruleset(groups))


def clear_partitions() -> None:
    proc = subprocess.run(["nft", "list", "table", "bridge", NFT_TABLE], capture_output=True)
    if proc.returncode == 0:
        _nft(f"delete table bridge {NFT_TABLE}\n")
