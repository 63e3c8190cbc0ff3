"""Property-based tests (hypothesis) of the codecs: every datatype, any shape, any values.

* BYTES length-prefixed serialization round-trips, and parsing arbitrary bytes either gives
  elements that re-serialize to exactly those bytes or a clear InvalidArgumentError;
* gRPC: pysonic's request / response encoders and decoders round-trip bit for bit, and agree
  with tritonclient's own encoding (its ``InferInput`` messages decode to the same arrays);
* HTTP: bodies built by tritonclient.http (JSON and binary tensors) decode to the same arrays,
  and pysonic's responses parse back with tritonclient.http's ``InferResult``.

Arrays are compared as bytes (so NaN payloads, signed zeros and BF16 bit patterns count).
"""

from __future__ import annotations

import json
from typing import Any

import ml_dtypes
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from hypothesis import assume, given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from tritonclient.grpc import service_pb2

from pysonic.errors import InvalidArgumentError, PysonicError
from pysonic.protocol import grpc_codec, http_codec
from pysonic.protocol.datatypes import deserialize_bytes, serialize_bytes, to_numpy_dtype
from pysonic.protocol.shm import SharedMemoryRegistry
from pysonic.protocol.types import InferRequest, InferResponse, InferTensor, RequestedOutput

FIXED = ["BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64",
         "FP16", "FP32", "FP64", "BF16"]  # fmt: skip
ALL = [*FIXED, "BYTES"]
shapes = hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=5)
byte_strings = st.binary(max_size=40)


@st.composite
def tensors(draw: st.DrawFn, datatype: str | None = None, *, finite: bool = False) -> np.ndarray:
    """An array of ``datatype`` (drawn if None), any shape, any values (BF16 as raw bits)."""
    dt = datatype or draw(st.sampled_from(ALL))
    shape = draw(shapes)
    if dt == "BYTES":
        items = draw(
            st.lists(byte_strings, min_size=int(np.prod(shape)), max_size=int(np.prod(shape)))
        )
        arr = np.empty(len(items), dtype=object)
        arr[:] = items
        return arr.reshape(shape)
    if dt == "BF16":
        bits = draw(hnp.arrays(np.uint16, shape))
        arr = bits.view(ml_dtypes.bfloat16)
        if finite:
            arr = np.where(np.isfinite(arr.astype(np.float32)), arr, np.zeros_like(arr))
        return arr
    dtype = to_numpy_dtype(dt)
    elements = None
    if finite and dtype.kind == "f":
        elements = st.floats(width=dtype.itemsize * 8, allow_nan=False, allow_infinity=False)
    return draw(hnp.arrays(dtype, shape, elements=elements))


def wire(datatype: str, arr: np.ndarray) -> InferTensor:
    return InferTensor("t", datatype, tuple(arr.shape), arr)


def assert_same(got: np.ndarray, expected: np.ndarray, datatype: str) -> None:
    assert got.shape == expected.shape
    if datatype == "BYTES":
        assert [bytes(x) for x in got.reshape(-1)] == [bytes(x) for x in expected.reshape(-1)]
    else:
        assert got.dtype == expected.dtype
        assert got.tobytes() == expected.tobytes()


# ---------------------------------------------------------------------- BYTES serialization
@given(st.lists(byte_strings, max_size=30))
def test_bytes_serialization_round_trips(items: list[bytes]) -> None:
    arr = np.empty(len(items), dtype=object)
    arr[:] = items
    raw = serialize_bytes(arr)
    assert len(raw) == 4 * len(items) + sum(map(len, items))
    back = deserialize_bytes(raw, len(items))
    assert list(back) == items
    assert serialize_bytes(back) == raw


@given(st.binary(max_size=200), st.integers(min_value=-2, max_value=60))
def test_bytes_parser_accepts_exactly_its_own_format(raw: bytes, count: int) -> None:
    try:
        parsed = deserialize_bytes(raw, count, name="t")
    except InvalidArgumentError as err:
        message = err.message
    else:
        assert len(parsed) == count
        assert serialize_bytes(parsed) == raw
        return
    assert message.startswith("input 't': malformed BYTES tensor")


