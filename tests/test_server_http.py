"""The HTTP/REST frontend end to end: a real server, NVIDIA's tritonclient.http (sync and aio).

Every endpoint, JSON and binary tensors, every datatype, compression both ways, and the same
answers as the gRPC frontend on the same server. Malformed requests on the raw wire are in
test_server_http_wire.py.
"""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import ml_dtypes
import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
import tritonclient.http.aio as aiohttpclient
from tritonclient.utils import InferenceServerException

from conftest import build_repository
from pysonic.protocol.http_codec import message_to_json
from pysonic.server import EmbeddedServer, ServerOptions

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def client(http_server: EmbeddedServer):
    c = httpclient.InferenceServerClient(http_server.http_url)
    yield c
    c.close()


@pytest.fixture(scope="module")
def grpc_client(http_server: EmbeddedServer):
    c = grpcclient.InferenceServerClient(http_server.grpc_url)
    yield c
    c.close()


def _inp(name: str, arr: np.ndarray, datatype: str, binary: bool = True) -> httpclient.InferInput:
    i = httpclient.InferInput(name, list(arr.shape), datatype)
    i.set_data_from_numpy(arr, binary_data=binary)
    return i


def _direct(repository: Path, name: str, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    sess = ort.InferenceSession(
        str(repository / name / "1" / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    return sess.run(None, feeds)


# ---------------------------------------------------------------- health, metadata, config
def test_health_and_server_metadata(client) -> None:
    assert client.is_server_live()
    assert client.is_server_ready()
    meta = client.get_server_metadata()
    assert meta["name"] == "pysonic"
    assert {"binary_tensor_data", "model_repository", "statistics"} <= set(meta["extensions"])


def test_model_ready_metadata_config(client) -> None:
    assert client.is_model_ready("dense")
    assert client.is_model_ready("dense", "1")
    assert not client.is_model_ready("dense", "7")
    assert not client.is_model_ready("nope")
    meta = client.get_model_metadata("dense")
    assert meta["name"] == "dense"
    assert meta["versions"] == ["1"]
    assert meta["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 16]}]
    assert [t["name"] for t in meta["outputs"]] == ["probs", "logits"]
    assert client.get_model_metadata("dense", "1") == meta
    assert client.get_model_metadata("nobatch")["inputs"][0]["shape"] == [2, 3]
    cfg = client.get_model_config("dense")
    assert cfg["max_batch_size"] == 64  # a JSON number, as Triton sends it
    assert cfg["dynamic_batching"]["preferred_batch_size"] == [8, 16]
    assert cfg["input"][0]["dims"] == [16]
    assert cfg["input"][0]["data_type"] == "TYPE_FP32"
    assert client.get_model_config("dense", "1") == cfg


def test_answers_match_grpc(client, grpc_client) -> None:
    """Metadata, config and index are the gRPC service's messages, rendered as JSON."""
    meta = grpc_client.get_model_metadata("reshaped")
    assert client.get_model_metadata("reshaped") == message_to_json(meta)
    cfg = grpc_client.get_model_config("dense").config
    assert client.get_model_config("dense") == message_to_json(cfg)
    index = grpc_client.get_model_repository_index()
    assert client.get_model_repository_index() == message_to_json(index)["models"]


def test_repository_index(client) -> None:
    index = {m["name"]: m for m in client.get_model_repository_index()}
    assert {"dense", "add_sub", "identity_bytes", "sleepy"} <= set(index)
    assert index["dense"]["state"] == "READY"
    assert index["dense"]["version"] == "1"


def test_unknown_model_is_404(client) -> None:
    with pytest.raises(InferenceServerException) as info:
        client.get_model_metadata("dnese")
    assert info.value.status() == "404"
    assert "did you mean 'dense'?" in info.value.message()
    with pytest.raises(InferenceServerException) as info:
        client.get_model_config("dense", "3")
    assert info.value.status() == "404"
    assert "no ready version '3'" in info.value.message()


# ---------------------------------------------------------------- inference
@pytest.mark.parametrize("binary_in", [True, False])
@pytest.mark.parametrize("binary_out", [True, False])
def test_dense_matches_direct_onnxruntime(
    client, repository: Path, binary_in: bool, binary_out: bool
) -> None:
    x = np.random.default_rng(3).standard_normal((5, 16)).astype(np.float32)
    outputs = [
        httpclient.InferRequestedOutput(n, binary_data=binary_out) for n in ("probs", "logits")
    ]
    result = client.infer(
        "dense", [_inp("x", x, "FP32", binary_in)], outputs=outputs, request_id="r1"
    )
    probs, logits = _direct(repository, "dense", {"x": x})
    np.testing.assert_allclose(result.as_numpy("probs"), probs, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(result.as_numpy("logits"), logits, rtol=1e-5, atol=1e-5)
    response = result.get_response()
    assert response["id"] == "r1"
    assert response["model_version"] == "1"
    out = response["outputs"][0]
    assert ("data" in out) != binary_out
    assert ("binary_data_size" in out.get("parameters", {})) == binary_out


def test_versioned_infer_and_default_binary_outputs(client) -> None:
    x = np.ones((2, 16), np.float32)
    result = client.infer("dense", [_inp("x", x, "FP32")], model_version="1")
    # no requested outputs: tritonclient asks binary_data_output for all of them
    assert all("binary_data_size" in o["parameters"] for o in result.get_response()["outputs"])
    assert result.as_numpy("probs").shape == (2, 4)


def test_requested_outputs_subset(client) -> None:
    a = np.arange(32, dtype=np.float32).reshape(2, 16)
    b = np.ones((2, 16), np.float32)
    for binary in (True, False):
        out = [httpclient.InferRequestedOutput("OUTPUT1", binary_data=binary)]
        result = client.infer(
            "add_sub", [_inp("INPUT0", a, "FP32"), _inp("INPUT1", b, "FP32")], outputs=out
        )
        np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - b)
        assert result.as_numpy("OUTPUT0") is None


def test_mixed_binary_and_json_inputs_and_outputs(client) -> None:
    a = np.arange(16, dtype=np.float32).reshape(1, 16)
    b = np.full((1, 16), 3, np.float32)
    outs = [
        httpclient.InferRequestedOutput("OUTPUT0", binary_data=False),
        httpclient.InferRequestedOutput("OUTPUT1", binary_data=True),
    ]
    result = client.infer(
        "add_sub", [_inp("INPUT0", a, "FP32", False), _inp("INPUT1", b, "FP32", True)], outputs=outs
    )
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + b)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - b)


_DATATYPES = [
    (
        "identity_bytes",
        "BYTES",
        np.array([[b"hello", b""], ["h\u00e9\u2202".encode(), b"x" * 1000]], dtype=object),
    ),
    ("identity_fp16", "FP16", np.array([[1.5, -2.25, 65504]], dtype=np.float16)),
    ("identity_bool", "BOOL", np.array([[True, False, True], [False, False, True]])),
    ("identity_int8", "INT8", np.array([[-128, 0, 127]], dtype=np.int8)),
    ("nobatch", "INT32", np.arange(6, dtype=np.int32).reshape(2, 3)),
    ("identity_bf16", "BF16", np.array([[1.0, -2.5, 3.140625]], dtype=ml_dtypes.bfloat16)),
]


@pytest.mark.parametrize(
    ("model", "datatype", "array", "binary"),
    [
        pytest.param(*d, binary, id=f"{d[1]}-{'binary' if binary else 'json'}")
        for d in _DATATYPES
        for binary in (True, False)
        if binary or d[1] != "BF16"  # tritonclient.http sends BF16 only as binary (see wire tests)
    ],
)
def test_datatypes_round_trip(
    client, model: str, datatype: str, array: np.ndarray, binary: bool
) -> None:
    out = [httpclient.InferRequestedOutput("OUTPUT0", binary_data=binary)]
    result = client.infer(model, [_inp("INPUT0", array, datatype, binary)], outputs=out)
    got = result.as_numpy("OUTPUT0")
    assert got.shape == array.shape
    if datatype == "BYTES":
        got = np.vectorize(lambda v: v.encode() if isinstance(v, str) else v, otypes=[object])(got)
    if datatype == "BF16":
        got, array = got.astype(np.float32), array.astype(np.float32)
    np.testing.assert_array_equal(got, array)


def test_variable_dims_and_reshape(client) -> None:
    for width in (1, 5, 9):
        x = np.full((2, width), width, np.float32)
        result = client.infer("variable", [_inp("INPUT0", x, "FP32")])
        np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), x)
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    result = client.infer("reshaped", [_inp("INPUT0", x, "FP32", binary=False)])
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), x)


