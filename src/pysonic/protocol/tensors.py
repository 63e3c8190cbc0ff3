"""What every codec does to one tensor: raw bytes <-> numpy, and its parameters.

Both wire protocols carry fixed-size tensors as raw little-endian bytes (gRPC's
``raw_input_contents``, HTTP's binary tensor extension), so the one zero-copy decode lives here:
the size is checked against shape and datatype first, then the buffer is viewed with
``np.frombuffer`` (no copy). BYTES tensors are parsed with every length prefix bounds-checked.

:func:`input_region` and :func:`requested_output` are the single hook for per-tensor parameters
of requests, whatever the protocol: a tensor in a registered shared-memory region is resolved
through the server's :class:`~pysonic.protocol.shm.SharedMemoryRegistry` (both protocols share
it), and classification is refused (UNIMPLEMENTED).

Example::

    arr = tensor_from_raw("x", "FP32", (2, 16), body_view[0:128])   # a view over the body
    payload = tensor_payload(InferTensor("y", "FP32", (2, 4), out))  # a view over the output
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from pysonic.errors import InvalidArgumentError, PysonicError, UnimplementedError
from pysonic.protocol.datatypes import BYTES, deserialize_bytes, serialize_bytes, to_numpy_dtype
from pysonic.protocol.shm import (
    SharedMemoryRef,
    SharedMemoryRegistry,
    output_target,
    shared_memory_ref,
)
from pysonic.protocol.types import InferTensor, RequestedOutput

__all__ = [
    "input_region",
    "numpy_dtype",
    "requested_output",
    "tensor_from_raw",
    "tensor_payload",
]

_FIXED_NAMES = (
    "BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64",
    "FP16", "FP32", "FP64", "BF16",
)  # fmt: skip
_FIXED_SIZE = {k: to_numpy_dtype(k) for k in _FIXED_NAMES}


def numpy_dtype(name: str, datatype: str) -> np.dtype:
    """The numpy dtype of a wire datatype; an unknown one is an error naming the tensor."""
    try:
        return to_numpy_dtype(datatype)
    except PysonicError as err:
        msg = f"input '{name}': {err.message}"
        raise InvalidArgumentError(msg) from None


def tensor_from_raw(
    name: str, datatype: str, shape: tuple[int, ...], buf: bytes | memoryview
) -> np.ndarray:
    """``buf`` as a tensor: a view for fixed-size datatypes (size checked first), parsed BYTES."""
    dtype = _FIXED_SIZE.get(datatype)
    count = math.prod(shape)
    if dtype is None:
        if datatype == BYTES:
            return deserialize_bytes(buf, count, name=name).reshape(shape)
        dtype = numpy_dtype(name, datatype)  # raises: unknown datatype
    expected = count * dtype.itemsize
    if len(buf) != expected:
        msg = (
            f"input '{name}': raw data has {len(buf)} bytes, expected {expected} "
            f"for shape {list(shape)} of {datatype}"
        )
        raise InvalidArgumentError(msg)
    return np.frombuffer(buf, dtype).reshape(shape)


def tensor_payload(t: InferTensor) -> bytes | memoryview:
    """A tensor's wire bytes: a flat byte view over a contiguous array (``len`` is its size in
    bytes; a copy only if the array is not contiguous), Triton's serialization for BYTES."""
    if t.datatype == BYTES:
        return serialize_bytes(t.data)
    arr = t.data
    if not arr.flags.c_contiguous or arr.dtype.kind == "V" or not arr.size:
        # as uint8: a memoryview cannot carry BF16's dtype, nor be cast when a dimension is 0
        arr = np.ascontiguousarray(arr).reshape(-1).view(np.uint8)
    return memoryview(arr).cast("B")


def input_region(
    name: str, params: dict[str, Any], registry: SharedMemoryRegistry | None
) -> SharedMemoryRef | None:
    """The shared-memory region an input's parameters point at, or None (data in the request).

    Without a registry (a transport that offers none) such a request is refused."""
    return _region(f"input '{name}'", params, registry)


def requested_output(
    name: str, params: dict[str, Any], registry: SharedMemoryRegistry | None
) -> RequestedOutput:
    """A requested output; one placed in shared memory has its region resolved (and bounds
    checked) now, before any compute. Classification is not provided."""
    if params.get("classification"):
        msg = f"output '{name}': the classification extension is not supported by this server"
        raise UnimplementedError(msg)
    ref = _region(f"output '{name}'", params, registry) if params else None
    if ref is None:
        return RequestedOutput(name, params)
    return RequestedOutput(name, params, output_target(registry, name, ref))  # type: ignore[arg-type]


def _region(
    label: str, params: dict[str, Any], registry: SharedMemoryRegistry | None
) -> SharedMemoryRef | None:
    ref = shared_memory_ref(params, label)
    if ref is not None and registry is None:
        msg = f"{label}: shared memory is not available on this connection"
        raise UnimplementedError(msg)
    return ref
