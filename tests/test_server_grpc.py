"""The gRPC frontend end to end: a real server, NVIDIA's tritonclient (sync and asyncio)."""

from __future__ import annotations

import asyncio
import queue
from pathlib import Path

import grpc
import ml_dtypes
import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as aioclient
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from pysonic.server import EmbeddedServer

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def client(server: EmbeddedServer):
    c = grpcclient.InferenceServerClient(server.grpc_url)
    yield c
    c.close()


@pytest.fixture(scope="module")
def stub(server: EmbeddedServer):
    channel = grpc.insecure_channel(server.grpc_url)
    yield service_pb2_grpc.GRPCInferenceServiceStub(channel)
    channel.close()


def _inp(name: str, arr: np.ndarray, datatype: str) -> grpcclient.InferInput:
    i = grpcclient.InferInput(name, list(arr.shape), datatype)
    i.set_data_from_numpy(arr)
    return i


def _direct(repository: Path, name: str, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    sess = ort.InferenceSession(
        str(repository / name / "1" / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    return sess.run(None, feeds)


# ---------------------------------------------------------------- health and metadata
def test_health_and_server_metadata(client) -> None:
    assert client.is_server_live()
    assert client.is_server_ready()
    meta = client.get_server_metadata()
    assert meta.name == "pysonic"
    assert "model_repository" in meta.extensions
    assert "statistics" in meta.extensions
    assert "binary_tensor_data" in meta.extensions  # the HTTP frontend's binary tensors


def test_model_ready_metadata_config(client) -> None:
    assert client.is_model_ready("dense")
    assert client.is_model_ready("dense", "1")
    assert not client.is_model_ready("dense", "7")
    assert not client.is_model_ready("nope")
    meta = client.get_model_metadata("dense")
    assert meta.name == "dense"
    assert list(meta.versions) == ["1"]
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.inputs] == [("x", "FP32", [-1, 16])]
    assert [t.name for t in meta.outputs] == ["probs", "logits"]
    cfg = client.get_model_config("dense").config
    assert cfg.max_batch_size == 64
    assert list(cfg.dynamic_batching.preferred_batch_size) == [8, 16]
    nob = client.get_model_metadata("nobatch")
    assert list(nob.inputs[0].shape) == [2, 3]


def test_repository_index(client) -> None:
    index = client.get_model_repository_index()
    names = {m.name: m for m in index.models}
    assert {"dense", "add_sub", "identity_bytes", "sleepy"} <= set(names)
    assert names["dense"].state == "READY"
    assert names["dense"].version == "1"


# ---------------------------------------------------------------- inference correctness
@pytest.mark.parametrize("batch", [1, 3, 16, 64])
def test_dense_matches_direct_onnxruntime(client, repository: Path, batch: int) -> None:
    x = np.random.default_rng(batch).standard_normal((batch, 16)).astype(np.float32)
    result = client.infer("dense", [_inp("x", x, "FP32")], request_id=f"r{batch}")
    probs, logits = _direct(repository, "dense", {"x": x})
    np.testing.assert_allclose(result.as_numpy("probs"), probs, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(result.as_numpy("logits"), logits, rtol=1e-5, atol=1e-5)
    response = result.get_response()
    assert response.id == f"r{batch}"
    assert response.model_version == "1"


def test_requested_outputs_subset(client) -> None:
    a = np.arange(32, dtype=np.float32).reshape(2, 16)
    b = np.ones((2, 16), np.float32)
    out = [grpcclient.InferRequestedOutput("OUTPUT1")]
    result = client.infer(
        "add_sub", [_inp("INPUT0", a, "FP32"), _inp("INPUT1", b, "FP32")], outputs=out
    )
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - b)
    assert result.as_numpy("OUTPUT0") is None


@pytest.mark.parametrize(
    ("model", "datatype", "array"),
    [
        (
            "identity_bytes",
            "BYTES",
            np.array([[b"hello", b""], ["h\u00e9\u2202".encode(), b"x" * 1000]], dtype=object),
        ),
        ("identity_fp16", "FP16", np.array([[1.5, -2.25, 65504]], dtype=np.float16)),
        ("identity_bool", "BOOL", np.array([[True, False, True], [False, False, True]])),
        ("identity_int8", "INT8", np.array([[-128, 0, 127]], dtype=np.int8)),
    ],
)
def test_datatypes_round_trip(client, model: str, datatype: str, array: np.ndarray) -> None:
    result = client.infer(model, [_inp("INPUT0", array, datatype)])
    got = result.as_numpy("OUTPUT0")
    assert got.shape == array.shape
    np.testing.assert_array_equal(got, array)


def test_no_batch_model(client) -> None:
    x = np.arange(6, dtype=np.int32).reshape(2, 3)
    result = client.infer("nobatch", [_inp("INPUT0", x, "INT32")])
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), x)


