"""KServe v2 HTTP/REST bodies (JSON + Triton's binary tensor extension) <-> protocol types.

A request body is a JSON header, optionally followed by binary sections: the header's length is
in the ``Inference-Header-Content-Length`` HTTP header, and each input with a
``binary_data_size`` parameter takes that many bytes, in input order. Binary inputs are
``np.frombuffer`` views over the body (sizes checked before anything is allocated), exactly as
gRPC's ``raw_input_contents``; JSON ``data`` (flat or nested, row-major) is converted by numpy in
C, with its kind checked (no strings or floats into integer tensors, integers within range).

Datatypes as tritonclient.http sends them: BYTES in JSON are UTF-8 strings; BOOL are ``true`` /
``false``; FP16 are numbers (Triton refuses FP16 and BF16 in JSON; pysonic accepts numbers for
both and answers them as numbers). Outputs go binary when the request says so
(``binary_data_output`` for all, a requested output's ``binary_data`` for one), else as JSON
``data``, flattened row-major as Triton does.

Example::

    req = decode_infer_request(body, header_length, "dense_tagger")
    parts, header_length = encode_infer_response(response, req)
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

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
    "dump_json",
    "encode_infer_response",
    "error_body",
    "json_elements",
    "load_json",
    "message_to_json",
]


def load_json(body: bytes | memoryview, what: str = "request body") -> Any:
    """``json.loads`` with every failure an InvalidArgumentError saying where."""
    try:
        return json.loads(body)
    except (ValueError, RecursionError) as err:  # JSONDecodeError and UnicodeDecodeError
        msg = f"malformed JSON in the {what}: {err}"
        raise InvalidArgumentError(msg) from None


def dump_json(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def error_body(message: str) -> bytes:
    """Triton's error body: ``{"error": "..."}``."""
    return dump_json({"error": message})


# ---------------------------------------------------------------------- requests
def decode_infer_request(
    body: bytes,
    header_length: int | None,
    model_name: str,
    model_version: str = "",
    shared_memory: SharedMemoryRegistry | None = None,
) -> InferRequest:
    """Decode an /infer body; binary inputs are views over ``body``.

    ``header_length`` is the JSON header's size (``Inference-Header-Content-Length``), ``None``
    when the whole body is JSON. Tensors whose parameters name a region of ``shared_memory``
    are views over that region (requested outputs are written into theirs)."""
    size = len(body)
    if header_length is None:
        header_length = size
    elif not 0 <= header_length <= size:
        msg = f"Inference-Header-Content-Length {header_length} is outside the body's {size} bytes"
        raise InvalidArgumentError(msg)
    header = load_json(
        body if header_length == size else body[:header_length], "inference request header"
    )
    if not isinstance(header, dict):
        raise InvalidArgumentError("the inference request header must be a JSON object")
    binary = memoryview(body)[header_length:]
    inputs_json = _field(header, "inputs", list, "request")
    inputs: list[InferTensor] = []
    pos = 0
    for t in inputs_json:
        tensor, pos = _decode_input(t, binary, pos, shared_memory)
        inputs.append(tensor)
    if pos != len(binary):
        msg = (
            f"{len(binary)} bytes follow the JSON header, but the inputs' binary_data_size "
            f"parameters add up to {pos}"
        )
        raise InvalidArgumentError(msg)
    outputs = [
        _decode_output(o, shared_memory) for o in _field(header, "outputs", list, "request", [])
    ]
    request_id = _field(header, "id", str, "request", "")
    params = _field(header, "parameters", dict, "request", {})
    return InferRequest(model_name, inputs, model_version, request_id, outputs, params)


def _field(obj: dict, key: str, kind: type, where: str, default: Any = ...) -> Any:
    value = obj.get(key, default)
    if value is ...:
        msg = f"{where}: missing '{key}'"
        raise InvalidArgumentError(msg)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        msg = f"{where}: '{key}' must be a JSON {_JSON_NAMES[kind]}, got {type(value).__name__}"
        raise InvalidArgumentError(msg)
    return value