def test_large_json_tensors_are_decoded_off_the_loop(client) -> None:
    """A JSON body past the offload size (~300 KiB here) round-trips exactly."""
    x = np.random.default_rng(0).standard_normal((8, 4000)).astype(np.float32)
    out = [httpclient.InferRequestedOutput("OUTPUT0", binary_data=False)]
    result = client.infer("variable", [_inp("INPUT0", x, "FP32", binary=False)], outputs=out)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), x)


@pytest.mark.parametrize("request_compression", [None, "gzip", "deflate"])
@pytest.mark.parametrize("response_compression", [None, "gzip", "deflate"])
def test_compression(client, request_compression, response_compression) -> None:
    x = np.random.default_rng(1).standard_normal((4, 16)).astype(np.float32)
    plain = client.infer("dense", [_inp("x", x, "FP32")]).as_numpy("probs")
    result = client.infer(
        "dense",
        [_inp("x", x, "FP32")],
        request_compression_algorithm=request_compression,
        response_compression_algorithm=response_compression,
    )
    np.testing.assert_array_equal(result.as_numpy("probs"), plain)


def test_priority_and_timeout_parameters(client) -> None:
    x = np.ones((1, 16), np.float32)
    result = client.infer("dense", [_inp("x", x, "FP32")], priority=1, timeout=1_000_000)
    assert result.as_numpy("probs").shape == (1, 4)


