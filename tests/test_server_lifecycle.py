"""Statistics, Prometheus metrics, model control, graceful shutdown and the `pysonic serve` CLI."""

from __future__ import annotations

import concurrent.futures
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from prometheus_client.parser import text_string_to_metric_families
from tritonclient.utils import InferenceServerException

from conftest import build_repository
from pysonic.server import EmbeddedServer, ServerOptions, StartupError

pytestmark = pytest.mark.timeout(180)


def _inp(name: str, arr: np.ndarray, datatype: str = "FP32") -> grpcclient.InferInput:
    i = grpcclient.InferInput(name, list(arr.shape), datatype)
    i.set_data_from_numpy(arr)
    return i


def _scrape(port: int) -> dict[tuple[str, str, str], float]:
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    samples = {}
    for family in text_string_to_metric_families(body):
        for s in family.samples:
            if "model" in s.labels:
                samples[(s.name, s.labels["model"], s.labels.get("le", ""))] = s.value
    return samples


@pytest.fixture
def fresh_server(tmp_path: Path):
    opts = ServerOptions(
        model_repository=build_repository(tmp_path / "repo"),
        host="127.0.0.1",
        grpc_port=0,
        metrics_port=0,
        model_control_mode="explicit",
        load_models=["dense", "add_sub", "sleepy"],
        drain_timeout=10,
    )
    with EmbeddedServer(opts) as srv:
        yield srv


def test_statistics_and_metrics_agree(fresh_server: EmbeddedServer) -> None:
    client = grpcclient.InferenceServerClient(fresh_server.grpc_url)
    sizes = [1, 2, 5, 8]
    for n in sizes:
        client.infer("dense", [_inp("x", np.ones((n, 16), np.float32))])
    with pytest.raises(InferenceServerException):
        client.infer("dense", [_inp("x", np.ones((1, 3), np.float32))])
    stats = client.get_inference_statistics("dense").model_stats[0]
    s = stats.inference_stats
    assert s.success.count == len(sizes)
    assert s.fail.count == 1
    assert stats.inference_count == sum(sizes)
    assert stats.execution_count == len(sizes)  # sequential: one batch per request
    assert {b.batch_size for b in stats.batch_stats} == set(sizes)
    assert s.queue.count == len(sizes)
    assert s.compute_infer.count == len(sizes)
    assert s.compute_infer.ns > 0
    assert stats.last_inference > 0

    m = _scrape(fresh_server.metrics_port)
    assert m[("nv_inference_request_success", "dense", "")] == len(sizes)
    assert m[("nv_inference_request_failure", "dense", "")] == 1
    assert m[("nv_inference_count", "dense", "")] == sum(sizes)
    assert m[("nv_inference_exec_count", "dense", "")] == len(sizes)
    assert m[("nv_inference_queue_duration_us", "dense", "")] == pytest.approx(s.queue.ns / 1000)
    assert m[("nv_inference_compute_infer_duration_us", "dense", "")] == pytest.approx(
        s.compute_infer.ns / 1000
    )
    assert m[("nv_inference_request_duration_us", "dense", "")] == pytest.approx(
        s.success.ns / 1000
    )
    assert m[("nv_inference_pending_request_count", "dense", "")] == 0
    assert m[("pysonic_inference_request_duration_us_count", "dense", "")] == len(sizes)
    assert m[("pysonic_inference_request_duration_us_bucket", "dense", "+Inf")] == len(sizes)
    assert m[("nv_inference_request_success", "add_sub", "")] == 0
    client.close()


def test_explicit_load_unload(fresh_server: EmbeddedServer) -> None:
    client = grpcclient.InferenceServerClient(fresh_server.grpc_url)
    assert not client.is_model_ready("identity_fp16")
    index = {m.name: m for m in client.get_model_repository_index().models}
    assert index["identity_fp16"].state == "UNAVAILABLE"
    client.load_model("identity_fp16")
    assert client.is_model_ready("identity_fp16")
    x = np.ones((1, 3), np.float16)
    assert client.infer("identity_fp16", [_inp("INPUT0", x, "FP16")]).as_numpy("OUTPUT0").shape
    client.unload_model("identity_fp16")
    assert not client.is_model_ready("identity_fp16")
    with pytest.raises(InferenceServerException, match="not ready"):
        client.infer("identity_fp16", [_inp("INPUT0", x, "FP16")])
    with pytest.raises(InferenceServerException, match="unknown model 'nosuch'"):
        client.load_model("nosuch")
    client.close()


def test_reload_under_load_loses_nothing(fresh_server: EmbeddedServer) -> None:
    client = grpcclient.InferenceServerClient(fresh_server.grpc_url)
    x = np.ones((1, 4), np.float32)
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(client.infer, "sleepy", [_inp("x", x)]) for _ in range(16)]
        time.sleep(0.05)
        client.load_model("sleepy")  # swap in new instances while requests are queued
        results = [f.result(timeout=60) for f in futures]
    for r in results:
        np.testing.assert_array_equal(r.as_numpy("y"), 2 * x)
    client.close()


