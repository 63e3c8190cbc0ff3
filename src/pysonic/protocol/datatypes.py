"""Triton/KServe datatypes <-> numpy, and Triton's BYTES serialization.

Wire names are KServe v2's (``FP32``, ``BYTES``, ...); config.pbtxt uses ``TYPE_FP32`` /
``TYPE_STRING``. BF16 maps to ``ml_dtypes.bfloat16`` (a dependency of ``onnx``), so BF16 tensors
stay 2 bytes per element end to end. BYTES tensors are numpy object arrays of ``bytes``; on the
wire each element is a 4-byte little-endian length followed by its bytes.

Example::

    >>> to_numpy_dtype("FP32")
    dtype('float32')
    >>> deserialize_bytes(serialize_bytes(np.array([b"ab", b""], dtype=object)), 2)
    array([b'ab', b''], dtype=object)
"""

from __future__ import annotations

import struct

import ml_dtypes
import numpy as np

from pysonic.errors import InvalidArgumentError

__all__ = [
    "BYTES",
    "config_to_wire",
    "deserialize_bytes",
    "element_size",
    "from_numpy_dtype",
    "serialize_bytes",
    "to_numpy_dtype",
    "wire_to_config",
]

BYTES = "BYTES"

_WIRE_TO_NUMPY: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "BYTES": np.dtype(object),
}
_NUMPY_TO_WIRE: dict[np.dtype, str] = {v: k for k, v in _WIRE_TO_NUMPY.items()}
_NUMPY_TO_WIRE[np.dtype(np.bytes_)] = "BYTES"
_NUMPY_TO_WIRE[np.dtype(np.str_)] = "BYTES"

_CONFIG_TO_WIRE = {f"TYPE_{k}": k for k in _WIRE_TO_NUMPY if k != "BYTES"}
_CONFIG_TO_WIRE["TYPE_STRING"] = "BYTES"
_WIRE_TO_CONFIG = {v: k for k, v in _CONFIG_TO_WIRE.items()}

_LEN = struct.Struct("<I")


def to_numpy_dtype(datatype: str) -> np.dtype:
    """numpy dtype for a wire datatype name; raises InvalidArgumentError for unknown names."""
    try:
        return _WIRE_TO_NUMPY[datatype]
    except KeyError:
        known = ", ".join(_WIRE_TO_NUMPY)
        msg = f"unknown datatype '{datatype}' (known: {known})"
        raise InvalidArgumentError(msg) from None


def from_numpy_dtype(dtype: np.dtype) -> str:
    """Wire datatype name for a numpy dtype (``str``/``bytes`` arrays are BYTES)."""
    dtype = np.dtype(dtype)
    wire = _NUMPY_TO_WIRE.get(dtype.newbyteorder("<") if dtype.byteorder == ">" else dtype)
    if wire is None:
        if dtype.kind in "SU":
            return BYTES
        msg = f"numpy dtype {dtype} has no Triton datatype"
        raise InvalidArgumentError(msg)
    return wire


def element_size(datatype: str) -> int:
    """Bytes per element for fixed-size datatypes; 0 for BYTES."""
    if datatype == BYTES:
        return 0
    return to_numpy_dtype(datatype).itemsize


def config_to_wire(config_type: str) -> str:
    """``TYPE_FP32`` -> ``FP32``; ``TYPE_STRING`` -> ``BYTES``."""
    try:
        return _CONFIG_TO_WIRE[config_type]
    except KeyError:
        msg = f"unsupported config datatype '{config_type}'"
        raise InvalidArgumentError(msg) from None


def wire_to_config(datatype: str) -> str:
    """``FP32`` -> ``TYPE_FP32``; ``BYTES`` -> ``TYPE_STRING``."""
    try:
        return _WIRE_TO_CONFIG[datatype]
    except KeyError:
        msg = f"unknown datatype '{datatype}'"
        raise InvalidArgumentError(msg) from None


def serialize_bytes(array: np.ndarray) -> bytes:
    """Triton's length-prefixed serialization of a BYTES tensor (row-major order)."""
    parts: list[bytes] = []
    for item in array.reshape(-1):
        data = item.encode() if isinstance(item, str) else bytes(item)
        parts.append(_LEN.pack(len(data)))
        parts.append(data)
    return b"".join(parts)


def deserialize_bytes(raw: bytes | memoryview, count: int, *, name: str = "") -> np.ndarray:
    """Parse ``count`` length-prefixed elements from ``raw``; every length is bounds-checked.

    Raises InvalidArgumentError naming the tensor if the buffer is truncated, has trailing
    bytes, or holds a different number of elements than ``count``.
    """
    view = memoryview(raw)
    total = len(view)
    label = f"input '{name}': " if name else ""
    if count < 0 or count * 4 > total:
        # Every element needs a 4-byte length: checked before allocating ``count`` slots.
        msg = (
            f"{label}malformed BYTES tensor: shape holds {count} elements but the buffer "
            f"has only {total} bytes (at least {4 * max(count, 0)} needed)"
        )
        raise InvalidArgumentError(msg)
    out = np.empty(count, dtype=object)
    pos = 0
    for i in range(count):
        if pos + 4 > total:
            msg = f"{label}malformed BYTES tensor: expected {count} elements, buffer ends after {i}"
            raise InvalidArgumentError(msg)
        (length,) = _LEN.unpack_from(view, pos)
        pos += 4
        if length > total - pos:
            msg = (
                f"{label}malformed BYTES tensor: element {i} declares {length} bytes, "
                f"only {total - pos} remain"
            )
            raise InvalidArgumentError(msg)
        out[i] = bytes(view[pos : pos + length])
        pos += length
    if pos != total:
        msg = f"{label}malformed BYTES tensor: {total - pos} trailing bytes after {count} elements"
        raise InvalidArgumentError(msg)
    return out