_JSON_NAMES = {list: "array", dict: "object", str: "string", int: "integer", bool: "boolean"}


def _decode_input(
    t: Any, binary: memoryview, pos: int, shared_memory: SharedMemoryRegistry | None
) -> tuple[InferTensor, int]:
    if not isinstance(t, dict):
        raise InvalidArgumentError("request: each entry of 'inputs' must be a JSON object")
    name = _field(t, "name", str, "request input")
    where = f"input '{name}'"
    datatype = _field(t, "datatype", str, where)
    shape = _shape(_field(t, "shape", list, where), where)
    params = _field(t, "parameters", dict, where, {})
    region = input_region(name, params, shared_memory) if params else None
    size = params.get("binary_data_size")
    if region is not None:
        if "data" in t or size is not None:
            msg = f"{where}: data given for an input in shared memory"
            raise InvalidArgumentError(msg)
        data = read_input(shared_memory, name, datatype, shape, region)  # type: ignore[arg-type]
    elif size is not None:
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            msg = f"{where}: binary_data_size must be a non-negative integer, got {size!r}"
            raise InvalidArgumentError(msg)
        if "data" in t:
            msg = f"{where}: both 'data' and binary_data_size given; send one"
            raise InvalidArgumentError(msg)
        if size > len(binary) - pos:
            msg = (
                f"{where}: binary_data_size {size} runs past the end of the body "
                f"({len(binary)} binary bytes after the JSON header, {pos} used by earlier inputs)"
            )
            raise InvalidArgumentError(msg)
        data = tensor_from_raw(name, datatype, shape, binary[pos : pos + size])
        pos += size
    elif "data" in t:
        data = _from_json(name, datatype, shape, t["data"])
    else:
        msg = f"{where}: no data ('data' in JSON, or binary_data_size with binary data)"
        raise InvalidArgumentError(msg)
    return InferTensor(name, datatype, shape, data, params), pos


def _shape(dims: list, where: str) -> tuple[int, ...]:
    if not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in dims):
        msg = f"{where}: shape must be a list of non-negative integers, got {dims!r}"
        raise InvalidArgumentError(msg)
    return tuple(dims)


def _decode_output(o: Any, shared_memory: SharedMemoryRegistry | None) -> RequestedOutput:
    if not isinstance(o, dict):
        raise InvalidArgumentError("request: each entry of 'outputs' must be a JSON object")
    name = _field(o, "name", str, "requested output")
    params = _field(o, "parameters", dict, f"requested output '{name}'", {})
    flag = params.get("binary_data")
    if flag is not None and not isinstance(flag, bool):
        msg = f"requested output '{name}': binary_data must be true or false, got {flag!r}"
        raise InvalidArgumentError(msg)
    return requested_output(name, params, shared_memory)


#: JSON value kinds (numpy's, after ``np.asarray``) accepted for each target dtype kind.
_ACCEPTED_KINDS = {"b": "b", "i": "iu", "u": "iu", "f": "iuf", "V": "iuf"}  # V: bfloat16


def _from_json(name: str, datatype: str, shape: tuple[int, ...], data: Any) -> np.ndarray:
    """JSON ``data`` (flat or nested) as an array of ``shape``; numpy does the conversion."""
    count = math.prod(shape)
    if not isinstance(data, list):
        data = [data]
    if datatype == BYTES:
        arr = _bytes_from_json(name, data)
    else:
        dtype = numpy_dtype(name, datatype)
        try:
            values = np.asarray(data)
        except ValueError:
            msg = f"input '{name}': 'data' is not a rectangular array of numbers"
            raise InvalidArgumentError(msg) from None
        if values.dtype.kind == "O" or (dtype.kind in "iu" and values.dtype.kind == "f"):
            # integers past int64 (numpy makes [2**63, 0] float64, losing digits, and
            # [2**70] an object array): check them one by one as Python numbers
            values = _python_numbers(name, datatype, data, dtype)
        if values.size and values.dtype.kind not in _ACCEPTED_KINDS[dtype.kind]:
            msg = f"input '{name}': 'data' holds {_kind_name(values)}, not {datatype} values"
            raise InvalidArgumentError(msg)
        if values.size and dtype.kind in "iu":
            info = np.iinfo(dtype)
            if values.min() < info.min or values.max() > info.max:
                msg = f"input '{name}': 'data' has values outside {datatype}'s range"
                raise InvalidArgumentError(msg)
        with np.errstate(over="ignore"):
            arr = values.astype(dtype, copy=False)
        # a finite number too large for FP16 / FP32 / BF16 would silently become inf
        overflow = dtype.kind in "fV" and values.dtype.kind == "f" and arr.size
        if overflow and not np.array_equal(np.isfinite(arr), np.isfinite(values)):
            msg = f"input '{name}': 'data' has values outside {datatype}'s range"
            raise InvalidArgumentError(msg)
    if arr.size != count:
        msg = (
            f"input '{name}': 'data' holds {arr.size} elements, expected {count} "
            f"for shape {list(shape)}"
        )
        raise InvalidArgumentError(msg)
    return arr.reshape(shape)


