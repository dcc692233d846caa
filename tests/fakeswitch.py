"""A scripted switch CLI for tests, served over SSH by tests/sshserver.py (shell channels).

It speaks enough of each platform's prompts and modes for netmiko's real drivers (cisco_ios,
cisco_nxos, arista_eos, juniper_junos; FRR's vtysh answers as cisco_ios) and keeps a running
config that the lines really change, with its own small config model (not the product's
planner): sections entered by their command, `exit`/`end`, `no ...`/`delete ...`, single-valued
settings replaced. Per platform: NX-OS checkpoints, EOS sessions and checkpoints, Junos private
candidates, `commit confirmed` and `rollback N`. BGP state is derived from the config: a
neighbour is Established when its remote-as is the one in `peers`, and then sends the VIP.

Faults: `reject` (a regex: the line is refused with the platform's error text) and `hang` (a
regex: on its first match the session stops answering, as a switch that times out half-way;
later sessions work again).
"""

from __future__ import annotations

import copy
import json
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import paramiko

ERRORS = {
    "cisco_ios": "% Invalid input detected at '^' marker.",
    "frr": "% Unknown command: {line}",
    "cisco_nxos": "% Invalid command at '^' marker.",
    "arista_eos": "% Invalid input",
    "juniper_junos": "syntax error.",
}
INDENT = {"cisco_ios": 1, "frr": 1, "cisco_nxos": 2, "arista_eos": 3, "juniper_junos": 0}
TOP_SECTIONS = re.compile(r"^(router |route-map \S+ (permit|deny)|interface |vrf )")
SUB_SECTIONS = re.compile(r"^(address-family |neighbor \S+$)")
#: (pattern, how many leading words name the setting) for lines that hold one value.
VALUED = ((re.compile(r"^neighbor \S+ route-map \S+ (in|out)$"), None),
          (re.compile(r"^neighbor \S+ timers connect "), 4),
          (re.compile(r"^neighbor \S+ (remote-as|description|timers|maximum-\S+"
                      r"|advertisement-interval) "), 3),
          (re.compile(r"^(bgp )?router-id "), -1),
          (re.compile(r"^(remote-as|description|maximum-prefix|timers|advertisement-interval) "),
           1),
          (re.compile(r"^route-map \S+ (in|out)$"), None),
          (re.compile(r"^set .* (peer-as|type|description|autonomous-system|router-id|maximum"
                      r"|hold-time) "), -1))


def setting_of(line: str) -> str | None:
    for pattern, words in VALUED:
        if pattern.match(line):
            parts = line.split()
            if words is None:  # route-map NAME in|out: the direction names the setting
                return " ".join(parts[:-2] + parts[-1:])
            return " ".join(parts[:words])
    return None


Tree = list[list[Any]]  # [[line, children], ...]


def _find(nodes: Tree, line: str) -> list[Any] | None:
    return next((n for n in nodes if n[0] == line), None)


def _put(nodes: Tree, line: str) -> list[Any]:
    node = _find(nodes, line)
    if node is not None:
        return node
    key = setting_of(line)
    old = next((n for n in nodes if key and setting_of(n[0]) == key), None)
    if old is not None:
        old[0] = line
        return old
    node = [line, []]
    nodes.append(node)
    return node


def _render(nodes: Tree, indent: int, depth: int = 0) -> list[str]:
    out: list[str] = []
    for line, children in nodes:
        out.append(" " * (indent * depth) + line)
        out += _render(children, indent, depth + 1)
    return out


def parse(text: str) -> Tree:
    root: Tree = []
    stack: list[tuple[int, Tree]] = [(-1, root)]
    for raw in text.splitlines():
        if not raw.strip() or raw.strip().startswith(("!", "#")):
            continue
        depth = len(raw) - len(raw.lstrip())
        while stack[-1][0] >= depth:
            stack.pop()
        node = _put(stack[-1][1], raw.strip())
        stack.append((depth, node[1]))
    return root


