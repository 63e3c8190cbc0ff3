"""Shared fixtures: small real ONNX models written into a Triton repository, and real servers.

Servers run in-process on free ports (port 0) through :class:`EmbeddedServer`, and tests talk
to them with NVIDIA's tritonclient (sync and asyncio), exactly as external clients would.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from hypothesis import settings
from onnx import TensorProto, helper, numpy_helper

from pysonic.backends import BUILTIN_BACKENDS, Backend
from pysonic.server import EmbeddedServer, ServerOptions

# Property-based tests: modest example counts by default (CI time on 2 cores), no per-example
# deadline (a loaded CI machine is slow, not wrong); PYSONIC_HYPOTHESIS_PROFILE=thorough for a
# long local run.
settings.register_profile("ci", max_examples=60, deadline=None, print_blob=True)
settings.register_profile("thorough", max_examples=2000, deadline=None, print_blob=True)
settings.load_profile(os.environ.get("PYSONIC_HYPOTHESIS_PROFILE", "ci"))

OPSET = 17


def save_model(
    repo: Path, name: str, model: onnx.ModelProto, config: str, version: int = 1
) -> Path:
    model_dir = repo / name
    (model_dir / str(version)).mkdir(parents=True, exist_ok=True)
    onnx.checker.check_model(model)
    onnx.save(model, model_dir / str(version) / "model.onnx")
    (model_dir / "config.pbtxt").write_text(config)
    return model_dir


def _model(nodes: list, inputs: list, outputs: list, inits: list | None = None) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=inits or [])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])


def dense_model(features: int = 16, hidden: int = 32, classes: int = 4) -> onnx.ModelProto:
    """x [N, features] -> softmax(relu(x W1 + b1) W2 + b2) [N, classes], plus logits."""
    rng = np.random.default_rng(7)
    w1 = numpy_helper.from_array(rng.standard_normal((features, hidden)).astype("f4"), "w1")
    b1 = numpy_helper.from_array(rng.standard_normal(hidden).astype("f4"), "b1")
    w2 = numpy_helper.from_array(rng.standard_normal((hidden, classes)).astype("f4"), "w2")
    b2 = numpy_helper.from_array(rng.standard_normal(classes).astype("f4"), "b2")
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h0"]),
        helper.make_node("Add", ["h0", "b1"], ["h1"]),
        helper.make_node("Relu", ["h1"], ["h2"]),
        helper.make_node("MatMul", ["h2", "w2"], ["l0"]),
        helper.make_node("Add", ["l0", "b2"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probs"], axis=-1),
    ]
    return _model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", features])],
        [
            helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["N", classes]),
            helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", classes]),
        ],
        [w1, b1, w2, b2],
    )


def add_sub_model(elem: int = TensorProto.FLOAT, dims: int = 16) -> onnx.ModelProto:
    nodes = [
        helper.make_node("Add", ["INPUT0", "INPUT1"], ["OUTPUT0"]),
        helper.make_node("Sub", ["INPUT0", "INPUT1"], ["OUTPUT1"]),
    ]
    return _model(
        nodes,
        [helper.make_tensor_value_info(n, elem, ["N", dims]) for n in ("INPUT0", "INPUT1")],
        [helper.make_tensor_value_info(n, elem, ["N", dims]) for n in ("OUTPUT0", "OUTPUT1")],
    )


def identity_model(elem: int, shape: list) -> onnx.ModelProto:
    return _model(
        [helper.make_node("Identity", ["INPUT0"], ["OUTPUT0"])],
        [helper.make_tensor_value_info("INPUT0", elem, shape)],
        [helper.make_tensor_value_info("OUTPUT0", elem, shape)],
    )


DENSE_CONFIG = """
name: "dense"
backend: "onnxruntime"
max_batch_size: 64
input [{ name: "x" data_type: TYPE_FP32 dims: [16] }]
output [{ name: "probs" data_type: TYPE_FP32 dims: [4] },
        { name: "logits" data_type: TYPE_FP32 dims: [4] }]
dynamic_batching { preferred_batch_size: [8, 16] max_queue_delay_microseconds: 20000 }
instance_group [{ count: 1 kind: KIND_CPU }]
"""

ADD_SUB_CONFIG = """
name: "add_sub"
backend: "onnxruntime"
max_batch_size: 8
input [{ name: "INPUT0" data_type: TYPE_FP32 dims: [16] },
       { name: "INPUT1" data_type: TYPE_FP32 dims: [16] }]
output [{ name: "OUTPUT0" data_type: TYPE_FP32 dims: [16] },
        { name: "OUTPUT1" data_type: TYPE_FP32 dims: [16] }]
"""


def identity_config(name: str, dtype: str, max_batch: int, dims: str) -> str:
    return f"""
