"""The fake fleet stays out of the product: only tests import `nornir_k8sha.testing`."""

from __future__ import annotations

import ast
from pathlib import Path

import nornir_k8sha
from nornir_k8sha import testing, transport

PACKAGE = Path(nornir_k8sha.__file__).resolve().parent


def _imports(path: Path) -> set[str]:
    """Every module named by an import statement of `path` (absolute names)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
    return names


def test_no_product_module_imports_the_fakes() -> None:
    offenders = sorted(
        str(p.relative_to(PACKAGE.parent))
        for p in PACKAGE.rglob("*.py")
        if p.name != "testing.py" and "nornir_k8sha.testing" in _imports(p)
    )
    assert offenders == [], f"product modules importing the test fakes: {offenders}"


def test_transport_holds_the_protocol_and_framing_but_no_fake() -> None:
    assert {"Transport", "CommandResult", "BatchScript", "raise_for_batch"} <= set(vars(transport))
    fakes = {"FakeHost", "FakeFleet", "install_fake", "SimulatedDebian", "FakeUnit", "Call"}
    assert fakes & set(vars(transport)) == set()
    assert fakes <= set(vars(testing))


def test_a_fake_host_satisfies_the_transport_protocol() -> None:
    assert isinstance(testing.FakeHost("h1"), transport.Transport)