@dataclass
class FakeSwitch:
    platform: str
    hostname: str = "switch1"
    running_text: str = ""
    #: neighbour address -> the AS it really has (a session comes up when the config agrees)
    peers: dict[str, int] = field(default_factory=dict)
    vip: str = "10.88.0.100"
    reject: str | None = None
    hang: str | None = None
    username: str = "netops"
    #: BGP back-off as real speakers do it: a session that failed stays Idle, even once the
    #: config agrees again, until it is cleared (`clear ip bgp ADDR`, Junos `clear bgp neighbor`).
    idle_hold: bool = False
    #: seconds between the lines of a command's output (output that arrives in many reads)
    line_delay: float = 0.0

    def __post_init__(self) -> None:
        self.running: Tree = parse(self.running_text)
        self.saved: Tree | None = None
        self.saves = 0
        self.received: list[str] = []
        #: bare newlines received (netmiko sends one to find the prompt)
        self.blank_lines = 0
        self.logins = 0  # interactive sessions (netmiko's)
        self.exec_requests = 0  # commands sent as exec requests (`answer`)
        self.checkpoints: dict[str, Tree] = {}
        self.history: list[Tree] = [copy.deepcopy(self.running)]  # Junos rollback 0, 1, ...
        self.held: set[str] = set()  # sessions held Idle by the back-off (idle_hold)
        self.cleared: list[str] = []
        self.lock = threading.Lock()

    # --- what tests read ------------------------------------------------------------------
    def config_text(self) -> str:
        return "\n".join(_render(self.running, INDENT[self.platform]))

    def config_lines(self) -> list[str]:
        """Every line with its parents, for comparisons that ignore order (as the switch
        prints them)."""
        out: list[str] = []

        def walk(nodes: Tree, path: tuple[str, ...]) -> None:
            for line, children in nodes:
                if line.startswith("address-family ") and not children:
                    continue  # IOS and FRR print no empty address-family
                out.append(" / ".join((*path, line)))
                walk(children, (*path, line))
        walk(self.running, ())
        return sorted(out)

    def config_received(self) -> list[str]:
        return [ln for ln in self.received if not ln.startswith(("show ", "terminal ", "set cli"))]

    # --- BGP derived from the config ---------------------------------------------------------
    def sessions(self) -> dict[str, str]:
        lines = [" ".join(p) for p in self._paths(self.running, ())]
        out: dict[str, str] = {}
        for addr, real_as in self.peers.items():
            configured: str | None = None
            for ln in lines:
                m = re.search(rf"neighbor {re.escape(addr)} remote-as (\d+)$", ln)
                if m:
                    configured = m.group(1)
            if self.platform == "juniper_junos":
                if any(f" neighbor {addr}" in ln for ln in lines):
                    peer_as = [ln.split()[-1] for ln in lines if " peer-as " in ln]
                    configured = peer_as[-1] if peer_as else None
            if configured is None:
                continue
            if configured != str(real_as):
                out[addr] = "Active"
                if self.idle_hold:
                    self.held.add(addr)
            else:
                out[addr] = "Idle" if addr in self.held else "Established"
        return out

    def clear(self, line: str) -> str | None:
        """A hard clear of one session: the back-off is over (None: not a clear command)."""
        m = re.match(r"^clear (?:ip bgp|bgp neighbor) (\S+)$", line)
        if not m:
            return None
        self.cleared.append(m.group(1))
        self.held.discard(m.group(1))
        return ""

    def _paths(self, nodes: Tree, path: tuple[str, ...]) -> list[tuple[str, ...]]:
        out = []
        for line, children in nodes:
            out.append((*path, line))
            out += self._paths(children, (*path, line))
        return out

    def bgp_summary(self) -> str:
        s = self.sessions()
        up = {a: 1 if st == "Established" else 0 for a, st in s.items()}
        if self.platform == "frr":
            return json.dumps({"routerId": "10.88.0.71", "as": 65000, "peers": {
                a: {"remoteAs": self.peers[a], "state": st, "pfxRcd": up[a]}
                for a, st in s.items()}})
        if self.platform == "arista_eos":
            return json.dumps({"vrfs": {"default": {"peers": {
                a: {"peerState": st, "prefixReceived": up[a], "prefixAccepted": up[a]}
                for a, st in s.items()}}}})
        if self.platform == "cisco_nxos":
            rows = [{"neighborid": a, "state": st, "prefixreceived": str(up[a])}
                    for a, st in s.items()]
            return json.dumps({"TABLE_vrf": {"ROW_vrf": {"vrf-name-out": "default", "TABLE_af": {
                "ROW_af": {"af-id": "1", "TABLE_saf": {"ROW_saf": {"safi": "1",
                "TABLE_neighbor": {"ROW_neighbor": rows[0] if len(rows) == 1 else rows}}}}}}}})
        if self.platform == "juniper_junos":
            return json.dumps({"bgp-information": [{"bgp-peer": [
                {"peer-address": [{"data": f"{a}+179"}], "peer-state": [{"data": st}],
                 "bgp-rib": [{"name": [{"data": "inet.0"}],
                              "accepted-prefix-count": [{"data": str(up[a])}]}]}
                for a, st in s.items()]}]})
        rows_text = [f"{a:<15} 4 {self.peers[a]:>10} 5 5 1 0 0 00:01:00 "
                     f"{up[a] if st == 'Established' else st:>12}" for a, st in s.items()]
        return ("BGP router identifier 10.88.0.71, local AS number 65000\n\n"
                "Neighbor        V           AS MsgRcvd MsgSent   TblVer  InQ OutQ Up/Down  "
                "State/PfxRcd\n" + "\n".join(rows_text))

    def vip_route(self) -> str:
        hops = sorted(a for a, st in self.sessions().items() if st == "Established")
        if self.platform == "frr":
            if not hops:
                return "{}"
            return json.dumps({f"{self.vip}/32": [{"prefix": f"{self.vip}/32", "protocol": "bgp",
                               "selected": True, "installed": True, "nexthops": [
                                   {"ip": h, "fib": True, "active": True} for h in hops]}]})
        if self.platform == "arista_eos":
            routes = {f"{self.vip}/32": {"routeType": "eBGP", "hardwareProgrammed": True,
                                         "vias": [{"nexthopAddr": h} for h in hops]}}
            routes = routes if hops else {}
            return json.dumps({"vrfs": {"default": {"routes": routes}}})
        if self.platform == "cisco_nxos":
            if not hops:
                return json.dumps({})
            return json.dumps({"TABLE_vrf": {"ROW_vrf": {"TABLE_addrf": {"ROW_addrf": {
                "TABLE_prefix": {"ROW_prefix": {"ipprefix": f"{self.vip}/32", "TABLE_path": {
                    "ROW_path": [{"ipnexthop": h, "ubest": "true", "clientname": "bgp-65000"}
                                 for h in hops]}}}}}}}})
        if self.platform == "juniper_junos":
            if not hops:
                return json.dumps({"route-information": [{"route-table": [{}]}]})
            return json.dumps({"route-information": [{"route-table": [{"rt": [{
                "rt-destination": [{"data": f"{self.vip}/32"}], "rt-entry": [{
                    "active-tag": [{"data": "*"}], "protocol-name": [{"data": "BGP"}],
                    "nh": [{"to": [{"data": h}]} for h in hops]}]}]}]}]})
        if not hops:
            return "% Network not in table"
        return (f"Routing entry for {self.vip}/32\n  Known via \"bgp 65000\", distance 20\n"
                "  Routing Descriptor Blocks:\n"
                + "\n".join(f"  * {h}, from {h}, 00:01:00 ago" for h in hops))

    # --- SSH -------------------------------------------------------------------------------
    def serve(self, chan: paramiko.Channel) -> None:
        self.logins += 1
        Session(self, chan).run()

    def answer(self, chan: paramiko.Channel, command: str) -> None:
        """One exec request (`ssh switch COMMAND`): the CLI runs it and answers with its output
        alone, no banner, echo or prompt; a refused command exits 1, as vtysh does. vtysh
        (frr) runs each line of the request in turn and stops at the first it refuses."""
        self.exec_requests += 1
        lines = command.strip().splitlines() if self.platform == "frr" else [command.strip()]
        session, outputs, refused = Session(self, chan), [], False
        for line in lines:
            out = session.handle(line.strip()) or ""
            outputs.append(out)
            refused = out == ERRORS[self.platform].format(line=line.strip())
            if refused:
                break
        out = "\n".join(outputs)
        try:
            chan.sendall((out + "\n").encode())
            chan.send_exit_status(1 if refused else 0)
            chan.shutdown_write()
            chan.close()
        except (OSError, EOFError, paramiko.SSHException):
            pass