# ---------------------------------------------------------------- errors through the client
def test_inference_errors(client) -> None:
    x = np.ones((1, 15), np.float32)
    with pytest.raises(InferenceServerException) as info:
        client.infer("dense", [_inp("x", x, "FP32")])
    assert info.value.status() == "400"
    assert "expected shape [-1] + [16], got [1, 15]" in info.value.message()
    x = np.ones((1, 16), np.float32)
    with pytest.raises(InferenceServerException, match="unexpected inference output 'prob'"):
        client.infer(
            "dense", [_inp("x", x, "FP32")], outputs=[httpclient.InferRequestedOutput("prob")]
        )
    with pytest.raises(InferenceServerException, match="unexpected inference input 'y'"):
        client.infer("dense", [_inp("y", x, "FP32")])
    with pytest.raises(InferenceServerException) as info:
        client.infer("dense", [_inp("x", x.astype(np.float64), "FP64")])
    assert "expected datatype FP32, got FP64" in info.value.message()
    with pytest.raises(InferenceServerException) as info:
        client.infer("dense", [_inp("x", x, "FP32")], model_version="9")
    assert info.value.status() == "404"
    assert client.infer("dense", [_inp("x", x, "FP32")]).as_numpy("probs").shape == (1, 4)


def test_classification_cuda_shared_memory_and_trace_are_unimplemented(client) -> None:
    x = np.ones((1, 16), np.float32)
    out = [httpclient.InferRequestedOutput("probs", class_count=2)]
    with pytest.raises(InferenceServerException) as info:
        client.infer("dense", [_inp("x", x, "FP32")], outputs=out)
    assert info.value.status() == "501"
    assert "classification" in info.value.message()
    for call in (
        client.get_cuda_shared_memory_status,
        lambda: client.unregister_cuda_shared_memory("r"),
    ):
        with pytest.raises(InferenceServerException) as info:
            call()
        assert info.value.status() == "501"
        assert "CUDA shared memory" in info.value.message()
    for call in (client.get_trace_settings, client.get_log_settings):
        with pytest.raises(InferenceServerException) as info:
            call()
        assert info.value.status() == "501"


