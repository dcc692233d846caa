"""docs/inventory.md documents every settings field with its real default, and every rule.

A new field in settings.py, a changed default or a new topology rule without docs fails CI.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from nornir_k8sha import topology
from nornir_k8sha.settings import ClusterSettings, HostData

from .conftest import REPO

DOC = REPO / "docs" / "inventory.md"


def fields(model: type[BaseModel], prefix: str = "") -> Iterator[tuple[str, FieldInfo]]:
    """Every leaf field of a settings model, dotted (`vrrp.advert_int`), nested models walked."""
    for name, info in model.model_fields.items():
        annotation = info.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            yield from fields(annotation, f"{prefix}{name}.")
        else:
            yield f"{prefix}{name}", info


def documented_default(info: FieldInfo) -> str:
    """The default as the docs write it (YAML spelling)."""
    if info.is_required():
        return "required"
    value: Any = info.get_default(call_default_factory=True)
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def table_rows() -> dict[str, str]:
    """Markdown table rows keyed by their first cell's `name`."""
    rows = {}
    for line in DOC.read_text().splitlines():
        match = re.match(r"^\| `([^`]+)` \|", line)
        if match:
            rows.setdefault(match.group(1), line)
    return rows


ALL_FIELDS = [*fields(ClusterSettings), *fields(HostData)]


def test_the_walk_finds_nested_fields() -> None:
    names = [name for name, _ in ALL_FIELDS]
    assert {"vip", "vrrp.advert_int", "etcd.peer_port", "kubernetes.pod_subnet",
            "physical_host"} <= set(names)
    assert "vrrp" not in names  # a nested model is walked, not listed


@pytest.mark.parametrize(("name", "info"), ALL_FIELDS, ids=[n for n, _ in ALL_FIELDS])
def test_every_field_is_documented_with_its_default(name: str, info: FieldInfo) -> None:
    row = table_rows().get(name)
    assert row is not None, f"docs/inventory.md has no table row for `{name}`"
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[2] == f"`{documented_default(info)}`", (
        f"`{name}`: documented default {cells[2]} is not `{documented_default(info)}`")
    assert cells[3], f"`{name}` has no description"


def test_every_rule_is_documented() -> None:
    source = (REPO / "nornir_k8sha" / "topology.py").read_text()
    rules = set(re.findall(r'out\.add\(\s*"(?:error|warning)",\s*"([a-z0-9-]+)"', source))
    assert len(rules) > 20  # the regex still matches how rules are written
    rows = table_rows()
    missing = sorted(r for r in rules if r not in rows)
    assert not missing, f"rules without a row in docs/inventory.md: {missing}"


def test_documented_minimum_counts_match_the_rules() -> None:
    rows = table_rows()
    for role, minimum in topology.MIN_COUNTS.items():
        cells = [c.strip() for c in rows[role].strip("|").split("|")]
        assert cells[2] == str(minimum), role
