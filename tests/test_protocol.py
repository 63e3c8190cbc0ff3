"""Datatypes, BYTES serialization and the gRPC codec, without a server."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest
from tritonclient.grpc import service_pb2
from tritonclient.utils import serialize_byte_tensor

from pysonic.errors import InvalidArgumentError, UnimplementedError
from pysonic.protocol.datatypes import (
    config_to_wire,
    deserialize_bytes,
    from_numpy_dtype,
    serialize_bytes,
    to_numpy_dtype,
    wire_to_config,
)
from pysonic.protocol.grpc_codec import decode_infer_request, encode_infer_response
from pysonic.protocol.types import InferResponse, InferTensor


@pytest.mark.parametrize(
    ("wire", "dtype"),
    [
        ("FP32", np.float32),
        ("FP16", np.float16),
        ("INT64", np.int64),
        ("BOOL", np.bool_),
        ("UINT8", np.uint8),
        ("BF16", ml_dtypes.bfloat16),
        ("FP64", np.float64),
    ],
)
def test_dtype_mapping_round_trip(wire: str, dtype: type) -> None:
    assert to_numpy_dtype(wire) == np.dtype(dtype)
    assert from_numpy_dtype(np.dtype(dtype)) == wire
    assert config_to_wire(wire_to_config(wire)) == wire


def test_bytes_mapping() -> None:
    assert wire_to_config("BYTES") == "TYPE_STRING"
    assert from_numpy_dtype(np.dtype("S5")) == "BYTES"
    with pytest.raises(InvalidArgumentError, match="unknown datatype 'FP8'"):
        to_numpy_dtype("FP8")


def test_bytes_serialization_matches_tritonclient() -> None:
    arr = np.array([b"a", b"", b"\x00\x01\x02", "\u00e9".encode()], dtype=object)
    ours = serialize_bytes(arr)
    theirs = serialize_byte_tensor(arr).item()
    assert ours == theirs
    back = deserialize_bytes(ours, 4)
    assert list(back) == list(arr)


@pytest.mark.parametrize(
    ("raw", "count", "fragment"),
    [
        (b"\x01\x00\x00\x00ab", 1, "trailing bytes"),
        (b"\x09\x00\x00\x00ab", 1, "declares 9 bytes"),
        (b"\x01\x00\x00\x00a", 2, "at least 8 needed"),
        (b"", 10**12, "shape holds 1000000000000 elements"),
    ],
)
def test_bytes_deserialization_errors(raw: bytes, count: int, fragment: str) -> None:
    with pytest.raises(InvalidArgumentError, match=fragment):
        deserialize_bytes(raw, count, name="t")


def test_decode_is_zero_copy_view() -> None:
    msg = service_pb2.ModelInferRequest(model_name="m", id="7")
    msg.inputs.add(name="x", datatype="FP32", shape=[2, 3])
    msg.raw_input_contents.append(np.arange(6, dtype=np.float32).tobytes())
    req = decode_infer_request(msg)
    x = req.inputs[0].data
    assert x.shape == (2, 3)
    assert not x.flags.owndata  # a view over the received bytes
    assert not x.flags.writeable
    np.testing.assert_array_equal(x, np.arange(6, dtype=np.float32).reshape(2, 3))
    assert req.id == "7"


def test_decode_parameters_and_typed_contents() -> None:
    msg = service_pb2.ModelInferRequest(model_name="m")
    msg.parameters["priority"].uint64_param = 2
    msg.parameters["timeout"].int64_param = 500
    t = msg.inputs.add(name="i", datatype="INT8", shape=[3])
    t.contents.int_contents.extend([1, -2, 3])
    req = decode_infer_request(msg)
    assert req.parameters == {"priority": 2, "timeout": 500}
    assert req.inputs[0].data.dtype == np.int8
    t.contents.int_contents[0] = 1000
    with pytest.raises(InvalidArgumentError, match="out of range for INT8"):
        decode_infer_request(msg)


def test_decode_rejects_inconsistent_raw_count_and_shm() -> None:
    msg = service_pb2.ModelInferRequest(model_name="m")
    msg.inputs.add(name="a", datatype="FP32", shape=[1])
    msg.inputs.add(name="b", datatype="FP32", shape=[1])
    msg.raw_input_contents.append(bytes(4))
    with pytest.raises(InvalidArgumentError, match="raw_input_contents has no entry for it"):
        decode_infer_request(msg)
    msg.raw_input_contents.extend([bytes(4), bytes(4)])
    with pytest.raises(InvalidArgumentError, match="3 entries for 2 inputs"):
        decode_infer_request(msg)
    shm = service_pb2.ModelInferRequest(model_name="m")
    t = shm.inputs.add(name="a", datatype="FP32", shape=[1])
    t.parameters["shared_memory_region"].string_param = "r"
    with pytest.raises(InvalidArgumentError, match="'shared_memory_byte_size' must be specified"):
        decode_infer_request(shm)
    t.parameters["shared_memory_byte_size"].int64_param = 4
    with pytest.raises(UnimplementedError, match="shared memory is not available"):
        decode_infer_request(shm)  # no registry: a client-side decode


def test_encode_response() -> None:
    data = np.arange(4, dtype=np.float32).reshape(2, 2)
    strings = np.array([b"x", b"yz"], dtype=object)
    resp = InferResponse(
        "m",
        "1",
        [
            InferTensor("a", "FP32", data.shape, data),
            InferTensor("s", "BYTES", strings.shape, strings),
        ],
        id="q",
    )
    msg = service_pb2.ModelInferResponse.FromString(encode_infer_response(resp))
    assert msg.id == "q"
    assert msg.model_version == "1"
    assert [o.name for o in msg.outputs] == ["a", "s"]
    assert list(msg.outputs[0].shape) == [2, 2]
    np.testing.assert_array_equal(
        np.frombuffer(msg.raw_output_contents[0], np.float32), data.ravel()
    )
    assert list(deserialize_bytes(msg.raw_output_contents[1], 2)) == [b"x", b"yz"]


@pytest.mark.parametrize(
    "array",
    [
        np.arange(6, dtype=np.float32).reshape(2, 3).astype(ml_dtypes.bfloat16),
        np.zeros((0, 5), np.float32),
        np.arange(12.0).reshape(3, 4)[:, ::2],  # not contiguous
        np.array([True, False, True]),
        np.float16(2.5) * np.ones((1, 2), np.float16),
    ],
    ids=["bf16", "zero-size", "strided", "bool", "fp16"],
)
def test_wire_encoders_round_trip(array: np.ndarray) -> None:
    """Requests and responses written as wire bytes decode to the same tensors."""
    from pysonic.protocol.datatypes import from_numpy_dtype
    from pysonic.protocol.grpc_codec import decode_infer_response, encode_infer_request
    from pysonic.protocol.types import InferRequest

    tensor = InferTensor("t", from_numpy_dtype(array.dtype), array.shape, array)
    wire = encode_infer_request(InferRequest("m", [tensor], id="7"))
    req = decode_infer_request(service_pb2.ModelInferRequest.FromString(wire))
    assert req.id == "7"
    np.testing.assert_array_equal(req.inputs[0].data, array)
    assert req.inputs[0].data.dtype == array.dtype
    wire = encode_infer_response(InferResponse("m", "1", [tensor], id="7"))
    resp = decode_infer_response(service_pb2.ModelInferResponse.FromString(wire))
    np.testing.assert_array_equal(resp.outputs[0].data, array)
    assert resp.outputs[0].shape == array.shape