# ---------------------------------------------------------------------- gRPC
@given(st.data())
def test_grpc_request_round_trip(data: st.DataObject) -> None:
    dts = data.draw(st.lists(st.sampled_from(ALL), min_size=1, max_size=4))
    inputs = [
        InferTensor(f"in{i}", dt, tuple(a.shape), a)
        for i, dt in enumerate(dts)
        for a in [data.draw(tensors(dt))]
    ]
    params = data.draw(
        st.dictionaries(
            st.text(min_size=1, max_size=8),
            st.one_of(st.booleans(), st.integers(-(2**63), 2**63 - 1), st.text(max_size=8)),
            max_size=3,
        )
    )
    req = InferRequest("m", inputs, "3", "id-1", [RequestedOutput("out")], params)
    wire_bytes = grpc_codec.encode_infer_request(req)
    back = grpc_codec.decode_infer_request(service_pb2.ModelInferRequest.FromString(wire_bytes))
    assert (back.model_name, back.model_version, back.id) == ("m", "3", "id-1")
    assert back.parameters == params
    assert [o.name for o in back.outputs] == ["out"]
    for got, sent in zip(back.inputs, inputs, strict=True):
        assert (got.name, got.datatype, got.shape) == (sent.name, sent.datatype, sent.shape)
        assert_same(got.data, sent.data, sent.datatype)


@given(st.data())
def test_grpc_response_round_trip(data: st.DataObject) -> None:
    dts = data.draw(st.lists(st.sampled_from(ALL), min_size=0, max_size=4))
    outputs = [
        InferTensor(f"out{i}", dt, tuple(a.shape), a)
        for i, dt in enumerate(dts)
        for a in [data.draw(tensors(dt))]
    ]
    resp = InferResponse("m", "1", outputs, "rid")
    msg = service_pb2.ModelInferResponse.FromString(grpc_codec.encode_infer_response(resp))
    back = grpc_codec.decode_infer_response(msg)
    assert back.id == "rid"
    for got, sent in zip(back.outputs, outputs, strict=True):
        assert_same(got.data, sent.data, sent.datatype)


@given(st.sampled_from(ALL), st.data())
def test_tritonclient_grpc_inputs_decode_to_the_same_arrays(dt: str, data: st.DataObject) -> None:
    arr = data.draw(tensors(dt))
    inp = grpcclient.InferInput("t", list(arr.shape), dt)
    inp.set_data_from_numpy(arr)
    msg = service_pb2.ModelInferRequest(model_name="m")
    msg.inputs.extend([inp._get_tensor()])
    msg.raw_input_contents.extend([inp._get_content()])
    got = grpc_codec.decode_infer_request(msg).inputs[0]
    assert_same(got.data, arr, dt)


@given(st.sampled_from(["INT32", "INT64", "UINT8", "FP32", "FP64", "BOOL", "BYTES"]), st.data())
def test_typed_contents_decode_like_raw(dt: str, data: st.DataObject) -> None:
    """Triton's typed ``contents`` fields (not raw bytes) give the same arrays."""
    arr = data.draw(tensors(dt))
    msg = service_pb2.ModelInferRequest(model_name="m")
    t = msg.inputs.add(name="t", datatype=dt, shape=arr.shape)
    field = grpc_codec._CONTENT_FIELD[dt]
    getattr(t.contents, field).extend(arr.reshape(-1).tolist())
    got = grpc_codec.decode_infer_request(msg).inputs[0]
    assert_same(got.data, arr, dt)


# ---------------------------------------------------------------------- HTTP
def _http_body(inputs: list[Any], outputs: list[Any] | None = None) -> tuple[bytes, int | None]:
    body, header_length = httpclient.InferenceServerClient.generate_request_body(
        inputs, outputs=outputs
    )
    return body, header_length


JSON_TYPES = ["BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64",
              "FP32", "FP64", "BYTES"]  # fmt: skip


@given(st.sampled_from(ALL), st.booleans(), st.data())
def test_tritonclient_http_bodies_decode_to_the_same_arrays(
    dt: str, binary: bool, data: st.DataObject
) -> None:
    if dt not in JSON_TYPES:
        binary = True  # tritonclient sends FP16 / BF16 only as binary
    arr = data.draw(tensors(dt, finite=not binary))
    if dt == "BYTES" and not binary:
        # JSON carries BYTES as UTF-8 strings
        arr = np.vectorize(lambda b: b.decode("utf-8", "replace").encode(), otypes=[object])(arr)
        assume(all(b.decode().isprintable() for b in arr.reshape(-1)))
    inp = httpclient.InferInput("t", list(arr.shape), dt)
    inp.set_data_from_numpy(arr, binary_data=binary)  # BF16 as ml_dtypes.bfloat16
    body, header_length = _http_body([inp])
    req = http_codec.decode_infer_request(body, header_length, "m")
    assert_same(req.inputs[0].data, arr, dt)


