"""Tensors and types of ``triton_python_backend_utils`` (re-exported by :mod:`pb_utils`).

A :class:`Tensor` is a name and a numpy array in host memory; the type tables and the byte-tensor
(de)serializers are Triton's, so model code that converts types itself keeps working.

Example::

    t = Tensor("OUTPUT0", np.zeros((2, 3), np.float32))
    t.triton_dtype()   # 11 (TYPE_FP32)
"""

from __future__ import annotations

import struct
from typing import Any

import numpy as np

__all__ = [
    "TRITON_STRING_TO_NUMPY",
    "Tensor",
    "TritonError",
    "TritonModelException",
    "deserialize_bytes_tensor",
    "numpy_to_triton_type",
    "serialize_byte_tensor",
    "triton_string_to_numpy",
    "triton_to_numpy_type",
]


#: config type name -> numpy type (Triton's table, BF16 aside: numpy has none built in)
TRITON_STRING_TO_NUMPY: dict[str, Any] = {
    "TYPE_BOOL": np.bool_,
    "TYPE_UINT8": np.uint8,
    "TYPE_UINT16": np.uint16,
    "TYPE_UINT32": np.uint32,
    "TYPE_UINT64": np.uint64,
    "TYPE_INT8": np.int8,
    "TYPE_INT16": np.int16,
    "TYPE_INT32": np.int32,
    "TYPE_INT64": np.int64,
    "TYPE_FP16": np.float16,
    "TYPE_FP32": np.float32,
    "TYPE_FP64": np.float64,
    "TYPE_STRING": np.object_,
}
# DataType enum values of model_config.proto, in order from TYPE_BOOL (1) to TYPE_STRING (13).
_NUMPY_BY_ENUM = dict(enumerate(TRITON_STRING_TO_NUMPY.values(), start=1))
_ENUM_BY_NUMPY = {np.dtype(t): v for v, t in _NUMPY_BY_ENUM.items()}


def triton_string_to_numpy(triton_type_string: str) -> Any:
    """``"TYPE_FP32"`` -> ``np.float32`` (as in a config's ``data_type``)."""
    return TRITON_STRING_TO_NUMPY[triton_type_string]


def triton_to_numpy_type(data_type: int) -> Any:
    """DataType enum value -> numpy type (``None`` for unknown values, as Triton)."""
    return _NUMPY_BY_ENUM.get(data_type)


def numpy_to_triton_type(data_type: Any) -> int | None:
    """numpy type -> DataType enum value; ``bytes_`` counts as TYPE_STRING."""
    dtype = np.dtype(data_type)
    if dtype.kind in "SU":
        return 13
    return _ENUM_BY_NUMPY.get(dtype)


def serialize_byte_tensor(input_tensor: np.ndarray) -> Any:
    """Length-prefixed bytes (Triton's BYTES wire form) for an object/bytes array, C order."""
    if input_tensor.size == 0:
        return ()
    if input_tensor.dtype != np.object_ and input_tensor.dtype.type != np.bytes_:
        return None
    parts = []
    for item in input_tensor.reshape(-1):
        raw = item if isinstance(item, bytes) else str(item).encode("utf-8")
        parts += [struct.pack("<I", len(raw)), raw]
    return b"".join(parts)


def deserialize_bytes_tensor(encoded_tensor: bytes) -> np.ndarray:
    """The inverse of :func:`serialize_byte_tensor`: a 1-D object array of ``bytes``."""
    items, offset, view = [], 0, memoryview(encoded_tensor)
    while offset < len(view):
        (length,) = struct.unpack_from("<I", view, offset)
        offset += 4
        items.append(bytes(view[offset : offset + length]))
        offset += length
    out = np.empty(len(items), dtype=np.object_)
    out[:] = items
    return out


class TritonError:
    """An error for one response (``InferenceResponse(error=TritonError("..."))``)."""

    UNKNOWN = 0
    INTERNAL = 1
    NOT_FOUND = 2
    INVALID_ARG = 3
    UNAVAILABLE = 4
    UNSUPPORTED = 5
    ALREADY_EXISTS = 6
    CANCELLED = 7

    def __init__(self, message: str, code: int = INTERNAL) -> None:
        self._message = message
        self._code = code

    def message(self) -> str:
        return self._message

    def code(self) -> int:
        return self._code

    def __repr__(self) -> str:
        return f"TritonError({self._message!r}, code={self._code})"


class TritonModelException(Exception):
    """Raised by a model (or by pb_utils) for errors in initialize, execute or finalize."""


class _DLPackCapsule:
    """Lets numpy import a bare DLPack capsule (numpy only imports objects with __dlpack__)."""

    def __init__(self, capsule: Any) -> None:
        self._capsule = capsule

    def __dlpack__(self, **_: Any) -> Any:
        return self._capsule

    def __dlpack_device__(self) -> tuple[int, int]:
        return (1, 0)  # kDLCPU: a capsule for another device fails in numpy's import


class Tensor:
    """A named tensor; pysonic keeps it as a numpy array in host memory."""

    def __init__(self, name: str, tensor: np.ndarray) -> None:
        if not isinstance(tensor, np.ndarray):
            msg = f"Tensor '{name}': expected a numpy array, got {type(tensor).__name__}"
            raise TritonModelException(msg)
        self._name = name
        self._array = tensor

    def name(self) -> str:
        return self._name

    def as_numpy(self) -> np.ndarray:
        return self._array

    def triton_dtype(self) -> int | None:
        return numpy_to_triton_type(self._array.dtype)

    def shape(self) -> list[int]:
        return list(self._array.shape)

    def is_cpu(self) -> bool:
        return True

    def _exportable(self) -> np.ndarray:
        # DLPack < 1.0 cannot say "read-only": request inputs are read-only views of the
        # received bytes, so they are exported as a copy (numeric dtypes only).
        if self._array.dtype == np.object_:
            msg = f"Tensor '{self._name}': BYTES tensors cannot be exported with DLPack"
            raise TritonModelException(msg)
        if self._array.flags.writeable and self._array.flags.c_contiguous:
            return self._array
        return np.array(self._array, order="C")

    def to_dlpack(self) -> Any:
        return self._exportable().__dlpack__()

    def __dlpack__(self, **kwargs: Any) -> Any:
        return self._exportable().__dlpack__(**kwargs)

    def __dlpack_device__(self) -> tuple[int, int]:
        return (1, 0)

    @staticmethod
    def from_dlpack(name: str, capsule: Any) -> Tensor:
        """A Tensor over a CPU DLPack capsule or any object with ``__dlpack__``."""
        source = capsule if hasattr(capsule, "__dlpack__") else _DLPackCapsule(capsule)
        try:
            array = np.from_dlpack(source)
        except (BufferError, RuntimeError, TypeError, ValueError) as err:
            msg = f"Tensor.from_dlpack('{name}'): pysonic takes C-contiguous CPU tensors: {err}"
            raise TritonModelException(msg) from err
        if not array.flags.c_contiguous:
            msg = f"Tensor.from_dlpack('{name}'): the tensor is not C-contiguous"
            raise TritonModelException(msg)
        return Tensor(name, array)

    def __repr__(self) -> str:
        return f"Tensor({self._name!r}, shape={self.shape()}, dtype={self._array.dtype})"