def test_model_control_none_refuses_load(tmp_path: Path) -> None:
    opts = ServerOptions(
        model_repository=build_repository(tmp_path / "repo"),
        host="127.0.0.1",
        grpc_port=0,
        metrics_port=None,
    )
    with EmbeddedServer(opts) as srv:
        client = grpcclient.InferenceServerClient(srv.grpc_url)
        assert client.is_model_ready("identity_fp16")  # mode none loads everything
        with pytest.raises(InferenceServerException, match="model-control-mode") as info:
            client.unload_model("dense")
        assert "UNAVAILABLE" in str(info.value.status())
        client.close()


def test_graceful_shutdown_finishes_in_flight(tmp_path: Path) -> None:
    opts = ServerOptions(
        model_repository=build_repository(tmp_path / "repo"),
        host="127.0.0.1",
        grpc_port=0,
        metrics_port=None,
        model_control_mode="explicit",
        load_models=["sleepy"],
        drain_timeout=20,
    )
    srv = EmbeddedServer(opts).start()
    client = grpcclient.InferenceServerClient(srv.grpc_url)
    x = np.arange(4, dtype=np.float32).reshape(1, 4)
    with concurrent.futures.ThreadPoolExecutor(12) as pool:
        futures = [pool.submit(client.infer, "sleepy", [_inp("x", x)]) for _ in range(12)]
        deadline = time.monotonic() + 10
        batcher = srv.server.core.get_version("sleepy").batcher
        while batcher.in_flight < 12:  # every request is inside the server
            assert time.monotonic() < deadline
            time.sleep(0.005)
        srv.stop()
        results = [f.result(timeout=30) for f in futures]
    for r in results:
        np.testing.assert_array_equal(r.as_numpy("y"), 2 * x)
    with pytest.raises(InferenceServerException):
        client.infer("sleepy", [_inp("x", x)], client_timeout=5)
    client.close()


def _free_port_from_log(proc: subprocess.Popen, pattern: str, timeout: float = 60) -> int:
    deadline = time.monotonic() + timeout
    assert proc.stderr is not None
    seen = []
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            if proc.poll() is not None:
                break
            continue
        seen.append(line)
        m = re.search(pattern, line)
        if m:
            return int(m.group(1))
    raise AssertionError(f"server did not report its port: {''.join(seen)}")


def _cli_repository(path: Path) -> Path:
    """The test repository without the models whose test backend lives in this process only."""
    repo = build_repository(path)
    for name in ("sleepy", "limited"):
        shutil.rmtree(repo / name)
    return repo


@pytest.mark.slow
def test_cli_serve_sigterm(tmp_path: Path) -> None:
    repo = _cli_repository(tmp_path / "repo")
    env = {**os.environ, "COLUMNS": "200"}
    with subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pysonic",
            "serve",
            "--model-repository",
            str(repo),
            "--host",
            "127.0.0.1",
            "--grpc-port",
            "0",
            "--metrics-port",
            "0",
        ],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
        env=env,
    ) as proc:
        try:
            port = _free_port_from_log(proc, r"gRPC on 127\.0\.0\.1:(\d+)")
            client = grpcclient.InferenceServerClient(f"127.0.0.1:{port}")
            assert client.is_server_ready()
            out = client.infer("dense", [_inp("x", np.ones((2, 16), np.float32))])
            assert out.as_numpy("probs").shape == (2, 4)
            client.close()
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=60) == 0
        finally:
            if proc.poll() is None:
                proc.kill()


@pytest.mark.slow
def test_cli_serve_fails_on_taken_port(tmp_path: Path, fresh_server: EmbeddedServer) -> None:
    repo = _cli_repository(tmp_path / "repo2")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pysonic",
            "serve",
            "--model-repository",
            str(repo),
            "--host",
            "127.0.0.1",
            "--grpc-port",
            str(fresh_server.grpc_port),
            "--metrics-port",
            "0",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1
    assert "cannot bind gRPC" in proc.stderr


def _options(tmp_path: Path, *models: str) -> ServerOptions:
    """An explicit-mode server on the test repository, loading ``models``."""
    return ServerOptions(
        model_repository=build_repository(tmp_path / "repo"),
        host="127.0.0.1",
        grpc_port=0,
        metrics_port=None,
        model_control_mode="explicit",
        load_models=list(models),
        drain_timeout=10,
    )


def _wait_in_flight(srv: EmbeddedServer, model: str, n: int) -> None:
    batcher = srv.server.core.get_version(model).batcher
    deadline = time.monotonic() + 10
    while batcher.in_flight < n:
        assert time.monotonic() < deadline, f"{batcher.in_flight} in flight, wanted {n}"
        time.sleep(0.002)


