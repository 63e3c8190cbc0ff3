"""The HTTP codec and body helpers on their own: zero-copy views, JSON kinds, Triton's JSON."""

from __future__ import annotations

import json

import numpy as np
import pytest
from tritonclient.grpc import model_config_pb2, service_pb2

from pysonic.errors import InvalidArgumentError, UnimplementedError
from pysonic.protocol.http_codec import (
    decode_infer_request,
    encode_infer_response,
    message_to_json,
)
from pysonic.protocol.types import InferRequest, InferResponse, InferTensor, RequestedOutput
from pysonic.server.http.body import accepted_encoding


def _body(inputs: list[dict], binary: bytes = b"", **extra) -> tuple[bytes, int | None]:
    header = json.dumps({"inputs": inputs, **extra}).encode()
    return header + binary, (len(header) if binary else None)


def test_binary_inputs_are_views_over_the_body() -> None:
    x = np.arange(8, dtype=np.float32)
    body, n = _body(
        [
            {
                "name": "x",
                "datatype": "FP32",
                "shape": [2, 4],
                "parameters": {"binary_data_size": 32},
            }
        ],
        x.tobytes(),
    )
    req = decode_infer_request(body, n, "m", "1")
    arr = req.inputs[0].data
    assert arr.shape == (2, 4)
    np.testing.assert_array_equal(arr.reshape(-1), x)
    assert np.shares_memory(arr, np.frombuffer(body, np.uint8)), "copied instead of viewed"
    assert (req.model_name, req.model_version) == ("m", "1")


@pytest.mark.parametrize(
    ("datatype", "data", "expected"),
    [
        ("FP32", [[1, 2.5], [3, 4]], np.array([[1, 2.5], [3, 4]], np.float32)),
        ("INT64", [1, -2, 3, 4], np.array([[1, -2], [3, 4]], np.int64)),
        ("UINT8", [0, 255, 1, 2], np.array([[0, 255], [1, 2]], np.uint8)),
        ("BOOL", [True, False, False, True], np.array([[True, False], [False, True]])),
        ("FP16", [0.5, 1, 2, 3], np.array([[0.5, 1], [2, 3]], np.float16)),
    ],
)
def test_json_data_converted_by_numpy(datatype: str, data: list, expected: np.ndarray) -> None:
    body, n = _body([{"name": "t", "datatype": datatype, "shape": [2, 2], "data": data}])
    arr = decode_infer_request(body, n, "m").inputs[0].data
    assert arr.dtype == expected.dtype
    np.testing.assert_array_equal(arr, expected)


def test_json_bytes_are_utf8() -> None:
    body, n = _body([{"name": "s", "datatype": "BYTES", "shape": [1, 2], "data": ["a", "\u00e9"]}])
    arr = decode_infer_request(body, n, "m").inputs[0].data
    assert arr.dtype == object
    assert arr.tolist() == [[b"a", "\u00e9".encode()]]


@pytest.mark.parametrize(
    ("datatype", "data", "fragment"),
    [
        ("BOOL", [1, 0], "not BOOL values"),
        ("INT32", [True, False], "booleans, not INT32"),
        ("UINT8", [-1, 0], "outside UINT8's range"),
        ("INT64", [2**64, 0], "outside INT64's range"),
    ],
)
def test_json_kinds_checked(datatype: str, data: list, fragment: str) -> None:
    body, n = _body([{"name": "t", "datatype": datatype, "shape": [2], "data": data}])
    with pytest.raises(InvalidArgumentError, match=fragment):
        decode_infer_request(body, n, "m")


def test_output_parameters_hook() -> None:
    x = {"name": "x", "datatype": "FP32", "shape": [1], "data": [1]}
    body, n = _body([x], outputs=[{"name": "y", "parameters": {"classification": 3}}])
    with pytest.raises(UnimplementedError, match="classification"):
        decode_infer_request(body, n, "m")
    shm = {"shared_memory_region": "r", "shared_memory_byte_size": 4}
    body, n = _body([{**x, "parameters": shm}])
    with pytest.raises(UnimplementedError, match="shared memory is not available"):
        decode_infer_request(body, n, "m")  # no registry given
    body, n = _body([{**x, "parameters": {"shared_memory_region": "r"}}])
    with pytest.raises(InvalidArgumentError, match="shared_memory_byte_size"):
        decode_infer_request(body, n, "m")


def test_encode_binary_and_json_outputs() -> None:
    y = np.arange(6, dtype=np.float32).reshape(2, 3)
    s = np.array([b"ab", b"c"], dtype=object)
    resp = InferResponse(
        "m", "1", [InferTensor("y", "FP32", (2, 3), y), InferTensor("s", "BYTES", (2,), s)], id="7"
    )
    req = InferRequest("m", [], outputs=[RequestedOutput("y", {"binary_data": True}),
                                          RequestedOutput("s")])  # fmt: skip
    parts, n = encode_infer_response(resp, req)
    head = json.loads(parts[0])
    assert n == len(parts[0])
    assert head["id"] == "7"
    assert head["outputs"][0]["parameters"] == {"binary_data_size": 24}
    assert head["outputs"][1]["data"] == ["ab", "c"]
    assert bytes(parts[1]) == y.tobytes()
    assert np.shares_memory(np.frombuffer(parts[1], np.float32), y), "copied instead of viewed"
    parts, n = encode_infer_response(resp, InferRequest("m", []))
    assert n is None
    assert len(parts) == 1
    assert json.loads(parts[0])["outputs"][0]["data"] == [0, 1, 2, 3, 4, 5]


def test_message_to_json_int64_as_numbers_and_all_fields() -> None:
    cfg = model_config_pb2.ModelConfig(name="m", max_batch_size=8)
    cfg.input.add(name="x", data_type=model_config_pb2.TYPE_FP32, dims=[-1, 16])
    cfg.dynamic_batching.max_queue_delay_microseconds = 100
    obj = message_to_json(cfg)
    assert obj["input"][0]["dims"] == [-1, 16]
    assert obj["dynamic_batching"]["max_queue_delay_microseconds"] == 100
    assert obj["input"][0]["data_type"] == "TYPE_FP32"
    stats = service_pb2.ModelStatisticsResponse()
    stats.model_stats.add(name="m", version="1", inference_count=2**40)
    assert message_to_json(stats)["model_stats"][0]["inference_count"] == 2**40
    assert message_to_json(stats)["model_stats"][0]["execution_count"] == 0


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, None),
        (b"gzip", "gzip"),
        (b"deflate", "deflate"),
        (b"gzip, deflate", "gzip"),
        (b"deflate;q=0.9, gzip;q=0.5", "deflate"),
        (b"identity, gzip;q=0.5", None),
        (b"br", None),
        (b"gzip;q=0", None),
        (b"gzip;q=abc, deflate", "deflate"),
    ],
)
def test_accepted_encoding(header: bytes | None, expected: str | None) -> None:
    assert accepted_encoding(header) == expected
