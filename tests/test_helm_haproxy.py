"""The chart's haproxy.cfg, run by a real HAProxy in front of two real pysonic servers.

Only what a Kubernetes cluster provides is replaced: the listen addresses become free ports on
127.0.0.1 and the ``server-template`` over the headless Service's DNS records becomes one
``server`` line per local server (same ``default-server`` options: h2, health checks on the
HTTP port). Balancing, health checks, retries and redispatch are the chart's.
"""

from __future__ import annotations

import csv
import io
import re
import signal
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from _chart import find, free_port, render
from pysonic.cluster import haproxy_binary
from pysonic.server.process import ServerProcess

pytest.importorskip("helm_python", reason="pip install 'pysonic[test]' (helm-python-sdk)")

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

REPO = Path(__file__).resolve().parents[1] / "model_repository"
MODEL = "identity_fp32"


def _local_config(cfg: str, grpc_port: int, stats_port: int, servers: list[ServerProcess]) -> str:
    cfg, n = re.subn(r"bind :\d+ proto h2", f"bind 127.0.0.1:{grpc_port} proto h2", cfg)
    assert n == 1
    cfg, n = re.subn(r"bind :8404\b", f"bind 127.0.0.1:{stats_port}", cfg)
    assert n == 1
    lines = "\n".join(
        f"  server srv{i} 127.0.0.1:{s.grpc_port} port {s.http_port} init-addr libc"
        for i, s in enumerate(servers, 1)
    )
    cfg, n = re.subn(r"^  server-template .*$", lines, cfg, flags=re.MULTILINE)
    assert n == 1
    return cfg


@pytest.fixture
def servers() -> Iterator[list[ServerProcess]]:
    procs = [ServerProcess(REPO, models=[MODEL], extra_args=["--http-port", "0"]) for _ in range(2)]
    try:
        for proc in procs:
            proc.start()
        yield procs
    finally:
        for proc in procs:
            proc.stop()


def _infer(url: str, n: int) -> list[float]:
    client = grpcclient.InferenceServerClient(url, channel_args=[("grpc.so_reuseport", 0)])

    def one(i: int) -> float:
        x = grpcclient.InferInput("INPUT0", [1, 8], "FP32")
        x.set_data_from_numpy(np.full((1, 8), i, np.float32))
        out = client.infer(MODEL, [x]).as_numpy("OUTPUT0")
        assert out is not None
        np.testing.assert_array_equal(out, np.full((1, 8), i, np.float32))
        return float(out[0, 0])

    try:
        with ThreadPoolExecutor(8) as pool:
            return list(pool.map(one, range(n)))
    finally:
        client.close()


def _check_status(stats_port: int) -> dict[str, tuple[str, str]]:
    """server -> (status, last health check result) from HAProxy's CSV statistics."""
    url = f"http://127.0.0.1:{stats_port}/stats;csv"
    with urllib.request.urlopen(url, timeout=2) as r:
        rows = list(csv.DictReader(io.StringIO(r.read().decode().lstrip("# "))))
    return {
        row["svname"]: (row["status"], row["check_status"])
        for row in rows
        if row["pxname"] == "pysonic_servers" and row["svname"].startswith("srv")
    }


def _check_status_or_none(stats_port: int) -> dict[str, tuple[str, str]] | None:
    try:
        return _check_status(stats_port)
    except OSError:  # not listening yet
        return None


def _wait(what: str, check: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)  # polling, bounded by the deadline


def _executions(server: ServerProcess) -> int:
    client = grpcclient.InferenceServerClient(server.grpc_url)
    try:
        stats = client.get_inference_statistics(MODEL, as_json=True)
        return int(stats["model_stats"][0].get("inference_count", 0))
    finally:
        client.close()


def test_chart_haproxy_config_balances_and_survives_a_dead_server(
    servers: list[ServerProcess], tmp_path: Path
) -> None:
    haproxy = haproxy_binary()
    if haproxy is None:
        pytest.skip("haproxy is not installed (apt-get install haproxy)")
    values = {"loadBalancer": {"type": "haproxy", "healthCheck": {"interval": "1s"}}}
    cfg = find(render(values), "ConfigMap", "-haproxy")
    grpc_port, stats_port = free_port(), free_port()
    path = tmp_path / "haproxy.cfg"
    path.write_text(_local_config(cfg["data"]["haproxy.cfg"], grpc_port, stats_port, servers))
    log = (tmp_path / "haproxy.log").open("w")
    proc = subprocess.Popen([haproxy, "-db", "-f", str(path)], stdout=log, stderr=subprocess.STDOUT)
    url = f"127.0.0.1:{grpc_port}"
    try:
        # both servers pass the chart's health check (HTTP/1.1 GET /v2/health/ready)
        _wait(
            "both servers healthy",
            lambda: (
                proc.poll() is None
                and _check_status_or_none(stats_port)
                == {"srv1": ("UP", "L7OK"), "srv2": ("UP", "L7OK")}
            ),
        )

        assert len(_infer(url, 200)) == 200
        per_server = [_executions(s) for s in servers]
        assert sum(per_server) == 200  # no request duplicated by a retry
        assert min(per_server) > 0  # leastconn used both servers

        # one server dies: connections to it fail, HAProxy retries them on the other one
        servers[0].proc.send_signal(signal.SIGKILL)
        servers[0].proc.wait()
        assert len(_infer(url, 100)) == 100
        assert _executions(servers[1]) == per_server[1] + 100
        # and the health check takes it out of rotation
        _wait("srv1 marked down", lambda: _check_status(stats_port)["srv1"][0] == "DOWN")
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()
