"""The chart's autoscaling query, rules, dashboard and Envoy admission filter on a real Prometheus.

Two real ``pysonic serve`` processes (a Python model that sleeps 20 ms per batch of at most 4
rows, one instance each) are scraped every second by a real Prometheus (Debian's package),
configured with the chart's own prometheus.yml and rules (Kubernetes pod discovery swapped for
static targets with the same ``__meta_kubernetes_*`` labels; Debian builds Prometheus without
Kubernetes discovery). Many concurrent clients saturate the servers: the KEDA query rendered by
the chart rises above its threshold, the Envoy Lua filter (run in LuaJIT, the interpreter Envoy
embeds, through a small stand-in for Envoy's Lua handle) refuses new clients; when the load
stops, both fall back.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import shutil
import subprocess
import textwrap
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from _chart import (
    NAMESPACE,
    RELEASE,
    envoy_bootstrap,
    find,
    free_port,
    lua_source,
    pod_targets,
    render,
)
from pysonic.server.process import ServerProcess

pytest.importorskip("helm_python", reason="pip install 'pysonic[test]' (helm-python-sdk)")

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

THRESHOLD_MS = 50.0
WINDOW = "5s"
MODEL = "slow"
SLOW_MODEL = """
import time

import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        time.sleep(0.02)  # a saturated coprocessor: 20 ms per batch, whatever its size
        return [
            pb_utils.InferenceResponse(
                [pb_utils.Tensor("y", pb_utils.get_input_tensor_by_name(r, "x").as_numpy() * 2)]
            )
            for r in requests
        ]
