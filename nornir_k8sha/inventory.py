"""Read an inventory directory strictly, then open Nornir on it.

Nornir's SimpleInventory accepts anything; we read the three files ourselves first so that a
malformed file, a duplicate key or an unknown field is an error naming the file, line, host and
field — never a traceback — and so that nothing is touched on any host before the inventory is
known to be good.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from nornir import InitNornir
from nornir.core import Nornir

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


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys and remembers the line of every mapping key."""


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    mapping: dict[Any, Any] = {}
    lines: dict[Any, int] = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        if key in mapping:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r} (first at line {lines[key]})",
                key_node.start_mark,
            )
        mapping[key] = loader.construct_object(value_node, deep=True)
        lines[key] = key_node.start_mark.line + 1
    loader.key_lines[id(mapping)] = lines  # type: ignore[attr-defined]
    return mapping


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _load_yaml(path: Path) -> tuple[Any, dict[int, dict[Any, int]]]:
    if not path.is_file():
        raise InventoryError(f"{path}: file not found")
    text = path.read_text()
    loader = _StrictLoader(text)
    loader.key_lines = {}  # type: ignore[attr-defined]
    try:
        data = loader.get_single_data()
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        problem = getattr(exc, "problem", None) or str(exc)
        raise InventoryError(f"{where}: invalid YAML: {problem}") from None
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


def _check_shapes(raw: RawInventory) -> None:
    """Nornir-level shape: known keys, mappings where mappings belong, groups that exist."""
    problems: list[str] = []
    for kind, entries in (("hosts", raw.hosts), ("groups", raw.groups)):
        for name, entry in entries.items():
            if entry is None:
                entry = entries[name] = {}
            if not isinstance(entry, dict):
                problems.append(f"{raw.where(kind, str(name))}: {kind[:-1]} {name}: expected a "
                                "mapping")
                continue
            for key in entry:
                if key not in NORNIR_HOST_KEYS:
                    problems.append(f"{raw.where(kind, str(name), str(key))}: {kind[:-1]} {name}: "
                                    f"unknown field {key!r}")
            groups = entry.get("groups", [])
            if not isinstance(groups, list):
                problems.append(f"{raw.where(kind, str(name), 'groups')}: {kind[:-1]} {name}: "
                                "field 'groups' must be a list")
                continue
            for group in groups:
                if group not in raw.groups:
                    problems.append(f"{raw.where(kind, str(name), 'groups')}: {kind[:-1]} {name}: "
                                    f"field 'groups': unknown group {group!r}")
            if "data" in entry and not isinstance(entry["data"], dict):
                problems.append(f"{raw.where(kind, str(name), 'data')}: {kind[:-1]} {name}: "
                                "field 'data' must be a mapping")
    for key in raw.defaults:
        if key not in NORNIR_DEFAULTS_KEYS:
            problems.append(f"{raw.where('defaults', str(key))}: defaults: unknown field {key!r}")
    if "data" in raw.defaults and not isinstance(raw.defaults["data"], dict):
        problems.append(f"{raw.where('defaults', 'data')}: defaults: field 'data' must be a "
                        "mapping")
    if problems:
        raise InventoryError("inventory is invalid:\n  " + "\n  ".join(problems))


def open_nornir(directory: Path | str, *, num_workers: int = 20, raw: RawInventory | None = None
                ) -> Nornir:
    """A Nornir on the inventory dir, with our SSH plugin as every Linux host's connection.

    `raw` (already read and validated) skips the second read.
    """
    directory = Path(directory)
    if raw is None:
        read_raw_inventory(directory)
    return InitNornir(
        runner={"plugin": "threaded", "options": {"num_workers": num_workers}},
        inventory={
            "plugin": "SimpleInventory",
            "options": {
                "host_file": str(directory / HOSTS_FILE),
                "group_file": str(directory / GROUPS_FILE),
                "defaults_file": str(directory / DEFAULTS_FILE),
            },
        },
        logging={"enabled": False},
    )
