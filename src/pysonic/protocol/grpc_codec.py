"""gRPC (KServe v2 + Triton) messages <-> :mod:`pysonic.protocol.types`.

Decoding is zero-copy for raw contents: each ``raw_input_contents`` entry is read once and viewed
with ``np.frombuffer`` after its size has been checked against the declared shape and datatype.
Typed ``contents`` (``fp32_contents``, ...) are accepted too, as Triton does. Every problem is an
``InvalidArgumentError`` naming the tensor with expected vs got.

Example::

    req = decode_infer_request(model_infer_request)
    msg = encode_infer_response(response)
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from tritonclient.grpc import service_pb2

from pysonic.errors import InvalidArgumentError
from pysonic.protocol.datatypes import BYTES
from pysonic.protocol.shm import SharedMemoryRegistry, in_shared_memory, read_input
from pysonic.protocol.tensors import (
    input_region,
    numpy_dtype,
    requested_output,
    tensor_from_raw,
    tensor_payload,
)
from pysonic.protocol.types import InferRequest, InferResponse, InferTensor, RequestedOutput

__all__ = [
    "decode_infer_request",
    "decode_infer_response",
    "decode_parameters",
    "encode_infer_request",
    "encode_infer_response",
    "varint",
]

_CONTENT_FIELD = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}


def decode_parameters(params: Any) -> dict[str, Any]:
    """A protobuf ``map<string, InferParameter>`` as a plain dict."""
    out: dict[str, Any] = {}
    for key, p in params.items():
        which = p.WhichOneof("parameter_choice")
        out[key] = getattr(p, which) if which else None
    return out


def decode_infer_request(
    msg: service_pb2.ModelInferRequest, shared_memory: SharedMemoryRegistry | None = None
) -> InferRequest:
    """Decode a ``ModelInferRequest``; tensors are views over the message's bytes.

    Tensors whose parameters name a shared-memory region are views over that region of
    ``shared_memory`` instead (raw_input_contents then holds only the other inputs, in order);
    without a registry such requests are refused."""
    raw = msg.raw_input_contents
    n_raw = len(raw)
    used_raw = 0
    inputs: list[InferTensor] = []
    for t in msg.inputs:
        name, datatype, shape = t.name, t.datatype, tuple(t.shape)
        params = decode_parameters(t.parameters) if t.parameters else {}
        ref = input_region(name, params, shared_memory) if params else None
        if shape and min(shape) < 0:
            err = f"input '{name}': shape {list(shape)} has a negative dimension"
            raise InvalidArgumentError(err)
        if ref is not None:
            if t.HasField("contents"):
                err = f"input '{name}': contents given for an input in shared memory"
                raise InvalidArgumentError(err)
            data = read_input(shared_memory, name, datatype, shape, ref)  # type: ignore[arg-type]
        elif n_raw:
            if used_raw == n_raw:
                err = f"input '{name}': raw_input_contents has no entry for it ({n_raw} given)"
                raise InvalidArgumentError(err)
            data = tensor_from_raw(name, datatype, shape, raw[used_raw])
            used_raw += 1
        elif t.HasField("contents"):
            data = _from_contents(name, datatype, shape, t.contents)
        else:
            err = f"input '{name}': no data (neither raw_input_contents nor contents given)"
            raise InvalidArgumentError(err)
        inputs.append(InferTensor(name, datatype, shape, data, params))
    if used_raw != n_raw:
        err = f"raw_input_contents has {n_raw} entries for {used_raw} inputs not in shared memory"
        raise InvalidArgumentError(err)
    outputs = [
        requested_output(o.name, decode_parameters(o.parameters), shared_memory)
        if o.parameters
        else RequestedOutput(o.name)
        for o in msg.outputs
    ]
    return InferRequest(
        msg.model_name,
        inputs,
        msg.model_version,
        msg.id,
        outputs,
        decode_parameters(msg.parameters) if msg.parameters else {},
    )


def _from_contents(
    name: str, datatype: str, shape: tuple[int, ...], contents: service_pb2.InferTensorContents
) -> np.ndarray:
    dtype = numpy_dtype(name, datatype)
    field = _CONTENT_FIELD.get(datatype)
    if field is None:
        msg = f"input '{name}': datatype {datatype} can only be sent as raw_input_contents"
        raise InvalidArgumentError(msg)
    values = getattr(contents, field)
    count = math.prod(shape)
    if len(values) != count:
        msg = (
            f"input '{name}': {field} holds {len(values)} elements, expected {count} "
            f"for shape {list(shape)}"
        )
        raise InvalidArgumentError(msg)
    if datatype == BYTES:
        out = np.empty(count, dtype=object)
        out[:] = list(values)
        return out.reshape(shape)
    try:
        return np.fromiter(values, dtype=dtype, count=count).reshape(shape)
    except (OverflowError, ValueError) as err:
        msg = f"input '{name}': {field} value out of range for {datatype}: {err}"
        raise InvalidArgumentError(msg) from None


def encode_infer_response(resp: InferResponse) -> bytes:
    """Serialize a response to ModelInferResponse wire bytes, each output copied exactly once.

    The header (names, shapes, parameters) goes through protobuf; each output's bytes are
    appended as a ``raw_output_contents`` field straight from the array's buffer (protobuf would
    copy a tensor twice more: into the message, then into the serialized string)."""
    msg = service_pb2.ModelInferResponse(
        model_name=resp.model_name, model_version=resp.model_version, id=resp.id
    )
    parts: list[bytes | memoryview] = [b""]
    add = msg.outputs.add
    for t in resp.outputs:
        if t.parameters:
            out = add(name=t.name, datatype=t.datatype, shape=t.shape)
            for key, value in t.parameters.items():
                _set_parameter(out.parameters[key], value)
            if in_shared_memory(t):
                # an empty entry keeps raw_output_contents positional (as Triton does)
                parts += (_RAW_OUTPUT_TAG, varint(0))
                continue
        else:
            add(name=t.name, datatype=t.datatype, shape=t.shape)
        parts += _raw_field(_RAW_OUTPUT_TAG, t)
    for key, value in resp.parameters.items():
        _set_parameter(msg.parameters[key], value)
    parts[0] = msg.SerializeToString()
    return b"".join(parts)


def _raw_field(tag: bytes, t: InferTensor) -> tuple[bytes, bytes, bytes | memoryview]:
    """A length-delimited ``raw_*_contents`` entry: tag, length, the tensor's bytes (a view)."""
    data = tensor_payload(t)
    return tag, varint(len(data)), data