@given(st.data(), st.booleans())
def test_http_response_parses_with_tritonclient(data: st.DataObject, binary: bool) -> None:
    dts = data.draw(st.lists(st.sampled_from(JSON_TYPES if not binary else ALL), max_size=3))
    outputs = []
    for i, dt in enumerate(dts):
        arr = data.draw(tensors(dt, finite=True))
        if dt == "BYTES" and not binary:
            arr = np.vectorize(lambda b: b.hex().encode(), otypes=[object])(arr)
        outputs.append(InferTensor(f"out{i}", dt, tuple(arr.shape), arr))
    req = InferRequest("m", [], parameters={"binary_data_output": binary})
    parts, header_length = http_codec.encode_infer_response(
        InferResponse("m", "1", outputs, "rid"), req
    )
    body = b"".join(bytes(p) for p in parts)
    result = httpclient.InferResult.from_response_body(body, header_length=header_length)
    for t in outputs:
        got = result.as_numpy(t.name)
        if t.datatype == "BF16":  # tritonclient widens BF16 to float32
            np.testing.assert_array_equal(got, t.data.astype(np.float32))
        elif t.datatype == "BYTES":
            got_bytes = [x.encode() if isinstance(x, str) else bytes(x) for x in got.reshape(-1)]
            assert got_bytes == list(t.data.reshape(-1))
        else:
            assert got.shape == t.data.shape
            assert got.astype(t.data.dtype).tobytes() == t.data.tobytes()


@given(st.sampled_from(JSON_TYPES), st.data())
def test_nested_and_flat_json_data_agree(dt: str, data: st.DataObject) -> None:
    arr = data.draw(tensors(dt, finite=True))
    if dt == "BYTES":
        arr = np.vectorize(lambda b: b.hex().encode(), otypes=[object])(arr)
        values = np.vectorize(lambda b: b.decode(), otypes=[object])(arr)
    else:
        values = arr
    for nested in (values.tolist(), values.reshape(-1).tolist()):
        header = {
            "inputs": [{"name": "t", "datatype": dt, "shape": list(arr.shape), "data": nested}]
        }
        req = http_codec.decode_infer_request(json.dumps(header).encode(), None, "m")
        assert_same(req.inputs[0].data, arr, dt)


@pytest.mark.parametrize("dt", ["INT8", "UINT8", "INT32", "UINT32", "INT64", "UINT64"])
@given(value=st.integers(-(2**70), 2**70))
def test_json_integers_outside_the_range_are_refused(dt: str, value: int) -> None:
    info = np.iinfo(to_numpy_dtype(dt))
    header = {"inputs": [{"name": "t", "datatype": dt, "shape": [1], "data": [value]}]}
    body = json.dumps(header).encode()
    if info.min <= value <= info.max:
        assert int(http_codec.decode_infer_request(body, None, "m").inputs[0].data[0]) == value
    else:
        with pytest.raises(InvalidArgumentError):
            http_codec.decode_infer_request(body, None, "m")


def test_json_uint64_past_int64_found_by_hypothesis() -> None:
    """Found by the property tests: numpy reads [2**63, 0] as float64, so UINT64 values past
    int64 were refused as "non-integer numbers" (and digits could be lost)."""
    header = {"inputs": [{"name": "t", "datatype": "UINT64", "shape": [2], "data": [2**63, 0]}]}
    got = http_codec.decode_infer_request(json.dumps(header).encode(), None, "m").inputs[0].data
    assert got.dtype == np.uint64
    assert got.tolist() == [2**63, 0]
    header["inputs"][0]["data"] = [2**64 - 1, 2**53 + 1]
    got = http_codec.decode_infer_request(json.dumps(header).encode(), None, "m").inputs[0].data
    assert got.tolist() == [2**64 - 1, 2**53 + 1]  # exact, not through float64
    for bad, message in (([2**64, 0], "outside UINT64's range"), ([1.5, 2**70], "non-integer")):
        header["inputs"][0]["data"] = bad
        with pytest.raises(InvalidArgumentError, match=message):
            http_codec.decode_infer_request(json.dumps(header).encode(), None, "m")


