"""What `check` loads at start-up: its imports are most of its wall clock on a small machine
(issue 12.3), so modules it never uses stay unloaded. Counted, never timed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _loaded_after(statement: str, modules: list[str]) -> list[str]:
    code = (f"import sys\n{statement}\n"
            f"print(' '.join(m for m in {modules!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                         text=True, check=True, timeout=60)
    return out.stdout.split()


def test_check_does_not_load_the_template_engine() -> None:
    # the tasks render in `configure` only; `check` renders nothing
    assert _loaded_after("import nornir_k8sha.cli.check", ["jinja2"]) == []


def test_rendering_still_loads_it_on_first_use() -> None:
    assert _loaded_after("from nornir_k8sha.render import template\n"
                         "template('keepalived/keepalived.conf.j2')", ["jinja2"]) == ["jinja2"]
