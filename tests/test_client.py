"""The SONIC client against real pysonic servers: modes, batching, config check, errors, timing."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto

from conftest import build_repository, identity_config, identity_model, save_model
from pysonic.client import GrpcTransport, SonicClient, SonicConfig, SonicModule
from pysonic.errors import (
    DeadlineExceededError,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
)
from pysonic.server import EmbeddedServer, ServerOptions

pytestmark = pytest.mark.timeout(120)
DELAY_MS = 200


def add_delayed(repo: Path, name: str = "slow", delay_ms: int = DELAY_MS) -> None:
    config = identity_config(name, "TYPE_FP32", 8, "[-1]") + (
        f'parameters {{ key: "execute_delay_ms" value {{ string_value: "{delay_ms}" }} }}\n'
        "instance_group [{ count: 4 kind: KIND_CPU }]\n"
    )
    save_model(repo, name, identity_model(TensorProto.FLOAT, ["N", "M"]), config)


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = build_repository(tmp_path_factory.mktemp("client_repo"))
    add_delayed(repo)
    return repo


@pytest.fixture(scope="module")
def url(repo: Path) -> Iterator[str]:
    opts = ServerOptions(model_repository=repo, host="127.0.0.1", grpc_port=0, metrics_port=None)
    with EmbeddedServer(opts) as srv:
        yield srv.grpc_url


def _client(url: str, model: str, **kw: object) -> SonicClient:
    return SonicClient(SonicConfig(model, **kw), GrpcTransport(url))  # type: ignore[arg-type]


def test_modes_give_identical_outputs(url: str, repo: Path) -> None:
    x = np.random.default_rng(0).standard_normal((5, 16)).astype(np.float32)
    direct = ort.InferenceSession(str(repo / "dense" / "1" / "model.onnx")).run(None, {"x": x})
    with _client(url, "dense") as client:
        sync = client.infer({"x": x})
        asyn = client.infer_async({"x": x}).result(30)
        pseudo = client.infer_pseudo_async({"x": x}).result(30)
    for out in (sync, asyn, pseudo):
        np.testing.assert_array_equal(out["probs"], sync["probs"])
        np.testing.assert_allclose(out["probs"], direct[0], rtol=1e-5, atol=1e-6)


def test_async_returns_before_the_result(url: str) -> None:
    x = np.ones((1, 3), np.float32)
    seen = []
    with _client(url, "slow") as client:
        t0 = time.perf_counter()
        future = client.infer_async({"INPUT0": x}, callback=lambda f: seen.append(f.result()))
        returned = time.perf_counter() - t0
        assert not future.done()
        assert returned < DELAY_MS / 1000 / 2
        np.testing.assert_array_equal(future.result(30)["OUTPUT0"], x)
    assert len(seen) == 1


class _Doubler(SonicModule[dict]):
    def acquire(self, event: dict) -> dict[str, np.ndarray]:
        return {"INPUT0": event["a"], "INPUT1": event["a"]}

    def produce(self, event: dict, outputs: dict[str, np.ndarray]) -> None:
        event["sum"] = outputs["OUTPUT0"]


@pytest.mark.parametrize("mode", ["sync", "async", "pseudoasync"])
def test_sonic_module_modes(url: str, mode: str) -> None:
    events = [{"a": np.full((1, 16), i, np.float32)} for i in range(6)]
    with _client(url, "add_sub", mode=mode) as client:
        module = _Doubler(client)
        for f in [module.process(e) for e in events]:
            f.result(30)
    for i, e in enumerate(events):
        np.testing.assert_array_equal(e["sum"], np.full((1, 16), 2 * i))


def test_rectangular_and_ragged_batching(url: str) -> None:
    with _client(url, "slow") as client:
        entries = [{"INPUT0": np.full((k, 3), k, np.float32)} for k in (1, 2, 3)]
        outs = client.infer_batch(entries)
        assert [o["OUTPUT0"].shape for o in outs] == [(1, 3), (2, 3), (3, 3)]
        ragged = [{"INPUT0": np.full((1, k), k, np.float32)} for k in (5, 1, 3, 2)]
        t0 = time.perf_counter()
        outs = client.infer_ragged(ragged)
        elapsed = time.perf_counter() - t0
    assert [o["OUTPUT0"].shape for o in outs] == [(1, 5), (1, 1), (1, 3), (1, 2)]
    for entry, out in zip(ragged, outs, strict=True):
        np.testing.assert_array_equal(out["OUTPUT0"], entry["INPUT0"])
    assert elapsed < 2.5 * DELAY_MS / 1000, "ragged requests must be in flight together"


def test_model_config_check(url: str, repo: Path, tmp_path: Path) -> None:
    good = repo / "dense" / "config.pbtxt"
    x = np.ones((1, 16), np.float32)
    with _client(url, "dense", model_config_path=good) as client:
        assert client.infer({"x": x})["probs"].shape == (1, 4)
    bad = tmp_path / "config.pbtxt"
    bad.write_text(good.read_text().replace("dims: [16]", "dims: [17]"))
    with (
        _client(url, "dense", model_config_path=bad) as client,
        pytest.raises(FailedPreconditionError, match=r"local has input 'x' TYPE_FP32 dims \[17\]"),
    ):
        client.infer({"x": x})


@pytest.mark.parametrize("compression", ["gzip", "deflate"])
def test_compression(url: str, compression: str) -> None:
    x = np.zeros((8, 16), np.float32)
    with SonicClient(SonicConfig("add_sub"), GrpcTransport(url, compression=compression)) as c:
        out = c.infer({"INPUT0": x, "INPUT1": x + 1})
    np.testing.assert_array_equal(out["OUTPUT1"], -np.ones((8, 16), np.float32))


def test_errors_are_typed(url: str) -> None:
    x = np.ones((1, 16), np.float32)
    with _client(url, "nosuch") as client, pytest.raises(NotFoundError, match="nosuch"):
        client.infer({"x": x})
    with _client(url, "dense") as client, pytest.raises(InvalidArgumentError, match="shape"):
        client.infer({"x": np.ones((1, 3), np.float32)})
    with _client(url, "slow", timeout=0.05) as client, pytest.raises(DeadlineExceededError):
        client.infer({"INPUT0": np.ones((1, 2), np.float32)})


def test_verbose_timing(url: str) -> None:
    with _client(url, "slow", verbose=True) as client:
        client.infer({"INPUT0": np.ones((1, 2), np.float32)})
        timing = client.last_timing
    assert timing is not None
    assert timing.server_compute_ms >= DELAY_MS * 0.9
    assert timing.server_queue_ms + timing.server_compute_ms <= timing.total_ms
    assert timing.network_ms >= 0


def test_bytes_and_strings(url: str) -> None:
    with _client(url, "identity_bytes") as client:
        out = client.infer({"INPUT0": np.array([["a", "bc"]])})
    assert out["OUTPUT0"].tolist() == [[b"a", b"bc"]]
