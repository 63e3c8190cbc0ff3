"""Discovery, per-request balancing, failover, retries and the local fallback, with real servers."""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto

from conftest import identity_config, identity_model, save_model
from pysonic.client import (
    AsyncSonicClient,
    AsyncTransport,
    Balanced,
    ClientMetrics,
    GrpcTransport,
    Retrying,
    RetryPolicy,
    ServerEntry,
    SiteConfig,
    SonicConfig,
    build_transport,
    connect,
)
from pysonic.errors import DeadlineExceededError, InvalidArgumentError, UnavailableError
from pysonic.protocol.types import InferRequest, InferResponse
from pysonic.server import EmbeddedServer, ServerOptions

pytestmark = pytest.mark.timeout(180)


def _repo(path: Path, delay_ms: int = 0) -> Path:
    extra = ""
    if delay_ms:
        extra = f'parameters {{ key: "execute_delay_ms" value {{ string_value: "{delay_ms}" }} }}\n'
    config = (
        identity_config("ident", "TYPE_FP32", 8, "[-1]")
        + extra
        + ("instance_group [{ count: 8 kind: KIND_CPU }]\n")
    )
    save_model(path, "ident", identity_model(TensorProto.FLOAT, ["N", "M"]), config)
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _embedded(path: Path, delay_ms: int) -> EmbeddedServer:
    opts = ServerOptions(
        model_repository=_repo(path, delay_ms), host="127.0.0.1", grpc_port=0, metrics_port=None
    )
    return EmbeddedServer(opts).start()


# ---------------------------------------------------------------- site configuration
def test_site_config_file_and_env(tmp_path: Path) -> None:
    site_file = tmp_path / "site.toml"
    site_file.write_text(
        'allow_local_fallback = true\nfallback_model_repository = "/repo"\n'
        "saturation_queue_ms = 50\n"
        '[[servers]]\nname = "a"\naddress = "10.1.1.1"\nport = 9001\ntoken = "t"\n'
        '[[servers]]\naddress = "::1"\nport = 9002\ntls = { ca_file = "/ca.pem" }\n'
    )
    site = SiteConfig.from_env({"PYSONIC_SITE_CONFIG": str(site_file)})
    assert [s.url for s in site.servers] == ["10.1.1.1:9001", "[::1]:9002"]
    assert site.servers[0].token == "t"
    assert site.servers[1].tls is not None
    assert site.servers[1].tls.ca_file == "/ca.pem"
    assert site.allow_local_fallback
    assert site.fallback_model_repository == Path("/repo")
    assert site.saturation_queue_ms == 50
    env = {"PYSONIC_SITE_CONFIG": str(site_file), "PYSONIC_SERVERS": "h1:1,h2:2"}
    assert [s.url for s in SiteConfig.from_env(env).servers] == ["h1:1", "h2:2"]
    env["SONIC_LOCAL_BALANCER_HOST"] = "lb"
    env["SONIC_LOCAL_BALANCER_PORT"] = "8888"
    site = SiteConfig.from_env(env)
    assert [s.url for s in site.servers] == ["lb:8888"]
    assert site.allow_local_fallback  # the file's policies stay
    with pytest.raises(InvalidArgumentError, match="not host:port"):
        ServerEntry.parse("nohost")
    bad = tmp_path / "bad.toml"
    bad.write_text("servers = [")
    with pytest.raises(InvalidArgumentError, match=r"bad\.toml"):
        SiteConfig.load(bad)


# ---------------------------------------------------------------- discovery and balancing
@pytest.fixture
def three_servers(tmp_path: Path) -> Iterator[list[EmbeddedServer]]:
    servers = [
        _embedded(tmp_path / "fast1", 5),
        _embedded(tmp_path / "fast2", 5),
        _embedded(tmp_path / "slow", 40),
    ]
    yield servers
    for s in servers:
        s.stop()


def test_discovery_skips_unreachable(three_servers: list[EmbeddedServer]) -> None:
    dead = f"127.0.0.1:{_free_port()}"

    async def run() -> dict[str, list[str]]:
        balanced = Balanced(
            [GrpcTransport(s.grpc_url) for s in three_servers] + [GrpcTransport(dead)]
        )
        table = await balanced.discover()
        await balanced.close()
        return table

    table = asyncio.run(run())
    assert sorted(table["ident"]) == sorted(s.grpc_url for s in three_servers)


async def _load(transport: AsyncTransport, n: int, concurrency: int) -> AsyncSonicClient:
    client = AsyncSonicClient(SonicConfig("ident"), transport)
    sem = asyncio.Semaphore(concurrency)

    async def one(i: int) -> None:
        async with sem:
            x = np.full((1, 4), i, np.float32)
            out = await client.infer({"INPUT0": x})
            np.testing.assert_array_equal(out["OUTPUT0"], x)

    await asyncio.gather(*(one(i) for i in range(n)))
    return client


