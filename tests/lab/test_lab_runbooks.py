"""A runbook a user would write, run for real on the deployed lab (issue 10): take one HAProxy
node out of service for maintenance without losing a request — drain it from IPVS, check, stop,
start, re-add — under the load probe through the VIP. Runs after the deploy tests (file order);
alone it deploys first when no cluster answers.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from tests.conftest import LAB_INVENTORY, REPO
from tests.lab.test_lab_deploy import cli, vip_readyz

pytestmark = pytest.mark.lab


@pytest.fixture(scope="module")
def deployed(lab) -> None:  # noqa: ANN001
    admin = REPO / lab.spec.state_dir / "admin.conf"
    if not admin.exists() or vip_readyz(lab.spec) != 200:
        proc = cli("deploy", "-i", str(LAB_INVENTORY))
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]


def test_haproxy_maintenance_loses_no_request(deployed: None, tmp_path: Path) -> None:
    junit = tmp_path / "maintenance.xml"
    proc = cli("runbook", "run", "haproxy-maintenance", "-i", str(LAB_INVENTORY),
               "--junit", str(junit))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "passed" in proc.stdout
    cases = ET.parse(junit).getroot().iter("testcase")
    assert [c.find("failure") for c in cases] == [None]
    assert os.stat(junit).st_mode & 0o777 == 0o600  # reports are private
    after = cli("check", "-i", str(LAB_INVENTORY))
    assert after.returncode == 0, after.stdout[-3000:]  # everything back as it was