"""
SLOW_CONFIG = """
backend: "python"
max_batch_size: 4
input [{ name: "x" data_type: TYPE_FP32 dims: [4] }]
output [{ name: "y" data_type: TYPE_FP32 dims: [4] }]
dynamic_batching { max_queue_delay_microseconds: 1000 }
instance_group [{ count: 1 kind: KIND_CPU }]
"""


class Prometheus:
    """``prometheus`` on 127.0.0.1 with the given configuration directory."""

    def __init__(self, config_dir: Path, port: int) -> None:
        binary = shutil.which("prometheus")
        if binary is None:
            pytest.skip("prometheus is not installed (apt-get install prometheus)")
        self.port = port
        self.url = f"http://127.0.0.1:{self.port}"
        self._log = (config_dir / "prometheus.log").open("w")
        self.proc = subprocess.Popen(
            [
                binary,
                f"--config.file={config_dir / 'prometheus.yml'}",
                f"--storage.tsdb.path={config_dir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        self.log_path = config_dir / "prometheus.log"

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log_path.read_text()[-3000:]
            with (
                contextlib.suppress(OSError),
                urllib.request.urlopen(f"{self.url}/-/ready", timeout=1) as r,
            ):
                if r.status == 200:
                    return
            time.sleep(0.1)  # polling readiness, bounded by the deadline
        raise AssertionError(self.log_path.read_text()[-3000:])

    def query(self, expr: str) -> list[dict[str, Any]]:
        url = f"{self.url}/api/v1/query?{urllib.parse.urlencode({'query': expr})}"
        with urllib.request.urlopen(url, timeout=5) as r:
            answer = json.load(r)
        assert answer["status"] == "success", answer
        return answer["data"]["result"]

    def value(self, expr: str) -> float | None:
        result = self.query(expr)
        assert len(result) <= 1, result
        return float(result[0]["value"][1]) if result else None

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._log.close()


def _poll(what: str, check: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.25)  # Prometheus scrapes and evaluates every second
    raise AssertionError(f"timed out waiting for {what}")


class Load:
    """``concurrency`` clients per server, each sending one request after the other."""

    def __init__(self, urls: list[str], concurrency: int) -> None:
        self.urls = urls
        self.concurrency = concurrency
        self.stop = threading.Event()
        self.done = 0
        self.errors: list[BaseException] = []
        self.thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    async def _client(self, url: str) -> None:
        import tritonclient.grpc.aio as aioclient

        client = aioclient.InferenceServerClient(url, channel_args=[("grpc.so_reuseport", 0)])
        x = aioclient.InferInput("x", [1, 4], "FP32")
        x.set_data_from_numpy(np.ones((1, 4), np.float32))

        async def one() -> None:
            while not self.stop.is_set():
                try:
                    await client.infer(MODEL, [x])
                    self.done += 1
                except Exception as err:
                    self.errors.append(err)
                    return

        try:
            await asyncio.gather(*(one() for _ in range(self.concurrency)))
        finally:
            await client.close()

    async def _run(self) -> None:
        await asyncio.gather(*(self._client(url) for url in self.urls))

    def __enter__(self) -> Load:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(30)
        assert not self.errors, self.errors[:3]


class EnvoyLuaFilter:
    """The chart's rendered Lua filter in LuaJIT, behind a stand-in for Envoy's stream handle.

    The stand-in implements the four calls the filter makes (``headers():get``, ``httpCall``,
    ``respond``, ``logWarn``); ``httpCall`` really asks Prometheus (over HTTP, as Envoy's
    ``prometheus`` cluster would) and returns nil when it cannot, as Envoy does on a reset.
    """

    def __init__(self, source: str) -> None:
        lupa = pytest.importorskip("lupa.luajit21", reason="pip install lupa (LuaJIT)")
        self.lua = lupa.LuaRuntime(unpack_returned_tuples=True)
        self.lua.execute(source)
        self.make_handle = self.lua.eval(
            """
            function(path, http_call, warn)
              local h = {responded = nil}
              local headers = {}
              function headers:get(name) if name == ":path" then return path end end
              function h:headers() return headers end
              function h:httpCall(cluster, hdrs, body, timeout)
                return http_call(cluster, hdrs[":authority"], hdrs[":path"], timeout)
              end
              function h:respond(hdrs, body) self.responded = hdrs end
              function h:logWarn(message) warn(message) end
              return h
            end
            """
        )
        self.calls: list[str] = []
        self.warnings: list[str] = []

    def _http_call(self, cluster: str, authority: str, path: str, timeout_ms: int) -> Any:
        self.calls.append(cluster)
        try:
            with urllib.request.urlopen(
                f"http://{authority}{path}", timeout=timeout_ms / 1000
            ) as r:
                return self.lua.table_from({":status": str(r.status)}), r.read().decode()
        except urllib.error.HTTPError as err:
            return self.lua.table_from({":status": str(err.code)}), err.read().decode()
        except OSError:
            return None

    def on_request(self, path: str) -> dict[str, str] | None:
        """The headers the filter answered with, or None when it let the request through."""
        handle = self.make_handle(path, self._http_call, self.warnings.append)
        self.lua.globals().envoy_on_request(handle)
        return dict(handle.responded) if handle.responded is not None else None


log = logging.getLogger(__name__)

INDEX = "/inference.GRPCInferenceService/RepositoryIndex"
INFER = "/inference.GRPCInferenceService/ModelInfer"


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[ServerProcess]]:
    repo = tmp_path_factory.mktemp("repo")
    (repo / MODEL / "1").mkdir(parents=True)
    (repo / MODEL / "config.pbtxt").write_text(SLOW_CONFIG)
    (repo / MODEL / "1" / "model.py").write_text(textwrap.dedent(SLOW_MODEL))
    procs = [ServerProcess(repo, models=[MODEL]) for _ in range(2)]
    try:
        for proc in procs:
            proc.start()
        yield procs
    finally:
        for proc in procs:
            proc.stop()


def _chart_values(prometheus_url: str, fail_open: bool = True) -> dict[str, Any]:
    return {
        "autoscaling": {"window": WINDOW, "threshold": THRESHOLD_MS, "model": MODEL},
        "metrics": {"prometheusConfig": {"enabled": True, "scrapeInterval": "1s"}},
        "loadBalancer": {
            "envoy": {"admission": {"prometheusUrl": prometheus_url, "failOpen": fail_open}}
        },
    }


def _dashboard_queries(dashboard: dict[str, Any]) -> dict[str, str]:
    """Panel title/legend -> PromQL with Grafana's variables as Grafana would substitute them."""
    out = {}
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            expr = (
                target["expr"]
                .replace("$namespace", NAMESPACE)
                .replace("$model", ".*")
                .replace("$__rate_interval", WINDOW)
            )
            out[f"{panel['title']} / {target['legendFormat']}"] = expr
    return out