def _python_numbers(name: str, datatype: str, data: list, dtype: np.dtype) -> np.ndarray:
    """JSON ``data`` checked as exact Python numbers, then converted: the slow path, for
    integers that do not fit int64 (or values that are not numbers)."""
    where = f"input '{name}'"
    items = np.asarray(data, dtype=object)
    flat = items.reshape(-1).tolist()
    kinds = {type(v) for v in flat}
    accepted = {"b": {bool}, "i": {int}, "u": {int}}.get(dtype.kind, {int, float})
    if not kinds <= accepted:
        if kinds <= {bool, int, float}:
            names = {float: "non-integer numbers", int: "integers", bool: "booleans"}
            what = next(names[k] for k in (float, int, bool) if k in kinds - accepted)
            msg = f"{where}: 'data' holds {what}, not {datatype} values"
        else:
            msg = f"{where}: 'data' is not a rectangular array of numbers"
        raise InvalidArgumentError(msg)
    if dtype.kind in "iu" and flat:
        info = np.iinfo(dtype)
        if min(flat) < info.min or max(flat) > info.max:
            msg = f"{where}: 'data' has values outside {datatype}'s range"
            raise InvalidArgumentError(msg)
    try:
        with np.errstate(over="ignore"):
            out = items.astype(dtype)
    except (OverflowError, ValueError, TypeError):
        out = None
    if out is None or (dtype.kind in "fV" and out.size and not np.isfinite(out).all()):
        msg = f"{where}: 'data' has values outside {datatype}'s range"
        raise InvalidArgumentError(msg)
    return out


def _kind_name(values: np.ndarray) -> str:
    kind = values.dtype.kind
    return {"b": "booleans", "f": "non-integer numbers", "U": "strings"}.get(kind, "other values")


def _encode_utf8(value: Any) -> bytes:
    return value.encode()


_ENCODE = np.frompyfunc(_encode_utf8, 1, 1)


def _bytes_from_json(name: str, data: list) -> np.ndarray:
    """BYTES from JSON strings: an object array of UTF-8 ``bytes`` (one object per element)."""
    strings = np.asarray(data, dtype=object)
    try:
        return _ENCODE(strings).reshape(-1) if strings.size else np.empty(0, dtype=object)
    except (AttributeError, TypeError, UnicodeEncodeError):
        msg = f"input '{name}': BYTES 'data' must be a rectangular array of JSON strings"
        raise InvalidArgumentError(msg) from None


