"""The deploy's HTTP waits go through its transport seam (DeployContext.http), so a simulated
fleet (bench/sim_bench.py) and unit tests never reach the network."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from nornir_k8sha.exceptions import NodesNotReady
from nornir_k8sha.tasks import etcd
from nornir_k8sha.tasks import kubeadm as K
from nornir_k8sha.topology import load_cluster_spec

from .conftest import LAB_INVENTORY, FakeTime


def answering(seen: list[str]) -> httpx.MockTransport:
    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(f"{request.url.host}{request.url.path}")
        if request.url.path == "/health":
            return httpx.Response(200, json={"health": "true"})
        if request.url.path == "/api/v1/nodes":
            return httpx.Response(200, json={"items": [
                {"metadata": {"name": n}, "status": {"conditions": [
                    {"type": "Ready", "status": "True"}]}}
                for n in ("master1", "master2", "master3", "worker1", "worker2")]})
        return httpx.Response(200, text="ok")
    return httpx.MockTransport(answer)


def test_the_waits_ask_the_transport(tmp_path: Path) -> None:
    spec = load_cluster_spec(LAB_INVENTORY)
    seen: list[str] = []
    mock = answering(seen)
    assert etcd.wait_for_quorum(spec, tmp_path, timeout=1, transport=mock) == 3
    K.wait_for_api(spec, tmp_path, timeout=0, transport=mock)
    K.wait_for_nodes(spec, tmp_path, timeout=0, transport=mock)
    assert f"{spec.vip}/readyz" in seen and f"{spec.vip}/api/v1/nodes" in seen
    assert sum(s.endswith("/health") for s in seen) == 3



def test_the_waits_say_what_they_saw_last_when_time_runs_out(tmp_path: Path,
                                                             fake_time: FakeTime) -> None:
    spec = load_cluster_spec(LAB_INVENTORY)
    etcd1 = str(spec.host("etcd1").address)

    def one_member_and_no_api(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/health":
            healthy = "true" if request.url.host == etcd1 else "false"
            return httpx.Response(200, json={"health": healthy})
        if request.url.path == "/api/v1/nodes":
            return httpx.Response(200, json={"items": [
                {"metadata": {"name": "master1"}, "status": {"conditions": [
                    {"type": "Ready", "status": "True"}]}}]})
        return httpx.Response(503, text="not ready")

    mock = httpx.MockTransport(one_member_and_no_api)
    with pytest.raises(TimeoutError, match=r"^etcd: 1/3 members healthy after 60s, quorum is 2$"):
        etcd.wait_for_quorum(spec, tmp_path, timeout=60, transport=mock)
    assert set(fake_time.slept) == {0.5} and fake_time.now == 60
    with pytest.raises(TimeoutError, match=r"not ready after 90s \(HTTP 503\)$"):
        K.wait_for_api(spec, tmp_path, timeout=90, transport=mock)
    with pytest.raises(NodesNotReady) as info:
        K.wait_for_nodes(spec, tmp_path, timeout=90, transport=mock)
    assert "master1" not in str(info.value) and "worker2" in str(info.value)