def _wait_running(srv: EmbeddedServer, model: str, n: int) -> None:
    batcher = srv.server.core.get_version(model).batcher
    deadline = time.monotonic() + 10
    while batcher.in_flight - batcher.pending_count < n:
        assert time.monotonic() < deadline, f"{batcher.in_flight - batcher.pending_count} running"
        time.sleep(0.002)


def test_queue_full_and_queue_timeout_over_grpc(tmp_path: Path) -> None:
    opts = _options(tmp_path, "limited")
    x = np.ones((1, 4), np.float32)
    with EmbeddedServer(opts) as srv:
        client = grpcclient.InferenceServerClient(srv.grpc_url)
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            # one running + two queued fill the default level (max_queue_size 2); the first
            # must be executing before the others arrive, or the third finds the queue full
            futures = [pool.submit(client.infer, "limited", [_inp("x", x)])]
            _wait_running(srv, "limited", 1)
            futures += [pool.submit(client.infer, "limited", [_inp("x", x)]) for _ in range(2)]
            _wait_in_flight(srv, "limited", 3)
            t0 = time.perf_counter()
            with pytest.raises(InferenceServerException) as info:
                client.infer("limited", [_inp("x", x)])
            assert time.perf_counter() - t0 < 0.25  # rejected at once, not after the queue
            assert "RESOURCE_EXHAUSTED" in str(info.value.status())
            assert "max_queue_size 2" in info.value.message()
            # priority 1 has its own queue with a 50 ms timeout: it expires behind the sleeper
            with pytest.raises(InferenceServerException, match="timeout expired") as info:
                client.infer("limited", [_inp("x", x)], priority=1)
            assert "UNAVAILABLE" in str(info.value.status())
            for f in futures:
                np.testing.assert_array_equal(f.result(timeout=30).as_numpy("y"), 2 * x)
        stats = client.get_inference_statistics("limited").model_stats[0].inference_stats
        assert stats.success.count == 3
        assert stats.fail.count == 2
        client.close()


def test_client_deadline_drops_queued_request(tmp_path: Path) -> None:
    opts = _options(tmp_path, "limited")
    x = np.ones((1, 4), np.float32)
    with EmbeddedServer(opts) as srv:
        client = grpcclient.InferenceServerClient(srv.grpc_url)
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            running = pool.submit(client.infer, "limited", [_inp("x", x)])
            _wait_in_flight(srv, "limited", 1)
            with pytest.raises(InferenceServerException, match="Deadline"):
                client.infer("limited", [_inp("x", x)], client_timeout=0.05)
            batcher = srv.server.core.get_version("limited").batcher
            deadline = time.monotonic() + 5
            while batcher.pending_count:  # the abandoned request leaves the queue
                assert time.monotonic() < deadline
                time.sleep(0.002)
            running.result(timeout=30)
        assert batcher.in_flight == 0
        stats = client.get_inference_statistics("limited").model_stats[0]
        assert stats.execution_count == 1  # the abandoned request never ran
        client.close()


def test_broken_model_without_exit_on_error(tmp_path: Path) -> None:
    repo = build_repository(tmp_path / "repo")
    (repo / "broken" / "1").mkdir(parents=True)
    (repo / "broken" / "config.pbtxt").write_text('name: "broken"\nmax_batch_size: [oops\n')
    opts = ServerOptions(
        model_repository=repo,
        host="127.0.0.1",
        grpc_port=0,
        metrics_port=None,
        model_control_mode="explicit",
        load_models=["dense", "broken"],
        exit_on_error=False,
    )
    with EmbeddedServer(opts) as srv:
        client = grpcclient.InferenceServerClient(srv.grpc_url)
        assert client.is_server_live()
        assert not client.is_server_ready()  # a startup model failed: not ready, as Triton
        assert client.is_model_ready("dense")
        index = {m.name: m for m in client.get_model_repository_index().models}
        assert index["broken"].state == "UNAVAILABLE"
        assert "config.pbtxt:2" in index["broken"].reason
        client.close()


def test_broken_model_with_exit_on_error_fails_startup(tmp_path: Path) -> None:
    repo = build_repository(tmp_path / "repo")
    (repo / "broken" / "1").mkdir(parents=True)
    (repo / "broken" / "config.pbtxt").write_text('name: "broken"\nmax_batch_size: [oops\n')
    opts = ServerOptions(
        model_repository=repo,
        host="127.0.0.1",
        grpc_port=0,
        metrics_port=None,
        model_control_mode="explicit",
        load_models=["broken"],
    )
    with pytest.raises(StartupError, match="broken"):
        EmbeddedServer(opts).start()