# ---------------------------------------------------------------------- responses
def encode_infer_response(
    resp: InferResponse, req: InferRequest
) -> tuple[list[bytes | memoryview], int | None]:
    """The response body as parts (JSON header, then binary outputs as views) and the header's
    length when binary parts follow (``None``: the body is JSON only)."""
    binary = _binary_outputs(resp, req)
    parts: list[bytes | memoryview] = [b""]
    outputs = []
    for t, as_binary in zip(resp.outputs, binary, strict=True):
        entry: dict[str, Any] = {"name": t.name, "datatype": t.datatype, "shape": list(t.shape)}
        if in_shared_memory(t):  # written into the client's region: only its parameters here
            entry["parameters"] = dict(t.parameters)
        elif as_binary:
            payload = tensor_payload(t)
            entry["parameters"] = {"binary_data_size": len(payload)}
            parts.append(payload)
        else:
            entry["data"] = _to_json(t)
        outputs.append(entry)
    head: dict[str, Any] = {"model_name": resp.model_name, "model_version": resp.model_version}
    if resp.id:
        head["id"] = resp.id
    if resp.parameters:
        head["parameters"] = resp.parameters
    head["outputs"] = outputs
    parts[0] = dump_json(head)
    return parts, (len(parts[0]) if len(parts) > 1 else None)


def json_elements(resp: InferResponse, req: InferRequest) -> int:
    """How many output elements go into the JSON header (what makes encoding slow)."""
    binary = _binary_outputs(resp, req)
    return sum(
        t.data.size
        for t, b in zip(resp.outputs, binary, strict=True)
        if not b and not in_shared_memory(t)
    )


def _binary_outputs(resp: InferResponse, req: InferRequest) -> list[bool]:
    """Per output: binary if its request says ``binary_data``, else ``binary_data_output``."""
    default = bool(req.parameters.get("binary_data_output", False))
    if not req.outputs:
        return [default] * len(resp.outputs)
    chosen = {o.name: o.parameters.get("binary_data") for o in req.outputs}
    return [default if chosen.get(t.name) is None else chosen[t.name] for t in resp.outputs]


def _decode_utf8(value: Any) -> str:
    return value if isinstance(value, str) else bytes(value).decode()


_DECODE = np.frompyfunc(_decode_utf8, 1, 1)


def _to_json(t: InferTensor) -> list:
    flat = t.data.reshape(-1)
    if t.datatype == BYTES:
        try:
            return _DECODE(flat).tolist() if flat.size else []
        except UnicodeDecodeError:
            msg = (
                f"output '{t.name}' holds bytes that are not UTF-8, which JSON cannot carry; "
                f"request it with binary_data"
            )
            raise InvalidArgumentError(msg) from None
    if flat.dtype.kind == "V":  # bfloat16: as float32 numbers
        flat = flat.astype(np.float32)
    return flat.tolist()


# ---------------------------------------------------------------------- other answers
def message_to_json(msg: Message) -> dict[str, Any]:
    """A Triton protobuf answer as Triton's HTTP JSON: proto field names, every field printed,
    64-bit integers as JSON numbers (protobuf's JSON mapping would make them strings)."""
    try:
        obj = json_format.MessageToDict(
            msg, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
        )
    except TypeError:  # protobuf < 5.26
        obj = json_format.MessageToDict(
            msg, preserving_proto_field_name=True, including_default_value_fields=True
        )
    _int64_as_numbers(msg.DESCRIPTOR, obj)
    return obj


_INT64 = frozenset(
    {
        FieldDescriptor.TYPE_INT64,
        FieldDescriptor.TYPE_UINT64,
        FieldDescriptor.TYPE_SINT64,
        FieldDescriptor.TYPE_FIXED64,
        FieldDescriptor.TYPE_SFIXED64,
    }
)


def _int64_as_numbers(desc: Descriptor, obj: dict[str, Any]) -> None:
    for f in desc.fields:
        value = obj.get(f.name)
        if value is None:
            continue
        sub = f.message_type
        repeated = f.label == FieldDescriptor.LABEL_REPEATED
        if sub is not None and sub.GetOptions().map_entry:
            vf = sub.fields_by_name["value"]
            if vf.message_type is not None:
                for v in value.values():
                    _int64_as_numbers(vf.message_type, v)
            elif vf.type in _INT64:
                obj[f.name] = {k: int(v) for k, v in value.items()}
        elif sub is not None:
            for v in value if repeated else (value,):
                _int64_as_numbers(sub, v)
        elif f.type in _INT64:
            obj[f.name] = [int(v) for v in value] if repeated else int(value)