def test_variable_dims(client) -> None:
    for width in (1, 5, 9):
        x = np.full((2, width), width, np.float32)
        result = client.infer("variable", [_inp("INPUT0", x, "FP32")])
        np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), x)


def test_reshape_honoured(client) -> None:
    x = np.arange(12, dtype=np.float32).reshape(3, 4)  # client shape [3, 4]; model sees [3, 2, 2]
    result = client.infer("reshaped", [_inp("INPUT0", x, "FP32")])
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), x)
    meta = client.get_model_metadata("reshaped")
    assert list(meta.inputs[0].shape) == [-1, 4]


def test_bf16_round_trip(client) -> None:
    x = np.array([[1.0, -2.5, 3.140625]], dtype=ml_dtypes.bfloat16)
    result = client.infer("identity_bf16", [_inp("INPUT0", x, "BF16")])
    got = result.as_numpy("OUTPUT0")
    np.testing.assert_array_equal(got.astype(np.float32), x.astype(np.float32))


def test_typed_contents(stub) -> None:
    req = service_pb2.ModelInferRequest(model_name="add_sub")
    for name in ("INPUT0", "INPUT1"):
        t = req.inputs.add(name=name, datatype="FP32", shape=[1, 16])
        t.contents.fp32_contents.extend(float(i) for i in range(16))
    resp = stub.ModelInfer(req)
    out = np.frombuffer(resp.raw_output_contents[0], np.float32)
    np.testing.assert_array_equal(out, 2 * np.arange(16, dtype=np.float32))


def test_bf16_raw(stub) -> None:
    req = service_pb2.ModelInferRequest(model_name="variable")
    arr = np.array([[1.0, 2.5, -3.0]], dtype=np.float32)
    req.inputs.add(name="INPUT0", datatype="BF16", shape=[1, 3])
    req.raw_input_contents.append(arr.astype(ml_dtypes.bfloat16).tobytes())
    with pytest.raises(grpc.RpcError) as info:
        stub.ModelInfer(req)
    # the model is FP32: BF16 is a datatype mismatch named as such
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "expected datatype FP32, got BF16" in info.value.details()


# ---------------------------------------------------------------- bad input
def _raw_request(model: str, name: str, datatype: str, shape: list[int], raw: bytes):
    req = service_pb2.ModelInferRequest(model_name=model)
    req.inputs.add(name=name, datatype=datatype, shape=shape)
    req.raw_input_contents.append(raw)
    return req


@pytest.mark.parametrize(
    ("request_", "code", "fragment"),
    [
        (
            _raw_request("dense", "x", "INT64", [1, 16], bytes(128)),
            "INVALID_ARGUMENT",
            "input 'x' of model 'dense': expected datatype FP32, got INT64",
        ),
        (
            _raw_request("dense", "x", "FP32", [1, 15], bytes(60)),
            "INVALID_ARGUMENT",
            "expected shape [-1] + [16], got [1, 15]",
        ),
        (
            _raw_request("dense", "x", "FP32", [1, 16], bytes(63)),
            "INVALID_ARGUMENT",
            "input 'x': raw data has 63 bytes, expected 64",
        ),
        (
            _raw_request("dense", "y", "FP32", [1, 16], bytes(64)),
            "INVALID_ARGUMENT",
            "unexpected inference input 'y'",
        ),
        (
            _raw_request("dense", "x", "FP32", [65, 16], bytes(65 * 64)),
            "INVALID_ARGUMENT",
            "batch size 65 is outside [1, max_batch_size=64]",
        ),
        (
            _raw_request("dnese", "x", "FP32", [1, 16], bytes(64)),
            "NOT_FOUND",
            "did you mean 'dense'?",
        ),
        (
            _raw_request("dense", "x", "FP99", [1, 16], bytes(64)),
            "INVALID_ARGUMENT",
            "unknown datatype 'FP99'",
        ),
        (
            _raw_request("identity_bytes", "INPUT0", "BYTES", [1, 2], b"\x05\x00\x00\x00ab"),
            "INVALID_ARGUMENT",
            "malformed BYTES tensor",
        ),
        (
            _raw_request("identity_bytes", "INPUT0", "BYTES", [1, 2**40], b"\x00" * 8),
            "INVALID_ARGUMENT",
            "malformed BYTES tensor",
        ),
        (
            _raw_request("dense", "x", "FP32", [1, 2**62], bytes(64)),
            "INVALID_ARGUMENT",
            "raw data has 64 bytes",
        ),
    ],
)
def test_bad_inputs(stub, request_, code: str, fragment: str) -> None:
    with pytest.raises(grpc.RpcError) as info:
        stub.ModelInfer(request_)
    assert info.value.code().name == code
    assert fragment in info.value.details()


