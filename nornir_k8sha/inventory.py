"""Read an inventory directory strictly, then open Nornir on it.

Nornir's SimpleInventory accepts anything; we read the three files ourselves first so that a
malformed file, a duplicate key or an unknown field is an error naming the file, line, host and
field — never a traceback — and so that nothing is touched on any host before the inventory is
known to be good.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml
from nornir.core import Nornir
from nornir.core.configuration import Config
from nornir.core.inventory import (
    ConnectionOptions,
    Defaults,
    Group,
    Groups,
    Host,
    Hosts,
    Inventory,
    ParentGroups,
)
from nornir.core.plugins.connections import ConnectionPluginRegister
from nornir.core.plugins.inventory import InventoryPluginRegister
from nornir.core.state import GlobalState
from nornir.plugins.runners import ThreadedRunner

from nornir_k8sha.exceptions import InventoryError

HOSTS_FILE = "hosts.yaml"
GROUPS_FILE = "groups.yaml"
DEFAULTS_FILE = "defaults.yaml"

#: Keys Nornir itself understands on a host, group or defaults entry.
NORNIR_HOST_KEYS = frozenset(
    {"hostname", "port", "username", "password", "platform", "groups", "data",
     "connection_options"}
)
NORNIR_DEFAULTS_KEYS = NORNIR_HOST_KEYS - {"groups"}
#: Nornir keys whose value is handed to a connection as a string.
NORNIR_STRING_KEYS = frozenset({"hostname", "username", "password", "platform"})
#: Keys of one plugin's entry under `connection_options`.
CONNECTION_OPTION_KEYS = frozenset({"hostname", "port", "username", "password", "platform",
                                    "extras"})


@dataclass(frozen=True)
class Located:
    """Where a key was found, for error messages: `hosts.yaml:12`."""

    file: str
    line: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}"


@dataclass
class RawInventory:
    """The three files as plain data, with the line of every host/group/defaults key."""

    directory: Path
    hosts: dict[str, dict[str, Any]]
    groups: dict[str, dict[str, Any]]
    defaults: dict[str, Any]
    lines: dict[tuple[str, ...], Located] = field(default_factory=dict)

    def where(self, *path: str) -> str:
        """Best location for a key path such as ("hosts", "lvs1", "data", "vrrp_priority")."""
        for n in range(len(path), 0, -1):
            loc = self.lines.get(tuple(path[:n]))
            if loc:
                return str(loc)
        return {"hosts": HOSTS_FILE, "groups": GROUPS_FILE}.get(path[0] if path else "",
                                                                DEFAULTS_FILE)


#: libyaml's parser when PyYAML has it: pure-Python parsing is 90% of `validate` on big inventories.
_BaseLoader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _StrictLoader(_BaseLoader):  # type: ignore[misc,valid-type]
    """SafeLoader that refuses duplicate keys and remembers the line of every mapping key."""


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    mapping: dict[Any, Any] = {}
    lines: dict[Any, int] = {}
    explicit = sum(1 for k, _ in node.value if k.tag != "tag:yaml.org,2002:merge")
    loader.flatten_mapping(node)  # YAML merge keys (`<<: *anchor`) come first; explicit keys win
    merged = len(node.value) - explicit
    for index, (key_node, value_node) in enumerate(node.value):
        key = loader.construct_object(key_node, deep=True)
        if key in mapping and index >= merged and lines.get(key, 0) > 0:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r} (first at line {lines[key]})",
                key_node.start_mark,
            )
        mapping[key] = loader.construct_object(value_node, deep=True)
        # A merged key keeps a negative mark so that one explicit override is not a duplicate.
        line = key_node.start_mark.line + 1
        lines[key] = line if index >= merged else -line
    lines = {k: abs(v) for k, v in lines.items()}
    loader.key_lines[id(mapping)] = lines  # type: ignore[attr-defined]
    return mapping


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _load_yaml(path: Path) -> tuple[Any, dict[int, dict[Any, int]]]:
    return load_yaml_with_lines(path, InventoryError)


def load_yaml_with_lines(path: Path, error: type[Exception] = InventoryError
                         ) -> tuple[Any, dict[int, dict[Any, int]]]:
    """YAML data (duplicate keys refused) and, per mapping (by `id`), the line of each key.

    Every problem raises `error` naming `file:line` (runbooks use this reader too)."""
    if not path.is_file():
        raise error(f"{path}: file not found")
    text = path.read_text()
    loader = _StrictLoader(text)
    loader.key_lines = {}  # type: ignore[attr-defined]
    try:
        data = loader.get_single_data()
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        problem = getattr(exc, "problem", None) or str(exc)
        raise error(f"{where}: invalid YAML: {problem}") from None
    finally:
        loader.dispose()
    return data, loader.key_lines  # type: ignore[attr-defined]


def _record_lines(
    raw: RawInventory, file: str, prefix: tuple[str, ...], data: Any,
    key_lines: dict[int, dict[Any, int]],
) -> None:
    if not isinstance(data, dict):
        return
    for key, line in key_lines.get(id(data), {}).items():
        path = (*prefix, str(key))
        raw.lines[path] = Located(file, line)
        _record_lines(raw, file, path, data[key], key_lines)


def read_raw_inventory(directory: Path | str) -> RawInventory:
    """Read hosts/groups/defaults strictly. Raises InventoryError with file:line on bad input."""
    directory = Path(directory)
    if not directory.is_dir():
        raise InventoryError(f"{directory}: inventory directory not found")
    loaded: dict[str, Any] = {}
    raw = RawInventory(directory, {}, {}, {})
    for kind, name in (("hosts", HOSTS_FILE), ("groups", GROUPS_FILE), ("defaults", DEFAULTS_FILE)):
        path = directory / name
        if kind != "hosts" and not path.exists():
            loaded[kind] = {}
            continue
        data, key_lines = _load_yaml(path)
        data = {} if data is None else data
        if not isinstance(data, dict):
            raise InventoryError(f"{path}: expected a mapping at the top level")
        loaded[kind] = data
        _record_lines(raw, name, (kind,), data, key_lines)
    raw.hosts, raw.groups, raw.defaults = loaded["hosts"], loaded["groups"], loaded["defaults"]
    _check_shapes(raw)
    return raw


def _check_entry(raw: RawInventory, kind: str, name: str, entry: dict[str, Any],
                 allowed: frozenset[str], problems: list[str]) -> None:
    """The Nornir keys of one host, group or the defaults: known, and of the type Nornir needs."""
    label = f"{kind[:-1]} {name}" if kind != "defaults" else "defaults"
    path = (kind, name) if kind != "defaults" else (kind,)

    def problem(key: str | None, text: str) -> None:
        where = raw.where(*path, *((key,) if key else ()))
        problems.append(f"{where}: {label}: " + (f"field {key!r}: " if key else "") + text)

    for key, value in entry.items():
        key = str(key)
        if key not in allowed:
            problem(key, "unknown field")
        elif key == "port" and value is not None and (
                isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 65536):
            problem(key, f"{value!r} is not a port number (1-65535)")
        elif key in NORNIR_STRING_KEYS and value is not None and not isinstance(value, str):
            problem(key, f"{value!r} must be a string (quote it)")
        elif key == "data" and value is not None and not isinstance(value, dict):
            problem(key, "must be a mapping")
        elif key == "groups":
            if not isinstance(value, list):
                problem(key, "must be a list")
                continue
            for group in value:
                if group not in raw.groups:
                    problem(key, f"unknown group {group!r}")
        elif key == "connection_options":
            _check_connection_options(value, problem)


def _check_connection_options(value: Any, problem: Any) -> None:
    """connection_options: plugin name -> {hostname, port, username, password, platform, extras}."""
    if not isinstance(value, dict):
        problem("connection_options", "must be a mapping of connection plugin names")
        return
    for plugin, options in value.items():
        if not isinstance(options, dict):
            problem("connection_options", f"{plugin}: must be a mapping")
            continue
        for key in options:
            if key not in CONNECTION_OPTION_KEYS:
                problem("connection_options", f"{plugin}: unknown field {key!r} (plugin "
                        "settings go under 'extras')")
        extras = options.get("extras")
        if extras is not None and not isinstance(extras, dict):
            problem("connection_options", f"{plugin}: field 'extras' must be a mapping")


def _group_cycle(raw: RawInventory) -> list[str] | None:
    """A chain of groups that inherits from itself, if any (Nornir would recurse forever)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(group: str, path: list[str]) -> list[str] | None:
        state[group] = 1
        entry = raw.groups.get(group)
        parents = entry.get("groups") if isinstance(entry, dict) else None
        for parent in parents if isinstance(parents, list) else []:
            if parent not in raw.groups:
                continue
            if state.get(parent) == 1:
                return [*path, group, parent]
            if parent not in state and (cycle := visit(parent, [*path, group])):
                return cycle
        state[group] = 2
        return None

    for group in raw.groups:
        if group not in state and (cycle := visit(group, [])):
            return cycle
    return None


