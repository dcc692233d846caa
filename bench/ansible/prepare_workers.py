"""This tool's side of the workers' node preparation, as one command the bench can time.

    python bench/ansible/prepare_workers.py -i INVENTORY [--limit a,b] [--json]

Runs the first step of the `workers` phase (`phases.workers.prepare_worker`: swap, modules,
sysctls, containerd, kubelet, registry trust) through the deploy engine (`run_stages`, the same
connection budget and report), and stops there: `deploy --phase workers` would go on to mint a
join token on a master, which the side-by-side benchmark has not deployed. Prints the report
(as `deploy` does); exit 1 when a host failed.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from nornir.core.task import Result, Task

from nornir_k8sha import constants as C
from nornir_k8sha.deploy import DeployContext, NornirPhase, run_stages
from nornir_k8sha.inventory import open_nornir
from nornir_k8sha.phases.workers import prepare_worker
from nornir_k8sha.report import RunReport
from nornir_k8sha.topology import load_cluster_spec


class PrepareWorkers(NornirPhase):
    name = "workers-prepare"
    title = "workers: node preparation (the first step of `workers`)"
    roles = (C.ROLE_WORKERS,)

    def task(self, task: Task, ctx: DeployContext) -> Result:
        return prepare_worker(task, ctx)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-i", "--inventory", type=Path, default=Path("inventory/lab"))
    ap.add_argument("--limit", default=None, help="comma-separated host names")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    spec = load_cluster_spec(args.inventory)
    limit = frozenset(x for x in args.limit.split(",") if x) if args.limit else None
    report = RunReport("deploy", spec.name)
    ctx = DeployContext(spec, open_nornir(args.inventory), report, limit=limit,
                        state_dir=spec.state_dir)
    run_stages(ctx, [[PrepareWorkers()]])
    if args.json:
        print(json.dumps(report.as_dict()))
    else:
        for p in report.phases:
            for o in p.hosts.values():
                print(f"{o.host:12} {o.status:8} {o.message}")
        print(f"{report.changed} changed, {len(report.failed_hosts)} failed "
              f"in {report.duration:.2f} s")
    return report.exit_code


if __name__ == "__main__":
    sys.exit(main())