def test_system_shared_memory_over_http(client, grpc_client) -> None:
    """tritonclient.http + tritonclient.utils.shared_memory, unchanged: register, infer with the
    input and the output in one region, status, unregister; the registry is the one gRPC uses."""
    import os
    import uuid

    import tritonclient.utils.shared_memory as shm

    x = np.random.default_rng(3).standard_normal((2, 16)).astype(np.float32)
    key = f"/pysonic_http_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    handle = shm.create_shared_memory_region("io", key, 2 * x.nbytes)
    try:
        shm.set_shared_memory_region(handle, [x])
        client.register_system_shared_memory("io", key, 2 * x.nbytes)
        status = client.get_system_shared_memory_status()
        assert [(r["name"], r["key"], r["byte_size"]) for r in status] == [
            ("io", key, 2 * x.nbytes)
        ]
        assert grpc_client.get_system_shared_memory_status().regions["io"].key == key
        inp = httpclient.InferInput("INPUT0", [2, 16], "FP32")
        inp.set_shared_memory("io", x.nbytes)
        other = _inp("INPUT1", x, "FP32")
        out = httpclient.InferRequestedOutput("OUTPUT0")
        out.set_shared_memory("io", x.nbytes, offset=x.nbytes)
        result = client.infer("add_sub", [inp, other], outputs=[out])
        entry = result.get_output("OUTPUT0")  # no data here: it went to the region
        assert "data" not in entry
        assert entry["parameters"]["shared_memory_region"] == "io"
        got = shm.get_contents_as_numpy(handle, np.float32, [2, 16], offset=x.nbytes)
        np.testing.assert_array_equal(got, x + x)
        for region, offset, status in (("io", x.nbytes + 4, "400"), ("nope", 0, "404")):
            bad = httpclient.InferInput("INPUT0", [2, 16], "FP32")
            bad.set_shared_memory(region, x.nbytes, offset=offset)  # past the end; unknown
            with pytest.raises(InferenceServerException) as info:
                client.infer("add_sub", [bad, other])
            assert info.value.status() == status
        client.unregister_system_shared_memory("io")
        assert client.get_system_shared_memory_status() == []
        assert np.array_equal(client.infer("add_sub", [_inp("INPUT0", x, "FP32"), other])
                              .as_numpy("OUTPUT0"), x + x)  # fmt: skip
    finally:
        client.unregister_system_shared_memory()
        shm.destroy_shared_memory_region(handle)


# ---------------------------------------------------------------- both protocols, one core
def test_grpc_and_http_agree_and_both_count(client, grpc_client) -> None:
    x = np.random.default_rng(5).standard_normal((3, 16)).astype(np.float32)
    before = client.get_inference_statistics("add_sub")["model_stats"][0]
    gi = [grpcclient.InferInput(n, [3, 16], "FP32") for n in ("INPUT0", "INPUT1")]
    for i in gi:
        i.set_data_from_numpy(x)
    over_grpc = grpc_client.infer("add_sub", gi)
    over_http = client.infer("add_sub", [_inp("INPUT0", x, "FP32"), _inp("INPUT1", x, "FP32")])
    for name in ("OUTPUT0", "OUTPUT1"):
        np.testing.assert_array_equal(over_grpc.as_numpy(name), over_http.as_numpy(name))
    after = client.get_inference_statistics("add_sub", "1")["model_stats"][0]
    assert (
        after["inference_stats"]["success"]["count"] - before["inference_stats"]["success"]["count"]
        == 2
    )
    assert after["inference_count"] - before["inference_count"] == 6
    grpc_stats = grpc_client.get_inference_statistics("add_sub")
    assert message_to_json(grpc_stats)["model_stats"][0] == after
    every = client.get_inference_statistics()["model_stats"]
    assert {"dense", "add_sub", "identity_bytes"} <= {s["name"] for s in every}
    assert message_to_json(grpc_client.get_inference_statistics())["model_stats"] == every