def _check_shapes(raw: RawInventory) -> None:
    """Nornir-level shape: known keys of the right types, groups that exist, no group cycle.

    Whatever passes here, Nornir's SimpleInventory loads without an exception.
    """
    problems: list[str] = []
    for kind, entries in (("hosts", raw.hosts), ("groups", raw.groups)):
        for key, entry in entries.items():
            name = str(key)
            if entry is None:
                problems.append(f"{raw.where(kind, name)}: {kind[:-1]} {name}: empty entry "
                                f"(write `{name}: {{}}`)")
            elif not isinstance(entry, dict):
                problems.append(f"{raw.where(kind, name)}: {kind[:-1]} {name}: expected a "
                                "mapping")
            else:
                _check_entry(raw, kind, name, entry, NORNIR_HOST_KEYS, problems)
    _check_entry(raw, "defaults", "", raw.defaults, NORNIR_DEFAULTS_KEYS, problems)
    cycle = _group_cycle(raw)
    if cycle:
        problems.append(f"{raw.where('groups', cycle[0], 'groups')}: groups inherit from "
                        f"themselves: {' -> '.join(cycle)}")
    if problems:
        raise InventoryError(f"inventory {raw.directory} is invalid:\n  " + "\n  ".join(problems))


def _connection_options(entry: dict[str, Any]) -> dict[str, ConnectionOptions]:
    return {
        name: ConnectionOptions(hostname=c.get("hostname"), port=c.get("port"),
                                username=c.get("username"), password=c.get("password"),
                                platform=c.get("platform"), extras=c.get("extras"))
        for name, c in (entry.get("connection_options") or {}).items()
    }