@pytest.mark.parametrize("dt", ["FP16", "BF16", "FP32"])
def test_json_floats_too_large_are_refused_found_by_fuzzing(dt: str) -> None:
    """Found by the HTTP fuzz harness: a finite JSON number past FP16 / FP32 / BF16's range was
    cast to inf (with a numpy RuntimeWarning) instead of being refused."""
    header = {"inputs": [{"name": "t", "datatype": dt, "shape": [2], "data": [1e300, 1.0]}]}
    with pytest.raises(InvalidArgumentError, match=f"outside {dt}'s range"):
        http_codec.decode_infer_request(json.dumps(header).encode(), None, "m")
    header["inputs"][0]["data"] = [float("inf"), -1.5]  # json's Infinity stays accepted
    got = http_codec.decode_infer_request(json.dumps(header).encode(), None, "m").inputs[0].data
    assert np.isinf(got[0].astype(np.float32))


# ---------------------------------------------------------------------- malformed requests
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**65), 2**65) | st.floats() | st.text(max_size=4),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=12,
)
PARAMS = ["binary_data_size", "binary_data", "shared_memory_region", "shared_memory_byte_size",
          "shared_memory_offset", "classification", "binary_data_output"]  # fmt: skip
parameters = st.dictionaries(st.sampled_from(PARAMS), st.integers(-3, 70) | json_values, max_size=3)
tensor_json = st.fixed_dictionaries(
    {
        "name": st.sampled_from(["x", "y"]) | json_values,
        "datatype": st.sampled_from([*ALL, "FP8", ""]) | json_values,
        "shape": st.lists(st.integers(-1, 4), max_size=3) | json_values,
    },
    optional={"data": json_values, "parameters": parameters},
)
request_json = st.fixed_dictionaries(
    {"inputs": st.lists(tensor_json, max_size=3) | json_values},
    optional={
        "outputs": st.lists(
            st.fixed_dictionaries(
                {"name": st.text(max_size=2)}, optional={"parameters": parameters}
            ),
            max_size=2,
        )
        | json_values,
        "id": json_values,
        "parameters": parameters,
    },
)


@given(request_json, st.binary(max_size=80), st.none() | st.integers(-5, 400))
def test_any_http_request_decodes_or_is_a_clear_error(
    header: dict, tail: bytes, header_length: int | None
) -> None:
    """Structured fuzzing of the JSON header: nothing but InvalidArgumentError (or another
    PysonicError) ever comes out, and what decodes matches its declared shapes."""
    head = json.dumps(header).encode()
    body = head + tail
    length = len(head) if header_length is None and tail else header_length
    registry = SharedMemoryRegistry(allowed_key_prefixes=["nothing_"])
    try:
        req = http_codec.decode_infer_request(body, length, "m", shared_memory=registry)
    except PysonicError:
        return
    for t in req.inputs:
        assert t.data.shape == t.shape


@given(st.data())
def test_any_grpc_request_decodes_or_is_a_clear_error(data: st.DataObject) -> None:
    msg = service_pb2.ModelInferRequest(model_name="m")
    for _ in range(data.draw(st.integers(0, 3))):
        t = msg.inputs.add(
            name=data.draw(st.sampled_from(["x", "y", ""])),
            datatype=data.draw(st.sampled_from([*ALL, "FP8", ""])),
            shape=data.draw(st.lists(st.integers(-2, 5), max_size=3)),
        )
        for key in data.draw(st.lists(st.sampled_from(PARAMS), max_size=2, unique=True)):
            value = data.draw(st.integers(-3, 70) | st.text(max_size=3) | st.booleans())
            p = t.parameters[key]
            if isinstance(value, bool):
                p.bool_param = value
            elif isinstance(value, int):
                p.int64_param = value
            else:
                p.string_param = value
        if data.draw(st.booleans()):
            field = data.draw(st.sampled_from(sorted(set(grpc_codec._CONTENT_FIELD.values()))))
            values = data.draw(st.lists(st.integers(0, 100), max_size=6))
            if field == "bytes_contents":
                getattr(t.contents, field).extend(bytes([v]) for v in values)
            elif field == "bool_contents":
                getattr(t.contents, field).extend(bool(v % 2) for v in values)
            else:
                getattr(t.contents, field).extend(values)
    msg.raw_input_contents.extend(data.draw(st.lists(st.binary(max_size=40), max_size=3)))
    registry = SharedMemoryRegistry(allowed_key_prefixes=["nothing_"])
    try:
        req = grpc_codec.decode_infer_request(msg, registry)
    except PysonicError:
        return
    for t in req.inputs:
        assert t.data.shape == t.shape
