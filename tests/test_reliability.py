"""Robustness against a real ``pysonic serve`` process: admission control (queue bound, per-client
limit, byte budgets checked before allocation), timeouts end to end (client deadline, queue
timeout, cancellation of queued work) with a Python-backend model that sleeps, and graceful
drain on SIGTERM with a clean restart on the same ports."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import statistics
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import psutil
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as aioclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from pysonic.server.process import ServerProcess

pytestmark = pytest.mark.timeout(180)

# y = 2 x after sleeping the model's "sleep_ms" per execution (one request per execution); the
# number of executions started is written to <model dir>/started, for tests to poll.
SLEEPER = """
import json
import signal
import time
from pathlib import Path

import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        params = json.loads(args["model_config"])["parameters"]
        self.sleep = float(params["sleep_ms"]["string_value"]) / 1000
        self.marks = Path(args["model_repository"]) / "started"
        self.started = 0

    def execute(self, requests):
        responses = []
        for request in requests:
            self.started += 1
            self.marks.write_text(str(self.started))
            time.sleep(self.sleep)
            x = pb_utils.get_input_tensor_by_name(request, "x").as_numpy()
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("y", x * 2)]))
        return responses
"""


def sleeper_config(name: str, sleep_ms: int, queue: int, extra: str = "") -> str:
    return f"""
name: "{name}"
backend: "python"
max_batch_size: 1
input [{{ name: "x" data_type: TYPE_FP32 dims: [-1] }}]
output [{{ name: "y" data_type: TYPE_FP32 dims: [-1] }}]
dynamic_batching {{
  default_queue_policy {{ max_queue_size: {queue} allow_timeout_override: true {extra} }}
}}
parameters {{ key: "sleep_ms" value {{ string_value: "{sleep_ms}" }} }}
"""


def sleeper_repository(root: Path) -> Path:
    """``slow`` (200 ms, queue 4), ``wide`` (200 ms, queue 64), ``held`` (1 s, queue 64),
    ``hung`` (1 s, queue 8)."""
    models = (("slow", 200, 4), ("wide", 200, 64), ("held", 1000, 64), ("hung", 1000, 8))
    for name, ms, queue in models:
        version = root / name / "1"
        version.mkdir(parents=True)
        (version / "model.py").write_text(textwrap.dedent(SLEEPER))
        (root / name / "config.pbtxt").write_text(sleeper_config(name, ms, queue))
    return root


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A server with small budgets: 8 MiB in flight, 4 requests per client."""
    repo = sleeper_repository(tmp_path_factory.mktemp("sleepers"))
    args = [
        "--http-port", "0",
        "--max-inflight-bytes", str(8 << 20),
        "--max-inflight-per-client", "4",
        "--max-request-bytes", str(6 << 20),
    ]  # fmt: skip
    with ServerProcess(repo, models=["slow", "wide", "held", "hung"], extra_args=args) as server:
        yield server


def _x(n: int = 4) -> np.ndarray:
    return np.arange(n, dtype=np.float32).reshape(1, n)