async def test_aio_client_concurrent_requests_are_batched(http_server: EmbeddedServer) -> None:
    async with aiohttpclient.InferenceServerClient(http_server.http_url) as c:
        assert await c.is_server_ready()
        assert (await c.get_model_metadata("dense"))["name"] == "dense"
        before = (await c.get_inference_statistics("dense"))["model_stats"][0]
        xs = [
            np.random.default_rng(i).standard_normal((1, 16)).astype(np.float32) for i in range(32)
        ]

        async def one(x: np.ndarray, binary: bool) -> np.ndarray:
            i = aiohttpclient.InferInput("x", [1, 16], "FP32")
            i.set_data_from_numpy(x, binary_data=binary)
            out = [aiohttpclient.InferRequestedOutput("logits", binary_data=binary)]
            r = await c.infer("dense", [i], outputs=out)
            return r.as_numpy("logits")

        outs = await asyncio.gather(*(one(x, k % 2 == 0) for k, x in enumerate(xs)))
        after = (await c.get_inference_statistics("dense"))["model_stats"][0]
    repo = Path(http_server.server.options.model_repository)
    for x, got in zip(xs[:4], outs[:4], strict=True):
        want = _direct(repo, "dense", {"x": x})[1]
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert after["inference_count"] - before["inference_count"] == 32
    assert after["execution_count"] - before["execution_count"] < 32, "should share batches"


# ---------------------------------------------------------------- model control
def test_explicit_load_unload_over_http(client) -> None:
    assert client.is_model_ready("identity_int8")
    client.unload_model("identity_int8")
    assert not client.is_model_ready("identity_int8")
    index = {m["name"]: m for m in client.get_model_repository_index()}
    assert index["identity_int8"]["state"] == "UNAVAILABLE"
    x = np.zeros((1, 3), np.int8)
    with pytest.raises(InferenceServerException) as info:
        client.infer("identity_int8", [_inp("INPUT0", x, "INT8")])
    assert info.value.status() == "503"
    client.load_model("identity_int8")
    assert client.is_model_ready("identity_int8")
    np.testing.assert_array_equal(
        client.infer("identity_int8", [_inp("INPUT0", x, "INT8")]).as_numpy("OUTPUT0"), x
    )
    client.load_model("identity_int8", config='{"max_batch_size": 2}')  # Triton's override
    assert client.get_model_config("identity_int8")["max_batch_size"] == 2
    with pytest.raises(InferenceServerException) as info:
        client.load_model("identity_int8", files={"file:1/model.onnx": b"onnx"})
    assert info.value.status() == "501"
    client.load_model("identity_int8")  # back to config.pbtxt


def test_model_control_none_refuses_load_over_http(tmp_path: Path) -> None:
    repo = build_repository(tmp_path / "repo")
    for name in ("sleepy", "limited", "dense", "add_sub", "variable", "reshaped"):
        shutil.rmtree(repo / name)  # a smaller server: mode "none" loads every model
    opts = ServerOptions(
        model_repository=repo, host="127.0.0.1", grpc_port=0, http_port=0, metrics_port=None
    )
    with EmbeddedServer(opts) as srv:
        c = httpclient.InferenceServerClient(srv.http_url)
        assert c.is_model_ready("identity_fp16")
        with pytest.raises(InferenceServerException, match="model-control-mode") as info:
            c.unload_model("identity_fp16")
        assert info.value.status() == "503"
        c.close()