def test_missing_input_and_unknown_version(stub) -> None:
    req = _raw_request("add_sub", "INPUT0", "FP32", [1, 16], bytes(64))
    with pytest.raises(grpc.RpcError) as info:
        stub.ModelInfer(req)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "missing 'INPUT1'" in info.value.details()
    req = _raw_request("dense", "x", "FP32", [1, 16], bytes(64))
    req.model_version = "3"
    with pytest.raises(grpc.RpcError) as info:
        stub.ModelInfer(req)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    assert "no ready version '3'" in info.value.details()


def test_unknown_requested_output(client) -> None:
    x = np.zeros((1, 16), np.float32)
    with pytest.raises(InferenceServerException, match="unexpected inference output 'prob'"):
        client.infer(
            "dense", [_inp("x", x, "FP32")], outputs=[grpcclient.InferRequestedOutput("prob")]
        )


def test_oversized_message_rejected(client) -> None:
    x = np.zeros((64, 16 * 1100), np.float32)  # ~4.5 MB > the 4 MiB limit of the fixture
    with pytest.raises(InferenceServerException) as info:
        client.infer("dense", [_inp("x", x, "FP32")])
    assert "RESOURCE_EXHAUSTED" in str(info.value.status())
    assert client.is_server_live()


def test_server_keeps_serving_after_errors(client) -> None:
    x = np.ones((2, 16), np.float32)
    for _ in range(3):
        with pytest.raises(InferenceServerException):
            client.infer("dense", [_inp("x", x.astype(np.float64), "FP64")])
    assert client.infer("dense", [_inp("x", x, "FP32")]).as_numpy("probs").shape == (2, 4)


def test_unimplemented_rpcs(client) -> None:
    with pytest.raises(InferenceServerException) as info:
        client.get_cuda_shared_memory_status()
    assert "UNIMPLEMENTED" in str(info.value.status())
    assert "CUDA shared memory is not supported" in info.value.message()


# ---------------------------------------------------------------- streaming and asyncio
def test_stream_infer(client) -> None:
    results: list = []
    q: queue.Queue = queue.Queue()
    client.start_stream(callback=lambda result, error: q.put((result, error)))
    try:
        for i in range(5):
            x = np.full((1, 16), i, np.float32)
            client.async_stream_infer(
                "add_sub", [_inp("INPUT0", x, "FP32"), _inp("INPUT1", x, "FP32")], request_id=str(i)
            )
        bad = np.zeros((1, 3), np.float32)
        client.async_stream_infer(
            "add_sub", [_inp("INPUT0", bad, "FP32"), _inp("INPUT1", bad, "FP32")], request_id="bad"
        )
        results.extend(q.get(timeout=30) for _ in range(6))
    finally:
        client.stop_stream()
    good = {r.get_response().id: r for r, e in results if e is None}
    errors = [e for r, e in results if e is not None]
    assert set(good) == {"0", "1", "2", "3", "4"}
    for i, r in good.items():
        np.testing.assert_array_equal(r.as_numpy("OUTPUT0"), np.full((1, 16), 2 * int(i)))
    assert len(errors) == 1
    assert "expected shape" in errors[0].message()


async def test_aio_concurrent_requests_are_batched(server: EmbeddedServer) -> None:
    async with aioclient.InferenceServerClient(server.grpc_url) as c:
        before = await c.get_inference_statistics("dense")
        xs = [
            np.random.default_rng(i).standard_normal((1, 16)).astype(np.float32) for i in range(48)
        ]

        async def one(x: np.ndarray) -> np.ndarray:
            i = aioclient.InferInput("x", [1, 16], "FP32")
            i.set_data_from_numpy(x)
            r = await c.infer("dense", [i])
            return r.as_numpy("logits")

        outs = await asyncio.gather(*(one(x) for x in xs))
        after = await c.get_inference_statistics("dense")
    sess_out = [
        ort.InferenceSession(
            str(Path(server.server.options.model_repository) / "dense/1/model.onnx")
        ).run(["logits"], {"x": x})[0]
        for x in xs[:3]
    ]
    for got, want in zip(outs[:3], sess_out, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    b = before.model_stats[0]
    a = after.model_stats[0]
    assert a.inference_count - b.inference_count == 48
    executions = a.execution_count - b.execution_count
    assert executions < 48, "48 concurrent batch-1 requests should share batches"


def test_priority_and_timeout_parameters(client) -> None:
    x = np.ones((1, 16), np.float32)
    result = client.infer("dense", [_inp("x", x, "FP32")], priority=1, timeout=1_000_000)
    assert result.as_numpy("probs").shape == (1, 4)