def _grpc_input(x: np.ndarray, module=grpcclient):
    inp = module.InferInput("x", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    return inp


def _stats(server: ServerProcess, model: str):
    with grpcclient.InferenceServerClient(server.grpc_url) as client:
        return client.get_inference_statistics(model).model_stats[0]


def _wait_idle(server: ServerProcess, model: str, executions: int, timeout: float = 20) -> None:
    """Poll until ``model`` has run ``executions`` times and nothing is queued."""
    deadline = time.monotonic() + timeout
    while True:
        stats = _stats(server, model)
        if stats.execution_count >= executions:
            return
        assert time.monotonic() < deadline, f"{stats.execution_count} executions"
        time.sleep(0.02)


def test_flood_beyond_queue_bound_is_refused_fast(limited: ServerProcess) -> None:
    """64 concurrent requests (distinct clients) at a queue of 4: the overflow is
    RESOURCE_EXHAUSTED in well under 10 ms, the admitted ones succeed, the server stays up."""
    x = _x()
    before = _stats(limited, "slow").execution_count

    async def one(client: aioclient.InferenceServerClient, i: int) -> tuple[str, float]:
        t0 = time.perf_counter()
        try:
            result = await client.infer(
                "slow", [_grpc_input(x, aioclient)], headers={"pysonic-client-id": f"job{i}"}
            )
        except InferenceServerException as err:
            return str(err.status()), time.perf_counter() - t0
        np.testing.assert_array_equal(result.as_numpy("y"), 2 * x)
        return "OK", time.perf_counter() - t0

    async def flood() -> tuple[list[tuple[str, float]], list[tuple[str, float]]]:
        async with aioclient.InferenceServerClient(limited.grpc_url) as client:
            await client.is_server_ready()  # connected before the flood
            tasks = [asyncio.ensure_future(one(client, i)) for i in range(64)]
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            # the queue is full for the next second: one at a time, each refusal's round trip
            probes = [await one(client, 100 + i) for i in range(20)]
            return await asyncio.gather(*tasks), probes

    results, probes = asyncio.run(flood())
    refused = [t for status, t in results if "RESOURCE_EXHAUSTED" in status]
    ok = [t for status, t in results if status == "OK"]
    assert len(ok) + len(refused) == 64, results
    assert 1 <= len(ok) <= 6  # one running + the queue of 4 (+1 if one finished meanwhile)
    assert all("RESOURCE_EXHAUSTED" in status for status, _ in probes), probes
    latency = statistics.median(t for _, t in probes)
    assert latency < 0.010, f"median refusal {latency * 1e3:.2f} ms"
    with grpcclient.InferenceServerClient(limited.grpc_url) as client:
        assert client.is_server_live()
        assert client.is_server_ready()
        assert client.infer("slow", [_grpc_input(x)]).as_numpy("y")[0, 1] == 2
    _wait_idle(limited, "slow", before + len(ok) + 1)
    assert _stats(limited, "slow").execution_count == before + len(ok) + 1  # refused never ran


def test_per_client_limit(limited: ServerProcess) -> None:
    """One client id gets 4 requests in flight; the fifth is RESOURCE_EXHAUSTED at once while
    another client is still served."""
    x = _x()

    async def run() -> tuple[list[str], str]:
        async with aioclient.InferenceServerClient(limited.grpc_url) as client:

            async def one(who: str) -> str:
                try:
                    await client.infer(
                        "held", [_grpc_input(x, aioclient)], headers={"pysonic-client-id": who}
                    )
                except InferenceServerException as err:
                    return str(err.status())
                return "OK"

            greedy = [asyncio.ensure_future(one("greedy")) for _ in range(4)]
            await asyncio.sleep(0.2)  # the four are admitted (one runs, three queue)
            fifth = await asyncio.wait_for(one("greedy"), 0.15)  # refused, not queued
            other = await one("polite")
            return [*(await asyncio.gather(*greedy)), fifth], other

    statuses, other = asyncio.run(run())
    assert statuses[:4] == ["OK"] * 4
    assert "RESOURCE_EXHAUSTED" in statuses[4]
    assert other == "OK"


def test_per_client_limit_on_a_stream(limited: ServerProcess) -> None:
    """ModelStreamInfer is admitted per message: over the client's limit a message gets an error
    response at once, the stream stays open, and once the others finish it is served again."""
    x = _x()

    async def run() -> list[tuple[str, str]]:
        first_four_done = asyncio.Event()
        answers: list[tuple[str, str]] = []

        async def requests():  # tritonclient's request iterator (dicts of infer() kwargs)
            for i in range(6):
                yield {
                    "model_name": "slow",
                    "inputs": [_grpc_input(x, aioclient)],
                    "request_id": f"r{i}",
                }
            await first_four_done.wait()
            yield {"model_name": "slow", "inputs": [_grpc_input(x, aioclient)], "request_id": "r6"}

        async with aioclient.InferenceServerClient(limited.grpc_url) as client:
            stream = client.stream_infer(requests(), headers={"pysonic-client-id": "streamer"})
            async for result, error in stream:
                if error is not None:
                    answers.append(("error", str(error)))
                else:
                    answers.append(("ok", result.get_response().id))
                if sum(kind == "ok" for kind, _ in answers) == 4:
                    first_four_done.set()
                if len(answers) == 7:
                    break
        return answers

    answers = asyncio.run(asyncio.wait_for(run(), 30))
    errors = [text for kind, text in answers if kind == "error"]
    served = [rid for kind, rid in answers if kind == "ok"]
    assert len(errors) == 2, answers
    assert all("already has 4 requests in flight" in e for e in errors), errors
    assert [kind for kind, _ in answers[:2]] == ["error", "error"]  # refused at once
    assert sorted(served) == ["r0", "r1", "r2", "r3", "r6"]


def _raw_http(port: int, head: bytes, body: bytes = b"") -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(head + body)
    return sock


def _status(sock: socket.socket) -> int:
    data = b""
    while b"\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return int(data.split(b" ", 2)[1])


def _infer_head(port: int, length: int, header_length: int, expect: bool = False) -> bytes:
    return (
        f"POST /v2/models/wide/infer HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Content-Length: {length}\r\nInference-Header-Content-Length: {header_length}\r\n"
        + ("Expect: 100-continue\r\n" if expect else "")
        + "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()


def test_ten_gigabyte_tensor_is_refused_before_allocation(limited: ServerProcess) -> None:
    """A request declaring a 10 GB tensor gets an answer from its headers; the server's memory
    does not move (it never reads, let alone allocates, the body)."""
    port = limited.http_port
    assert port is not None
    assert limited.proc is not None
    rss = psutil.Process(limited.proc.pid).memory_info().rss
    big = 10 * 1024**3
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "x",
                    "shape": [1, big // 4],
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": big},
                }
            ]
        }
    ).encode()
    t0 = time.perf_counter()
    with _raw_http(port, _infer_head(port, len(header) + big, len(header)), header) as sock:
        assert _status(sock) == 400
    assert time.perf_counter() - t0 < 0.5
    # the same declaration with a small body: refused by the decoder's size check, no allocation
    with _raw_http(port, _infer_head(port, len(header), len(header)), header) as sock:
        assert _status(sock) == 400
    grown = psutil.Process(limited.proc.pid).memory_info().rss - rss
    assert grown < 32 << 20, f"RSS grew by {grown} bytes"
    with grpcclient.InferenceServerClient(limited.grpc_url) as client:  # gRPC: same limit
        with pytest.raises(InferenceServerException) as info:
            client.infer("wide", [_grpc_input(np.zeros((1, 2 << 20), np.float32))])
        assert "RESOURCE_EXHAUSTED" in str(info.value.status())  # gRPC's own message limit


