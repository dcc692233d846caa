"""Time `validate` and `render` of a generated large inventory against the 3 s target.

    python bench/scale_bench.py [--hosts 1000] [--rounds 5] [--inventory DIR]

Generates an N-host inventory (bench/gen_inventory.py) unless `--inventory` is given, then times,
best and median of `--rounds`:
  - the commands in-process, as a user runs them (Typer app: reading, every rule, the rich
    tables / the written tree), and the library calls under them (`analyse`, `render_tree`);
  - each command once as a subprocess (`python -m nornir_k8sha ...`: interpreter start and
    imports included) — what a user waits for.
`render` is skipped with a message while `nornir_k8sha.render` is not importable. Not a test.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import date
from pathlib import Path

from rich.console import Console
from rich.table import Table
from typer.testing import CliRunner

sys.path.insert(0, str(Path(__file__).resolve().parent))

from gen_inventory import write as write_inventory  # noqa: E402

from nornir_k8sha.cli import app  # noqa: E402
from nornir_k8sha.topology import analyse, load_cluster_spec  # noqa: E402

TARGET_S = 3.0


def timed(action: Callable[[], object], rounds: int) -> list[float]:
    """Wall-clock seconds of each round."""
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        action()
        times.append(time.perf_counter() - started)
    return times


def cli(*args: str) -> Callable[[], None]:
    """The command in-process, output captured (rich still renders every table)."""
    runner = CliRunner()

    def run() -> None:
        result = runner.invoke(app, list(args))
        if result.exit_code != 0:
            raise SystemExit(f"{' '.join(args)} exited {result.exit_code}:\n{result.output}")

    return run


def subprocess_once(*args: str) -> float:
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "nornir_k8sha", *args], capture_output=True,
                          text=True, env={**os.environ, "COLUMNS": "120"})
    elapsed = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(args)} exited {proc.returncode}:\n{proc.stderr[-2000:]}")
    return elapsed


def render_available() -> str | None:
    """None when `render` can be benchmarked, else why not."""
    try:
        from nornir_k8sha.render import render_tree  # noqa: F401
    except ImportError as exc:
        return f"nornir_k8sha.render is not importable yet ({exc})"
    if "render" not in {c.name or c.callback.__name__ for c in app.registered_commands}:
        return "the `render` command is not registered yet"
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--inventory", type=Path, help="an existing inventory instead")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="k8sha-scale-"))
    try:
        inventory = args.inventory or write_inventory(work / "inventory", args.hosts)
        analysis = analyse(inventory)
        if analysis.errors:
            raise SystemExit(f"the inventory is invalid: {analysis.errors[:3]}")
        hosts = len(analysis.raw.hosts)
        rows: list[tuple[str, list[float]]] = []
        rows.append(("validate (command, in-process)",
                     timed(cli("validate", "-i", str(inventory)), args.rounds)))
        rows.append(("  analyse() alone", timed(lambda: analyse(inventory), args.rounds)))
        rows.append(("validate --json (in-process)",
                     timed(cli("validate", "-i", str(inventory), "--json"), args.rounds)))
        rows.append(("validate (subprocess, once)",
                     [subprocess_once("validate", "-i", str(inventory))]))
        skipped = render_available()
        files = 0
        if skipped is None:
            from nornir_k8sha.render import render_tree

            out = work / "rendered"
            rows.append(("render (command, in-process)",
                         timed(cli("render", "-i", str(inventory), "-o", str(out)),
                               args.rounds)))
            spec = load_cluster_spec(inventory)
            rows.append(("  render_tree() alone",
                         timed(lambda: render_tree(spec, work / "tree"), args.rounds)))
            files = sum(1 for p in (work / "tree").rglob("*") if p.is_file())
            rows.append(("render (subprocess, once)",
                         [subprocess_once("render", "-i", str(inventory), "-o",
                                          str(work / "sub"))]))
    finally:
        shutil.rmtree(work, ignore_errors=True)

    table = Table(title=f"validate/render of {hosts} hosts ({args.rounds} rounds) — "
                        f"{platform.node()}, {os.cpu_count()} CPU, Python "
                        f"{platform.python_version()}, {date.today()}")
    for col in ("what", "best s", "median s", "target s", ""):
        table.add_column(col, justify="left" if col == "what" else "right")
    for what, times in rows:
        best, median = min(times), statistics.median(times)
        counted = not what.startswith("  ")
        verdict = ("[green]ok[/]" if median < TARGET_S else "[red]over[/]") if counted else ""
        table.add_row(what, f"{best:.3f}", f"{median:.3f}" if len(times) > 1 else "—",
                      f"{TARGET_S:g}" if counted else "", verdict)
    console = Console()
    console.print(table)
    if skipped:
        console.print(f"render skipped: {skipped}")
    elif files:
        console.print(f"render wrote {files} files for {hosts} hosts")


if __name__ == "__main__":
    main()