@pytest.mark.parametrize("policy", ["least_loaded", "round_robin"])
def test_slow_server_gets_fewer_requests(three_servers: list[EmbeddedServer], policy: str) -> None:
    async def run() -> dict[str, int]:
        balanced = Balanced([GrpcTransport(s.grpc_url) for s in three_servers], policy=policy)  # type: ignore[arg-type]
        client = await _load(balanced, 240, 12)
        counts = {s.name: s.sent for s in balanced.servers}
        await client.close()
        return counts

    counts = asyncio.run(run())
    slow_share = counts[three_servers[2].grpc_url] / sum(counts.values())
    if policy == "round_robin":
        assert 0.28 < slow_share < 0.39
    else:
        assert slow_share < 0.2, counts


# ---------------------------------------------------------------- failover
class _ServeProcess:
    """A real `pysonic serve` subprocess (so it can be killed with -9)."""

    def __init__(self, repo: Path) -> None:
        self.port = _free_port()
        self.proc = subprocess.Popen(
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
                str(self.port),
                "--metrics-port",
                "0",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env={**os.environ, "COLUMNS": "250"},
        )
        self.url = f"127.0.0.1:{self.port}"

    def wait_ready(self, timeout: float = 60) -> None:
        async def ready() -> bool:
            t = GrpcTransport(self.url)
            try:
                return await t.server_ready(timeout=1)
            except (UnavailableError, DeadlineExceededError):  # still starting, or a busy host
                return False
            finally:
                await t.close()

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, "server exited"
            if asyncio.run(ready()):
                return
            time.sleep(0.05)
        raise AssertionError(f"{self.url} not ready")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
        self.proc.wait(30)


@pytest.mark.slow
def test_server_killed_mid_run(tmp_path: Path) -> None:
    repo = _repo(tmp_path / "repo", delay_ms=5)
    servers = [_ServeProcess(repo) for _ in range(3)]
    try:
        for s in servers:
            s.wait_ready()
        metrics = ClientMetrics()
        site = SiteConfig(servers=tuple(ServerEntry.parse(s.url) for s in servers))
        n = 300
        with connect(
            SonicConfig("ident", allowed_tries=3, timeout=10), site, metrics=metrics
        ) as client:
            pool = concurrent.futures.ThreadPoolExecutor(12)
            inputs = [np.full((1, 3), i, np.float32) for i in range(n)]
            futures = [pool.submit(client.infer, {"INPUT0": x}) for x in inputs]
            deadline = time.monotonic() + 30
            while sum(f.done() for f in futures) < n // 4:
                assert time.monotonic() < deadline
                time.sleep(0.005)
            servers[0].proc.send_signal(signal.SIGKILL)
            results = [f.result(timeout=60) for f in futures]
            pool.shutdown()
        for x, out in zip(inputs, results, strict=True):
            np.testing.assert_array_equal(out["OUTPUT0"], x)  # each input got its own output
        ok = sum(
            metrics.value(
                "pysonic_client_requests_total", model="ident", server=s.url, outcome="ok"
            )
            for s in servers
        )
        assert ok == n  # exactly one successful response per call: none lost, none duplicated
    finally:
        for s in servers:
            s.stop()


@pytest.mark.slow
def test_all_servers_down_uses_local_fallback(tmp_path: Path) -> None:
    repo = _repo(tmp_path / "repo")
    dead = tuple(ServerEntry.parse(f"127.0.0.1:{_free_port()}") for _ in range(2))
    site = SiteConfig(servers=dead, allow_local_fallback=True, fallback_model_repository=repo)
    metrics = ClientMetrics()
    config = SonicConfig("ident", allowed_tries=2, timeout=30)
    transport = build_transport(config, site, metrics=metrics)
    assert isinstance(transport, Retrying)
    fallback = transport.fallback
    assert fallback is not None
    from pysonic.client import SonicClient

    with SonicClient(config, transport) as client:
        x = np.arange(3, dtype=np.float32).reshape(1, 3)
        np.testing.assert_array_equal(client.infer({"INPUT0": x})["OUTPUT0"], x)
        process = fallback.process  # type: ignore[attr-defined]
        np.testing.assert_array_equal(client.infer({"INPUT0": 2 * x})["OUTPUT0"], 2 * x)
        assert fallback.process is process  # type: ignore[attr-defined]  # reused
        assert fallback.running  # type: ignore[attr-defined]
    assert process.returncode is not None  # stopped at close
    assert metrics.value("pysonic_client_fallbacks_total", model="ident") == 2