def test_inflight_byte_budget(limited: ServerProcess) -> None:
    """Bodies being received count against --max-inflight-bytes from their Content-Length: a
    second 5 MiB request is 503 at once while the first is held, and admitted once it is gone."""
    port = limited.http_port
    assert port is not None
    five = 5 << 20
    with _raw_http(port, _infer_head(port, five, 100, expect=True)) as held:  # no body sent
        assert _status(held) == 100  # admitted: the server asks for the body
        t0 = time.perf_counter()
        with _raw_http(port, _infer_head(port, five, 100)) as second:
            assert _status(second) == 503
        assert time.perf_counter() - t0 < 0.1
    client = httpclient.InferenceServerClient(f"127.0.0.1:{port}")
    x = np.ones((1, (4 << 20) // 4), np.float32)
    inp = httpclient.InferInput("x", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=True)
    deadline = time.monotonic() + 5
    while True:  # the held request's share comes back once the server sees the disconnect
        try:
            out = client.infer("wide", [inp])
            break
        except InferenceServerException:
            assert time.monotonic() < deadline
            time.sleep(0.05)
    assert out.as_numpy("y").shape == x.shape
    client.close()


def test_timeouts_end_to_end(limited: ServerProcess) -> None:
    """Client deadlines (gRPC and HTTP) and the request's queue timeout: requests that gave up
    while queued behind a hung execution are dropped and never executed."""
    x = _x()
    before = _stats(limited, "hung").execution_count
    grpc_client = grpcclient.InferenceServerClient(limited.grpc_url)
    http_client = httpclient.InferenceServerClient(
        f"127.0.0.1:{limited.http_port}", network_timeout=0.3, concurrency=2
    )
    running = grpc_client.async_infer("hung", [_grpc_input(x)], callback=_Collect())
    _wait_started(limited, "hung", before + 1)
    with pytest.raises(InferenceServerException, match="Deadline"):
        grpc_client.infer("hung", [_grpc_input(x)], client_timeout=0.2)
    inp = httpclient.InferInput("x", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    with pytest.raises(Exception, match=r"(?i)timed out|timeout"):
        http_client.infer("hung", [inp])
    t0 = time.perf_counter()
    with pytest.raises(InferenceServerException, match="timeout expired"):
        grpc_client.infer("hung", [_grpc_input(x)], timeout=100_000)  # 100 ms queue timeout
    assert time.perf_counter() - t0 < 0.9  # expired in the queue, behind the hung execution
    del running
    _wait_idle(limited, "hung", before + 1)
    time.sleep(1.2)  # had any abandoned request stayed queued, it would have run by now
    stats = _stats(limited, "hung")
    assert stats.execution_count == before + 1  # only the first ever ran
    assert stats.inference_stats.success.count >= 1
    grpc_client.close()
    http_client.close()


class _Collect:
    def __init__(self) -> None:
        self.results: list[object] = []

    def __call__(self, result: object, error: object) -> None:
        self.results.append(result if error is None else error)


def _wait_started(server: ServerProcess, model: str, count: int) -> None:
    """Wait until ``model`` has started ``count`` executions (its model.py counts them)."""
    marks = server.repository / model / "started"
    deadline = time.monotonic() + 10
    while not (marks.exists() and marks.read_text().strip() and int(marks.read_text()) >= count):
        assert time.monotonic() < deadline
        time.sleep(0.01)


@pytest.mark.slow
def test_sigterm_drains_under_load_and_restarts_on_the_same_ports(tmp_path: Path) -> None:
    """SIGTERM: both ready endpoints say no, new requests get UNAVAILABLE / 503, every admitted
    request (running and queued) finishes, the process exits 0; a restart on the same ports
    serves again."""
    repo = sleeper_repository(tmp_path / "repo")
    args = ["--http-port", "0", "--drain-timeout", "20"]
    server = ServerProcess(repo, models=["wide"], extra_args=args).start()
    assert server.proc is not None
    grpc_port, http_port = server.grpc_port, server.http_port
    x = _x()
    client = grpcclient.InferenceServerClient(server.grpc_url)
    http = httpclient.InferenceServerClient(f"127.0.0.1:{http_port}")
    results = _Collect()
    for _ in range(6):  # 6 x 200 ms, one at a time: 1.2 s of work in flight
        client.async_infer("wide", [_grpc_input(x)], callback=results)
    _wait_started(server, "wide", 1)
    t0 = time.monotonic()
    server.proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 5
    while client.is_server_ready():
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert not http.is_server_ready()
    assert http.is_server_live()
    with pytest.raises(InferenceServerException) as info:
        client.infer("wide", [_grpc_input(x)])
    assert "UNAVAILABLE" in str(info.value.status())
    inp = httpclient.InferInput("x", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    with pytest.raises(InferenceServerException) as info:
        http.infer("wide", [inp])
    assert info.value.status() == "503"
    assert server.proc.wait(timeout=20) == 0
    assert time.monotonic() - t0 < 10
    server.stop()
    assert len(results.results) == 6
    for r in results.results:
        assert isinstance(r, grpcclient.InferResult), r
        np.testing.assert_array_equal(r.as_numpy("y"), 2 * x)
    client.close()
    http.close()
    restart = ["--grpc-port", str(grpc_port), "--http-port", str(http_port)]
    with ServerProcess(repo, models=["wide"], extra_args=restart) as again:
        assert (again.grpc_port, again.http_port) == (grpc_port, http_port)
        with grpcclient.InferenceServerClient(again.grpc_url) as client:
            assert client.infer("wide", [_grpc_input(x)]).as_numpy("y")[0, 1] == 2