#: Nornir's entry-point group of connection plugins (`k8sha_ssh`, nornir-netmiko's `netmiko`).
CONNECTION_PLUGINS_GROUP = "nornir.plugins.connections"
_plugins_lock = threading.Lock()


def register_connection_plugin(name: str) -> None:
    """Register the installed connection plugin `name` (its entry point) unless it already is.

    `InitNornir` imports every installed plugin when it opens, e.g. nornir-netmiko and with it
    netmiko (~30 ms), which a command reaching no switch never uses (issue 12.3); a host of
    `open_nornir` registers such a plugin when it first opens a connection of it instead. An
    unknown name stays unregistered: Nornir then raises its PluginNotRegistered as before."""
    if name in ConnectionPluginRegister.available:
        return
    _register(lambda entry: entry.name == name)


def _register(wanted: Callable[[metadata.EntryPoint], bool]) -> None:
    with _plugins_lock:  # a run's hosts open their first connections at once
        for entry in metadata.entry_points(group=CONNECTION_PLUGINS_GROUP):
            if wanted(entry) and entry.name not in ConnectionPluginRegister.available:
                ConnectionPluginRegister.register(entry.name, entry.load())


class PluginHost(Host):
    """Nornir's Host, registering a connection plugin the first time it opens one of it."""

    __slots__ = ()

    def open_connection(self, connection: str, configuration: Config,
                        *args: Any, **kwargs: Any) -> Any:
        register_connection_plugin(connection)
        return super().open_connection(connection, configuration, *args, **kwargs)