class Session:
    """One login: its mode stack, its candidate (EOS session, Junos private)."""

    def __init__(self, dev: FakeSwitch, chan: paramiko.Channel) -> None:
        self.dev, self.chan = dev, chan
        self.config = False
        self.stack: list[list[Any]] = []
        self.candidate: Tree | None = None
        self.session_name = ""

    # prompts
    def prompt(self) -> str:
        d, p = self.dev, self.dev.platform
        if p == "juniper_junos":
            return (f"\r\n[edit]\r\n{d.username}@{d.hostname}# " if self.config
                    else f"{d.username}@{d.hostname}> ")
        if not self.config:
            return f"{d.hostname}#"
        mode = "config"
        if self.session_name:
            mode = f"config-s-{self.session_name[:6]}"
        if self.stack:
            first = self.stack[-1][0].split()[0]
            mode += {"router": "-router", "route-map": "-route-map", "neighbor": "-router-neighbor",
                     "address-family": "-router-af"}.get(first, "-if")
        return f"{d.hostname}({mode})#"

    def send(self, text: str) -> None:
        self.chan.sendall(text.replace("\n", "\r\n").replace("\r\r\n", "\r\n").encode())

    def run(self) -> None:
        self.send(f"\nWelcome to the scripted {self.dev.platform} switch\n" + self.prompt())
        buf = b""
        try:
            while True:
                data = self.chan.recv(4096)
                if not data:
                    return
                buf += data
                while b"\n" in buf or b"\r" in buf:
                    cut = min(i for i in (buf.find(b"\n"), buf.find(b"\r")) if i >= 0)
                    raw, buf = buf[:cut].decode(), buf[cut + 1:]
                    if buf.startswith(b"\n") and raw is not None:
                        buf = buf[1:]
                    line = raw.strip()
                    if line and self.dev.hang and re.search(self.dev.hang, line):
                        self.dev.hang = None
                        self.dev.received.append(line)
                        self.send(raw + "\n")
                        while not self.chan.closed:  # stuck: never answers again
                            if self.chan.recv(4096) == b"":
                                return
                    if not line:
                        self.dev.blank_lines += 1
                    out = self.handle(line) if line else ""
                    if out is None:
                        return
                    if out and self.dev.line_delay:
                        self.send(raw + "\n")
                        for piece in out.split("\n"):
                            self.send(piece + "\n")
                            time.sleep(self.dev.line_delay)
                        self.send(self.prompt())
                        continue
                    # echo, output and prompt in one write (as one TCP segment, no Nagle wait)
                    self.send(raw + "\n" + (out + "\n" if out else "") + self.prompt())
        except (OSError, EOFError, paramiko.SSHException):
            return

    # commands
    def handle(self, line: str) -> str | None:
        dev = self.dev
        with dev.lock:
            if self.config or line != "exit":  # a logout is not a command to the switch
                dev.received.append(line)
            if dev.reject and re.search(dev.reject, line):
                return ERRORS[dev.platform].format(line=line)
            if dev.platform == "juniper_junos":
                return self.junos(line)
            if self.config:
                return self.configure(line)
            return self.exec(line)

    def exec(self, line: str) -> str | None:
        dev = self.dev
        if line == "exit":
            return None
        if line.startswith("terminal width"):
            return "Width set to 511 columns." if dev.platform == "arista_eos" else ""
        if line.startswith("terminal length"):
            return "Pagination disabled." if dev.platform == "arista_eos" else ""
        if line in ("configure terminal", "configure") or line.startswith("configure session "):
            self.config, self.stack = True, []
            if line.startswith("configure session "):
                self.session_name = line.split()[-1]
                self.candidate = copy.deepcopy(dev.running)
            return "Enter configuration commands, one per line.  End with CNTL/Z."
        if line.startswith("show running-config"):
            return "Building configuration...\n\n!\n" + dev.config_text() + "\n!\nend"
        if re.match(r"show (ip bgp summary|bgp ipv4 unicast summary)", line):
            return dev.bgp_summary()
        if line.startswith("show ip route"):
            return dev.vip_route()
        cleared = dev.clear(line)
        if cleared is not None:
            return cleared
        if line in ("write memory", "copy running-config startup-config"):
            dev.saved, dev.saves = copy.deepcopy(dev.running), dev.saves + 1
            return "[OK]" if line.startswith("write") else "Copy complete."
        m = re.match(r"^(?:checkpoint|configure checkpoint save) (\S+)$", line)
        if m:
            dev.checkpoints[m.group(1)] = copy.deepcopy(dev.running)
            return "...........Done"
        m = re.match(r"^(?:rollback running-config checkpoint|configure checkpoint restore) (\S+)$",
                     line)
        if m:
            if m.group(1) not in dev.checkpoints:
                return f"% Checkpoint {m.group(1)} does not exist"
            dev.running = copy.deepcopy(dev.checkpoints[m.group(1)])
            return "Rollback completed successfully."
        m = re.match(r"^(?:no checkpoint |delete checkpoint:)(\S+)$", line)
        if m:
            dev.checkpoints.pop(m.group(1), None)
            return ""
        if line.startswith("no configure session "):
            return ""
        return ERRORS[dev.platform].format(line=line)

    def tree(self) -> Tree:
        return self.candidate if self.candidate is not None else self.dev.running

    def configure(self, line: str) -> str:
        if line == "end":
            self.leave()
            return ""
        if line in ("exit", "exit-address-family"):
            if self.stack:
                self.stack.pop()
            else:
                self.leave()
            return ""
        if self.session_name and line in ("commit", "abort"):
            if line == "commit":
                self.dev.running = self.candidate or []
            self.leave()
            return ""
        if TOP_SECTIONS.match(line) or line.startswith(("ip prefix-list", "feature ")):
            self.stack = []
        where = self.stack[-1][1] if self.stack else self.tree()
        if line.startswith("no "):
            target = line[3:]
            node = _find(where, target) or next(
                (n for n in where if n[0].startswith(target + " ")), None)
            if node is not None:
                where.remove(node)
            return ""
        node = _put(where, line)
        if TOP_SECTIONS.match(line) or SUB_SECTIONS.match(line):
            self.stack.append(node)
        return ""

    def leave(self) -> None:
        self.config, self.stack, self.session_name, self.candidate = False, [], "", None

    def junos(self, line: str) -> str | None:
        dev = self.dev
        if not self.config:
            if line == "exit":
                return None
            if line.startswith("set cli screen-width"):
                return "Screen width set to 511"
            if line.startswith("set cli complete-on-space"):
                return "Disabling complete-on-space"
            if line.startswith("set cli screen-length"):
                return "Screen length set to 0"
            if line in ("configure", "configure private"):
                self.config, self.candidate = True, copy.deepcopy(dev.running)
                return ("warning: uncommitted changes will be discarded on exit\n"
                        "Entering configuration mode")
            if line.startswith("show configuration"):
                return dev.config_text()
            if line.startswith("show bgp summary"):
                return dev.bgp_summary()
            if line.startswith("show route"):
                return dev.vip_route()
            cleared = dev.clear(line)
            return cleared if cleared is not None else "\nunknown command."
        assert self.candidate is not None
        if line in ("exit configuration-mode", "exit"):
            self.leave()
            return "Exiting configuration mode"
        if line.startswith("commit"):
            dev.running = copy.deepcopy(self.candidate)
            dev.history.insert(0, copy.deepcopy(dev.running))
            if " confirmed" in line:
                return ("configuration check succeeds\ncommit confirmed will be automatically "
                        "rolled back in 5 minutes unless confirmed\ncommit complete\n\n"
                        "# commit confirmed will be rolled back in 5 minutes")
            return "commit complete"
        m = re.match(r"^rollback (\d+)$", line)
        if m:
            self.candidate = copy.deepcopy(dev.history[int(m.group(1))])
            return "load complete"
        if line.startswith("set "):
            _put(self.candidate, line)
            return ""
        if line.startswith("delete "):
            target = "set " + line[len("delete "):]
            for n in [n for n in self.candidate if n[0] == target or n[0].startswith(target + " ")]:
                self.candidate.remove(n)
            return ""
        return "syntax error."
