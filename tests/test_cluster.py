"""The local cluster: real pysonic servers behind a real HAProxy (skipped when it is absent)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from pysonic.client import (
    AsyncSonicClient,
    Balanced,
    GrpcTransport,
    SiteConfig,
    SonicConfig,
    build_transport,
)
from pysonic.cluster import LocalCluster, backend_stats, haproxy_binary
from pysonic.cluster._cluster import prometheus_binary
from pysonic.cluster._state import pid_alive

pytestmark = [
    pytest.mark.timeout(180),
    pytest.mark.skipif(
        haproxy_binary() is None, reason="haproxy is not installed (apt-get install -y haproxy)"
    ),
]

# echoes its input after sleeping (so requests are in flight when a server dies) and batches
ECHO = """
import time
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        time.sleep(0.02)
        out = []
        for r in requests:
            x = pb_utils.get_input_tensor_by_name(r, "INPUT0").as_numpy()
            out.append(pb_utils.InferenceResponse([pb_utils.Tensor("OUTPUT0", x)]))
        return out
"""

ECHO_CONFIG = """
backend: "python"
max_batch_size: 8
input [{ name: "INPUT0" data_type: TYPE_FP32 dims: [1] }]
output [{ name: "OUTPUT0" data_type: TYPE_FP32 dims: [1] }]
dynamic_batching { max_queue_delay_microseconds: 1000 }
"""


@pytest.fixture(scope="module")
def echo_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = tmp_path_factory.mktemp("cluster-repo")
    (repo / "echo" / "1").mkdir(parents=True)
    (repo / "echo" / "1" / "model.py").write_text(ECHO)
    (repo / "echo" / "config.pbtxt").write_text(ECHO_CONFIG)
    return repo


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "pysonic", "cluster", *args],
        capture_output=True, text=True, cwd=cwd, env=env, timeout=120, check=False,
    )  # fmt: skip


def test_cli_up_status_down(echo_repo: Path, tmp_path: Path) -> None:
    state = tmp_path / "state"
    up = _cli(
        "up", "--servers", "2", "--model", "echo", "--model-repository", str(echo_repo),
        "--port", "0", "--no-prometheus", "--state-dir", str(state), cwd=tmp_path,
    )  # fmt: skip
    assert up.returncode == 0, up.stdout + up.stderr
    try:
        status = _cli("status", "--json", "--state-dir", str(state), cwd=tmp_path)
        assert status.returncode == 0, status.stderr
        info = json.loads(status.stdout)
        assert [s["lb_status"] for s in info["servers"]] == ["UP", "UP"]
        assert all(s["alive"] for s in info["servers"])
        assert info["haproxy"]["alive"]
        # a client reaches it through the site file, like a remote site's balancer
        site = SiteConfig.load(state / "site.toml")
        assert [s.url for s in site.servers] == [info["url"]]
        out = asyncio.run(_calls(site, range(6), concurrency=2))
        assert sorted(out) == list(range(6))
        again = _cli("up", "--servers", "1", "--port", "0", "--state-dir", str(state), cwd=tmp_path)
        assert again.returncode == 1
        assert "already runs" in again.stdout
    finally:
        down = _cli("down", "--state-dir", str(state), cwd=tmp_path)
    assert down.returncode == 0, down.stderr
    pids = [s["pid"] for s in info["servers"]] + [info["haproxy"]["pid"]]
    deadline = time.monotonic() + 10
    while any(pid_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(pid_alive(p) for p in pids)
    assert _cli("status", "--state-dir", str(state), cwd=tmp_path).returncode == 1


async def _calls(
    site: SiteConfig,
    ids: range,
    *,
    concurrency: int,
    kill: tuple[float, LocalCluster, int] | None = None,
) -> list[int]:
    """Send every id once (``concurrency`` at a time); return the ids the responses echo."""
    config = SonicConfig("echo", timeout=30.0, allowed_tries=1)  # no client retries: HAProxy's
    client = AsyncSonicClient(config, build_transport(config, site))
    pending = iter(ids)
    echoed: list[int] = []

    async def worker() -> None:
        for i in pending:
            out = await client.infer({"INPUT0": np.array([[i]], np.float32)})
            echoed.append(int(out["OUTPUT0"][0, 0]))

    async def killer() -> None:
        assert kill is not None
        await asyncio.sleep(kill[0])
        kill[1].kill_server(kill[2])

    try:
        tasks = [worker() for _ in range(concurrency)]
        await asyncio.gather(*tasks, *([killer()] if kill else []))
    finally:
        await client.close()
    return echoed


@pytest.fixture(scope="module")
def cluster3(echo_repo: Path) -> Iterator[LocalCluster]:
    with LocalCluster(echo_repo, servers=3, models=["echo"], prometheus=False) as cluster:
        yield cluster


def test_sigkill_under_load_loses_and_duplicates_nothing(echo_repo: Path) -> None:
    with LocalCluster(echo_repo, servers=3, models=["echo"], prometheus=False) as cluster:
        n = 1500
        echoed = asyncio.run(
            _calls(cluster.site(), range(n), concurrency=16, kill=(1.0, cluster, 1))
        )
        assert cluster.state is not None
        deadline = time.monotonic() + 10  # health checks: fall 2 x 500 ms
        while True:
            stats = {r["svname"]: r for r in backend_stats(cluster.state.stats_url)}
            if stats["s1"]["status"].startswith("DOWN") or time.monotonic() > deadline:
                break
            time.sleep(0.1)  # polling HAProxy's view, bounded by the deadline
    # every call returned its own id exactly once (the identity echo is the request id)
    assert len(echoed) == n
    counts = Counter(echoed)
    assert sorted(counts) == list(range(n))
    assert max(counts.values()) == 1
    # the killed server had traffic before it died and HAProxy marked it down
    assert int(stats["s1"]["stot"]) > 0
    # requests caught on the dead server were retried / redispatched by HAProxy, not lost
    assert int(stats["s1"]["wretr"]) + int(stats["s1"]["wredis"]) > 0
    assert stats["s1"]["status"].startswith("DOWN")
    assert int(stats["s0"]["stot"]) > int(stats["s1"]["stot"])


async def _saturate(url: str, stop: asyncio.Event, concurrency: int) -> None:
    """Direct load on one server (bypassing the balancer): its queue grows."""
    transport = GrpcTransport(url)
    config = SonicConfig("echo", timeout=60.0)
    client = AsyncSonicClient(config, transport)

    async def loop() -> None:
        while not stop.is_set():
            await client.infer({"INPUT0": np.zeros((1, 1), np.float32)})

    try:
        await asyncio.gather(*(loop() for _ in range(concurrency)))
    finally:
        await client.close()


async def _shares_under_saturation(cluster: LocalCluster) -> tuple[list[int], list[int]]:
    """Requests each server got from HAProxy and from the client's own balancer while s0 is
    saturated by direct traffic."""
    state = cluster.state
    assert state is not None
    urls = [f"127.0.0.1:{s.grpc_port}" for s in state.servers]
    stop = asyncio.Event()
    background = asyncio.create_task(_saturate(urls[0], stop, concurrency=48))
    try:
        await asyncio.sleep(1.0)  # the queue builds up
        before = {r["svname"]: int(r["stot"]) for r in backend_stats(state.stats_url)}
        await _calls(cluster.site(), range(300), concurrency=6)
        after = {r["svname"]: int(r["stot"]) for r in backend_stats(state.stats_url)}
        lb = [after[s.name] - before[s.name] for s in state.servers]

        balanced = Balanced([GrpcTransport(u) for u in urls], stats_interval_s=0.2)
        config = SonicConfig("echo", timeout=60.0)
        client = AsyncSonicClient(config, balanced)
        ids = iter(range(600))

        async def worker() -> None:
            for i in ids:
                await client.infer({"INPUT0": np.array([[i]], np.float32)})

        try:
            await asyncio.gather(*(worker() for _ in range(6)))
            own = [s.sent for s in balanced.servers]
        finally:
            await client.close()
    finally:
        stop.set()
        await background
    return lb, own


def test_load_balancer_and_client_both_avoid_a_saturated_server(cluster3: LocalCluster) -> None:
    lb, own = asyncio.run(_shares_under_saturation(cluster3))
    # s0's queue is long: HAProxy's leastconn sees our requests stay in flight there, the
    # client's balancer sees its queue time per execution; both send it the fewest
    assert lb[0] < min(lb[1:]), lb
    assert lb[0] / sum(lb) < 0.25, lb
    assert own[0] < min(own[1:]), own
    assert own[0] / sum(own) < 0.25, own


@pytest.mark.skipif(
    prometheus_binary() is None, reason="prometheus is not installed (apt-get install prometheus)"
)
def test_prometheus_scrapes_every_server_and_haproxy(echo_repo: Path) -> None:
    with LocalCluster(
        echo_repo, servers=2, models=["echo"], prometheus=True, scrape_interval_s=1.0
    ) as cluster:
        state = cluster.state
        assert state is not None
        assert state.prometheus_port is not None
        asyncio.run(_calls(cluster.site(), range(20), concurrency=2))
        api = f"http://127.0.0.1:{state.prometheus_port}/api/v1"
        deadline = time.monotonic() + 30
        while True:
            with urllib.request.urlopen(f"{api}/targets", timeout=5) as r:
                targets = json.load(r)["data"]["activeTargets"]
            health = sorted((t["labels"]["job"], t["health"]) for t in targets)
            if (health and all(h == "up" for _, h in health)) or time.monotonic() > deadline:
                break
            time.sleep(0.5)  # polling Prometheus's first scrapes, bounded by the deadline
        assert health == [("haproxy", "up"), ("pysonic", "up"), ("pysonic", "up")]
        query = urllib.parse.quote("count(nv_inference_request_success)")
        with urllib.request.urlopen(f"{api}/query?query={query}", timeout=5) as r:
            result = json.load(r)["data"]["result"]
        assert int(result[0]["value"][1]) == 2  # one series per server