def _element(kind: type[Host] | type[Group], name: str, entry: dict[str, Any],
             defaults: Defaults) -> Host | Group:
    return kind(name=name, hostname=entry.get("hostname"), port=entry.get("port"),
                username=entry.get("username"), password=entry.get("password"),
                platform=entry.get("platform"), data=entry.get("data"), defaults=defaults,
                connection_options=_connection_options(entry))


def inventory_from_raw(raw: RawInventory) -> Inventory:
    """Nornir's own inventory objects from an already-read directory, exactly as Nornir's
    SimpleInventory builds them (without reading the files a second time): group inheritance
    and value resolution are then Nornir's, not ours."""
    defaults = Defaults(
        hostname=raw.defaults.get("hostname"), port=raw.defaults.get("port"),
        username=raw.defaults.get("username"), password=raw.defaults.get("password"),
        platform=raw.defaults.get("platform"), data=raw.defaults.get("data"),
        connection_options=_connection_options(raw.defaults))
    groups = Groups({str(n): _element(Group, str(n), e or {}, defaults)
                     for n, e in raw.groups.items()})
    hosts = Hosts({str(n): _element(PluginHost, str(n), e or {}, defaults)
                   for n, e in raw.hosts.items()})
    for kind, elements in ((raw.groups, groups), (raw.hosts, hosts)):
        for name, element in elements.items():
            parents = (kind.get(name) or {}).get("groups") or []
            element.groups = ParentGroups([groups[str(g)] for g in parents])
    return Inventory(hosts=hosts, groups=groups, defaults=defaults)


class DirectoryInventory:
    """Nornir inventory plugin `k8sha_inventory`: an inventory directory read strictly (every
    error with its file:line), then built as Nornir's SimpleInventory would."""

    def __init__(self, directory: str) -> None:
        self.directory = directory

    def load(self) -> Inventory:
        return inventory_from_raw(read_raw_inventory(self.directory))


INVENTORY_PLUGIN = "k8sha_inventory"
InventoryPluginRegister.register(INVENTORY_PLUGIN, DirectoryInventory)


def open_nornir(directory: Path | str, *, num_workers: int = 20) -> Nornir:
    """A Nornir on the inventory dir, with our SSH plugin as every Linux host's connection.

    What `InitNornir` would make of the same configuration (threaded runner, this inventory
    plugin, Nornir's logging off), without its scans of every installed plugin. This package's
    own connection plugin (`k8sha_ssh`: every Linux host's) is registered now, in this thread,
    as InitNornir did; another (nornir-netmiko's, with netmiko) when a host first opens one
    (`PluginHost`)."""
    _register(lambda entry: entry.module.split(".")[0] == __name__.split(".")[0])
    config = Config.from_dict(
        runner={"plugin": "threaded", "options": {"num_workers": num_workers}},
        inventory={"plugin": INVENTORY_PLUGIN, "options": {"directory": str(directory)}},
        logging={"enabled": False},
    )
    config.logging.configure()
    # "off" means silent: with no handler of its own, a task's exception (which our phases
    # handle and report) reached stderr as a traceback through Python's last-resort handler.
    # A NullHandler stops only that; handlers the caller put on the root logger still see it.
    nornir_logger = logging.getLogger("nornir")
    if not nornir_logger.handlers:
        nornir_logger.addHandler(logging.NullHandler())
    return Nornir(inventory=DirectoryInventory(str(directory)).load(),
                  runner=ThreadedRunner(num_workers=num_workers), config=config,
                  data=GlobalState(dry_run=False))
