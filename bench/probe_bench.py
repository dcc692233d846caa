"""How well the runbook load probe measures an outage of known length; prints a table.

    python bench/probe_bench.py [--rounds 5] [--durations 0.1 0.4 1.2] [--modes down hang]

A fake apiserver on 127.0.0.1 (the one of tests/test_runbook_load.py: mTLS with a throw-away
cluster PKI) is taken down for exactly D seconds while a LoadProbe with its default settings
(fresh-TLS read every 70 ms, writes every 250 ms, 1 s request timeout) runs through it:

- `down`: every request in the window is refused at once (a stopped service, a reset);
- `hang`: every request in the window gets no answer (a power cut, a black hole) and fails
  only at the 1 s timeout.

The measured downtime should exceed D by at most the slack every expectation adds
(runbook/expect.py: 2 x read interval + 0.1 s = 0.24 s) in both modes; it may fall short of D
by about one request's round trip (successes count at their end). Not a test.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nornir_k8sha.runbook.expect import slack  # noqa: E402
from nornir_k8sha.runbook.load import LoadProbe  # noqa: E402
from nornir_k8sha.runbook.measure import figures  # noqa: E402
from tests.test_runbook_load import FakeAPI, server_context, spec_for  # noqa: E402


def one_round(ctx: object, pki_dir: Path, mode: str, duration: float) -> tuple[float, int]:
    """(measured downtime, failed requests) of one outage of `duration` seconds."""
    api = FakeAPI(ctx)  # type: ignore[arg-type]
    server = threading.Thread(target=api.serve_forever, daemon=True)
    server.start()
    try:
        probe = LoadProbe(spec_for(api), pki_dir)
        with probe:
            time.sleep(1.0)
            api.mode = mode
            probe.mark("down", "fault")
            time.sleep(duration)
            api.mode = "up"
            probe.mark("up", "lift")
            api.release.set()  # hung handlers end (their clients have timed out by now)
            time.sleep(1.5)
        samples, marks = probe.stop()
        fig = figures(samples, fault_at=marks[0].at, lifted_at=marks[1].at, acknowledged=0,
                      lost=0)
        probe.cleanup()
        return fig.downtime_s, fig.failed
    finally:
        api.shutdown()
        api.server_close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--durations", type=float, nargs="+", default=[0.1, 0.4, 1.2])
    parser.add_argument("--modes", nargs="+", default=["down", "hang"],
                        choices=["down", "hang", "error"])
    args = parser.parse_args()
    pad, _ = slack()
    table = Table(title=f"load probe vs a known outage ({args.rounds} rounds each; slack "
                  f"{pad:.2f} s)")
    for col in ("mode", "outage s", "measured min", "median", "max", "max - outage",
                "within slack", "failed (median)"):
        table.add_column(col, justify="right")
    with tempfile.TemporaryDirectory() as tmp:
        ctx = server_context(Path(tmp))
        for mode in args.modes:
            for duration in args.durations:
                runs = [one_round(ctx, Path(tmp), mode, duration) for _ in range(args.rounds)]
                down = [d for d, _ in runs]
                excess = max(down) - duration
                table.add_row(mode, f"{duration:.2f}", f"{min(down):.3f}",
                              f"{statistics.median(down):.3f}", f"{max(down):.3f}",
                              f"{excess:+.3f}", "yes" if excess <= pad else "NO",
                              f"{statistics.median(f for _, f in runs):.0f}")
    console = Console()
    console.print(table)
    console.print(f"{platform.node()}: {os.cpu_count()} CPUs, Python "
                  f"{platform.python_version()}, {time.strftime('%Y-%m-%d')}")


if __name__ == "__main__":
    main()