def _set_parameter(p: service_pb2.InferParameter, value: Any) -> None:
    if isinstance(value, bool):
        p.bool_param = value
    elif isinstance(value, int):
        p.int64_param = value
    elif isinstance(value, float):
        p.double_param = value
    else:
        p.string_param = str(value)


# ---------------------------------------------------------------------- client side
def encode_infer_request(req: InferRequest) -> bytes:
    """Serialize a request to ModelInferRequest wire bytes, tensors copied exactly once.

    The header (names, shapes, parameters) goes through protobuf; each tensor's bytes are
    appended as a ``raw_input_contents`` field (number 7, length-delimited) straight from the
    array's buffer, so the only copy is the final join (protobuf would copy twice).
    """
    msg = service_pb2.ModelInferRequest(
        model_name=req.model_name, model_version=req.model_version, id=req.id
    )
    parts: list[bytes | memoryview] = [b""]
    for t in req.inputs:
        msg.inputs.add(name=t.name, datatype=t.datatype, shape=t.shape)
        parts += _raw_field(_RAW_INPUT_TAG, t)
    for o in req.outputs:
        out = msg.outputs.add()
        out.name = o.name
        for key, value in o.parameters.items():
            _set_parameter(out.parameters[key], value)
    for key, value in req.parameters.items():
        _set_parameter(msg.parameters[key], value)
    parts[0] = msg.SerializeToString()
    return b"".join(parts)


_RAW_INPUT_TAG = bytes([(7 << 3) | 2])  # ModelInferRequest.raw_input_contents, length-delimited
_RAW_OUTPUT_TAG = bytes([(6 << 3) | 2])  # ModelInferResponse.raw_output_contents


def varint(value: int) -> bytes:
    """Protobuf's base-128 varint encoding of a non-negative integer."""
    if value < 0x80:
        return _SMALL_VARINTS[value]
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


_SMALL_VARINTS = [bytes((v,)) for v in range(0x80)]


def decode_infer_response(msg: service_pb2.ModelInferResponse) -> InferResponse:
    """Decode a response; outputs are views over the message's bytes (sizes checked)."""
    raw = msg.raw_output_contents
    outputs = []
    for i, t in enumerate(msg.outputs):
        shape = tuple(t.shape)
        params = decode_parameters(t.parameters) if t.parameters else {}
        if "shared_memory_region" in params:  # the data is in the client's region, not here
            dtype = np.dtype(object) if t.datatype == BYTES else numpy_dtype(t.name, t.datatype)
            outputs.append(InferTensor(t.name, t.datatype, shape, np.empty(0, dtype), params))
            continue
        if i < len(raw):
            data = tensor_from_raw(t.name, t.datatype, shape, raw[i])
        elif t.HasField("contents"):
            data = _from_contents(t.name, t.datatype, shape, t.contents)
        else:
            err = f"output '{t.name}': no data in the response"
            raise InvalidArgumentError(err)
        outputs.append(InferTensor(t.name, t.datatype, shape, data, params))
    return InferResponse(
        model_name=msg.model_name,
        model_version=msg.model_version,
        outputs=outputs,
        id=msg.id,
        parameters=decode_parameters(msg.parameters) if msg.parameters else {},
    )