name: "{name}"
backend: "onnxruntime"
max_batch_size: {max_batch}
input [{{ name: "INPUT0" data_type: {dtype} dims: {dims} }}]
output [{{ name: "OUTPUT0" data_type: {dtype} dims: {dims} }}]
"""


class SleepBackend(Backend):
    """A test backend: y = x * 2 after sleeping ``sleep_ms`` (parameter), recording batch sizes."""

    batches: list[int] = []
    lock = threading.Lock()

    def __init__(self, spec) -> None:
        super().__init__(spec)
        params = spec.config.parameters
        self.sleep = float(params["sleep_ms"].string_value) / 1000 if "sleep_ms" in params else 0.05

    def execute(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        x = inputs["x"]
        with SleepBackend.lock:
            SleepBackend.batches.append(x.shape[0])
        time.sleep(self.sleep)
        return {"y": x * 2}


SLEEP_CONFIG = """
name: "sleepy"
backend: "sleepy"
max_batch_size: 32
input [{ name: "x" data_type: TYPE_FP32 dims: [4] }]
output [{ name: "y" data_type: TYPE_FP32 dims: [4] }]
dynamic_batching { max_queue_delay_microseconds: 1000 }
parameters { key: "sleep_ms" value { string_value: "100" } }
"""


RESHAPE_CONFIG = """
name: "reshaped"
backend: "onnxruntime"
max_batch_size: 8
input [{ name: "INPUT0" data_type: TYPE_FP32 dims: [4] reshape: { shape: [2, 2] } }]
output [{ name: "OUTPUT0" data_type: TYPE_FP32 dims: [4] reshape: { shape: [2, 2] } }]
"""

LIMITED_CONFIG = """
name: "limited"
backend: "sleepy"
max_batch_size: 1
input [{ name: "x" data_type: TYPE_FP32 dims: [4] }]
output [{ name: "y" data_type: TYPE_FP32 dims: [4] }]
dynamic_batching {
  priority_levels: 2
  default_priority_level: 2
  default_queue_policy { max_queue_size: 2 }
  priority_queue_policy { key: 1 value {
    max_queue_size: 4 timeout_action: REJECT default_timeout_microseconds: 50000 } }
}
parameters { key: "sleep_ms" value { string_value: "300" } }
"""


@pytest.fixture(scope="session", autouse=True)
def _register_test_backends() -> Iterator[None]:
    BUILTIN_BACKENDS["sleepy"] = "conftest:SleepBackend"
    yield
    BUILTIN_BACKENDS.pop("sleepy", None)


def build_repository(repo: Path) -> Path:
    """The standard test repository used by the server tests."""
    save_model(repo, "dense", dense_model(), DENSE_CONFIG)
    save_model(repo, "add_sub", add_sub_model(), ADD_SUB_CONFIG)
    save_model(
        repo,
        "identity_bytes",
        identity_model(TensorProto.STRING, ["N", 2]),
        identity_config("identity_bytes", "TYPE_STRING", 8, "[2]"),
    )
    save_model(
        repo,
        "identity_fp16",
        identity_model(TensorProto.FLOAT16, ["N", 3]),
        identity_config("identity_fp16", "TYPE_FP16", 8, "[3]"),
    )
    save_model(
        repo,
        "identity_bool",
        identity_model(TensorProto.BOOL, ["N", 3]),
        identity_config("identity_bool", "TYPE_BOOL", 8, "[3]"),
    )
    save_model(
        repo,
        "identity_int8",
        identity_model(TensorProto.INT8, ["N", 3]),
        identity_config("identity_int8", "TYPE_INT8", 8, "[3]"),
    )
    save_model(
        repo,
        "nobatch",
        identity_model(TensorProto.INT32, [2, 3]),
        identity_config("nobatch", "TYPE_INT32", 0, "[2, 3]"),
    )
    save_model(
        repo,
        "variable",
        identity_model(TensorProto.FLOAT, ["N", "M"]),
        identity_config("variable", "TYPE_FP32", 8, "[-1]").replace(
            "max_batch_size: 8", "max_batch_size: 8\ndynamic_batching { }"
        ),
    )
    save_model(
        repo,
        "identity_bf16",
        identity_model(TensorProto.BFLOAT16, ["N", 3]),
        identity_config("identity_bf16", "TYPE_BF16", 8, "[3]"),
    )
    save_model(repo, "reshaped", identity_model(TensorProto.FLOAT, ["N", 2, 2]), RESHAPE_CONFIG)
    (repo / "sleepy" / "1").mkdir(parents=True)
    (repo / "sleepy" / "config.pbtxt").write_text(SLEEP_CONFIG)
    (repo / "limited" / "1").mkdir(parents=True)
    (repo / "limited" / "config.pbtxt").write_text(LIMITED_CONFIG)
    return repo


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_repository(tmp_path_factory.mktemp("repo"))


@pytest.fixture(scope="module")
def server(repository: Path) -> Iterator[EmbeddedServer]:
    options = ServerOptions(
        model_repository=repository,
        host="127.0.0.1",
        grpc_port=0,
        metrics_port=0,
        model_control_mode="explicit",
        load_models=["*"],
        drain_timeout=10,
        grpc_max_message_bytes=4 * 1024 * 1024,
    )
    with EmbeddedServer(options) as srv:
        yield srv


@pytest.fixture(scope="module")
def http_server(repository: Path) -> Iterator[EmbeddedServer]:
    """The standard test server with the HTTP/REST frontend too (4 MiB body limit)."""
    options = ServerOptions(
        model_repository=repository,
        host="127.0.0.1",
        grpc_port=0,
        http_port=0,
        metrics_port=None,
        model_control_mode="explicit",
        load_models=["*"],
        drain_timeout=10,
        grpc_max_message_bytes=4 * 1024 * 1024,
        http_max_body_bytes=4 * 1024 * 1024,
    )
    with EmbeddedServer(options) as srv:
        yield srv


def check_one_clean_level(report: Any, batch: int) -> None:
    """The checks every one-level ``run_perf`` report passes whatever the server and protocol:
    no errors, the server counted exactly the generator's requests, and items = batch x
    requests."""
    (r,) = report.results
    assert r.errors == 0, r.records.error_samples
    assert r.requests > 0
    assert report.totals[1] == 0
    assert report.server_totals.success_count == report.totals[0]
    assert r.server.avg_compute_infer_us > 0
    assert r.throughput == pytest.approx(batch * r.requests_per_s)