def test_queue_latency_query_rules_and_admission(
    servers: list[ServerProcess], tmp_path: Path
) -> None:
    port = free_port()
    objects = render(_chart_values(f"http://127.0.0.1:{port}"))
    config = find(objects, "ConfigMap", "-prometheus")["data"]
    template = find(objects, "Deployment", "-server")["spec"]["template"]["metadata"]
    pods = [
        {
            "name": f"{RELEASE}-pysonic-server-{i}",
            "ip": "127.0.0.1",
            "port": server.grpc_port,  # discovery finds every container port ...
            "labels": template["labels"],
            # ... and the chart's relabeling moves the target to the annotated metrics port
            "annotations": {
                **template["annotations"],
                "prometheus.io/port": str(server.metrics_port),
            },
        }
        for i, server in enumerate(servers)
    ]
    prometheus_yml = pod_targets(yaml.safe_load(config["prometheus.yml"]), pods)
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(prometheus_yml))
    (tmp_path / "pysonic-rules.yml").write_text(config["pysonic-rules.yml"])
    query = find(objects, "ScaledObject")["spec"]["triggers"][0]["metadata"]["query"]
    assert f"[{WINDOW}]" in query
    assert f'model="{MODEL}"' in query
    # the form of the query, without the chart's guard against 0/0 when idle
    sel = f'namespace="{NAMESPACE}",pod=~"{RELEASE}-pysonic-server-.*",model="{MODEL}"'
    bare = (
        f"sum(rate(nv_inference_queue_duration_us{{{sel}}}[{WINDOW}])) / "
        f"(sum(rate(nv_inference_exec_count{{{sel}}}[{WINDOW}])) * 1000)"
    )
    assert query == f"{bare[:-1]} > 0) or vector(0)"
    admission = EnvoyLuaFilter(lua_source(envoy_bootstrap(objects)))
    dashboard = json.loads(find(objects, "ConfigMap", "-dashboard")["data"]["pysonic.json"])

    # the port was free a moment ago; Prometheus failing to bind it would show in wait_ready
    prom = Prometheus(tmp_path, port)
    try:
        prom.wait_ready()
        targets = f'up{{job="pysonic",namespace="{NAMESPACE}"}}'
        _poll("both servers scraped", lambda: len(prom.query(f"{targets} == 1")) == 2)
        pod_labels = {r["metric"]["pod"] for r in prom.query(targets)}
        assert pod_labels == {p["name"] for p in pods}

        # idle: the query reads 0, and the filter admits new clients
        _poll("idle reading", lambda: prom.value(query) == 0.0)
        assert admission.on_request(INDEX) is None
        assert admission.calls == ["prometheus"]
        assert admission.on_request(INFER) is None  # only RepositoryIndex is gated
        assert admission.calls == ["prometheus"]

        with Load([s.grpc_url for s in servers], concurrency=24) as load:
            _poll(
                "the queue-latency query above threshold",
                lambda: (prom.value(query) or 0.0) > THRESHOLD_MS,
            )
            saturated = prom.value(query)
            refused = admission.on_request(INDEX)
            assert refused is not None
            assert refused["grpc-status"] == "14"
            assert refused["content-type"] == "application/grpc"
            assert "saturated" in refused["grpc-message"]
            assert admission.on_request(INFER) is None  # running clients keep going

            # the recording rules (rate over 1m) follow the same load
            rule = f'pysonic:queue_time_per_execution_ms:rate1m{{model="{MODEL}"}}'
            _poll(
                "the recording rule above threshold", lambda: (prom.value(rule) or 0) > THRESHOLD_MS
            )
            batch = prom.value(f'pysonic:batch_size:rate1m{{model="{MODEL}"}}')
            assert batch is not None
            assert 1.0 < batch <= 4.0
            log.info("saturated: query %.1f ms per execution, batch %.2f", saturated, batch)
            # rate over 1m: the throughput builds up while the window fills with load
            throughput = f'pysonic:inferences_per_second:rate1m{{model="{MODEL}"}}'
            _poll("the throughput rule", lambda: (prom.value(throughput) or 0) > 20)
            assert prom.value(f'pysonic:servers:count{{namespace="{NAMESPACE}"}}') == 2
            per_server = prom.query("pysonic:server_queue_time_per_execution_ms:rate1m")
            assert {r["metric"]["pod"] for r in per_server} == pod_labels

            # every dashboard expression is valid PromQL; those on pysonic's metrics have data
            for name, expr in _dashboard_queries(dashboard).items():
                result = prom.query(expr)
                absent = ("GPU", "deployment replicas")  # no GPUs or kube-state-metrics here
                if not any(a in name for a in absent):
                    assert result, name
        assert load.done > 100

        # idle again: the query falls back to 0 once the window holds no executions, and the
        # filter admits again; the bare form reads NaN (0/0), hence the chart's guard
        _poll("the query back to 0", lambda: prom.value(query) == 0.0)
        assert saturated is not None
        assert saturated > THRESHOLD_MS
        assert admission.on_request(INDEX) is None
        assert str(prom.value(bare)) == "nan"
    finally:
        prom.stop()

    # Prometheus gone: fail open by default (admit and warn), refuse when failOpen is false
    assert admission.on_request(INDEX) is None
    assert "admitting" in admission.warnings[-1]
    closed = EnvoyLuaFilter(lua_source(envoy_bootstrap(render(_chart_values(prom.url, False)))))
    refused = closed.on_request(INDEX)
    assert refused is not None
    assert refused["grpc-status"] == "14"
    assert "Prometheus did not answer" in refused["grpc-message"]