# ---------------------------------------------------------------- retry semantics
class _Spy(AsyncTransport):
    """Records each try's request id, then delegates to a real transport (or fails)."""

    def __init__(self, inner: AsyncTransport, failures: list[Exception]) -> None:
        self.inner, self.failures, self.ids = inner, failures, []
        self.name = "spy"

    async def infer(
        self,
        request: InferRequest,
        *,
        timeout: float | None = None,
        exclude: frozenset[str] = frozenset(),
    ) -> InferResponse:
        self.ids.append(request.id)
        if self.failures:
            raise self.failures.pop(0)
        return await self.inner.infer(request, timeout=timeout)


def test_retry_semantics(tmp_path: Path) -> None:
    server = _embedded(tmp_path / "r", 0)
    try:

        async def run() -> None:
            real = GrpcTransport(server.grpc_url)
            spy = _Spy(
                real, [UnavailableError("down", server="a"), UnavailableError("down", server="b")]
            )
            client = AsyncSonicClient(SonicConfig("ident"), Retrying(spy, RetryPolicy(3)))
            out = await client.infer({"INPUT0": np.ones((1, 2), np.float32)})
            assert out["OUTPUT0"].shape == (1, 2)
            assert len(spy.ids) == 3
            assert len(set(spy.ids)) == 1  # the same request id on every try

            spy2 = _Spy(real, [UnavailableError("x")] * 5)
            client2 = AsyncSonicClient(SonicConfig("ident"), Retrying(spy2, RetryPolicy(2)))
            with pytest.raises(UnavailableError):
                await client2.infer({"INPUT0": np.ones((1, 2), np.float32)})
            assert len(spy2.ids) == 2  # bounded

            spy3 = _Spy(real, [InvalidArgumentError("bad")])
            client3 = AsyncSonicClient(SonicConfig("ident"), Retrying(spy3, RetryPolicy(3)))
            with pytest.raises(InvalidArgumentError):
                await client3.infer({"INPUT0": np.ones((1, 2), np.float32)})
            assert len(spy3.ids) == 1  # not retryable
            await real.close()

        asyncio.run(run())
    finally:
        server.stop()


def test_metrics_registry_counts(tmp_path: Path) -> None:
    server = _embedded(tmp_path / "m", 0)
    try:
        metrics = ClientMetrics()
        site = SiteConfig(servers=(ServerEntry.parse(server.grpc_url),))
        with connect(SonicConfig("ident"), site, metrics=metrics) as client:
            for _ in range(5):
                client.infer({"INPUT0": np.ones((1, 2), np.float32)})
        assert (
            metrics.value(
                "pysonic_client_requests_total", model="ident", server=server.grpc_url, outcome="ok"
            )
            == 5
        )
        assert (
            metrics.value(
                "pysonic_client_request_duration_seconds_count",
                model="ident",
                server=server.grpc_url,
            )
            == 5
        )
        http, _ = metrics.serve(0)
        import urllib.request

        body = urllib.request.urlopen(f"http://127.0.0.1:{http.server_port}/metrics").read()
        assert b"pysonic_client_requests_total" in body
        http.shutdown()
        http.server_close()
    finally:
        server.stop()


def test_no_server_for_model_is_unavailable(tmp_path: Path) -> None:
    server = _embedded(tmp_path / "n", 0)
    try:
        site = SiteConfig(servers=(ServerEntry.parse(server.grpc_url),))
        with (
            connect(SonicConfig("other"), site) as client,
            pytest.raises(UnavailableError, match="no server can serve model 'other'"),
        ):
            client.infer({"x": np.ones((1, 2), np.float32)})
    finally:
        server.stop()


def test_pick_skips_saturated_and_ejected_servers() -> None:
    balanced = Balanced(
        [GrpcTransport(f"127.0.0.1:{p}") for p in (1, 2, 3)], saturation_queue_ms=100
    )
    a, b, c = balanced.servers
    for s in balanced.servers:
        s.models = {"m"}
    now = time.monotonic()
    a.outstanding, b.outstanding, c.outstanding = 0, 3, 5
    a.queue_ms = 150.0  # saturated: skipped although it has the fewest requests in flight
    assert balanced._pick("m", frozenset(), now) is b
    b.ejected_until = now + 10  # ejected: skipped
    assert balanced._pick("m", frozenset(), now) is c
    assert balanced._pick("m", frozenset({c.name}), now) is a  # only a saturated one is left
    assert balanced._pick("other", frozenset(), now) is None
    balanced.preferred = c.name
    assert balanced._pick("m", frozenset(), now) is c
