"""pysonic's ``triton_python_backend_utils``: the API Triton's Python models are written against.

A ``model.py`` does ``import triton_python_backend_utils as pb_utils``; Triton's stub process
injects that module at run time, and so does pysonic: when the Python backend loads a model it
registers this module in ``sys.modules`` under that name (pysonic ships no top-level module of
that name, because the PyPI package ``triton-python-backend-mock-utils`` installs one, and two
distributions owning one module break each other). To unit-test a model.py without a server,
``import pysonic.backends.python.pb_utils as pb_utils`` and register it the same way.

What Triton's module offers and pysonic does: :class:`Tensor` (``as_numpy``, ``name``,
``triton_dtype``, ``shape``, ``is_cpu``, ``to_dlpack`` / ``from_dlpack`` / ``__dlpack__`` for CPU
tensors), :class:`InferenceRequest` (``inputs``, ``request_id``, ``requested_output_names``,
``parameters``, ``flags``, ``timeout``, ``correlation_id``, ``is_cancelled``, and ``exec`` for
Business Logic Scripting when the server allows it), :class:`InferenceResponse`,
:class:`TritonError` with Triton's codes, :class:`TritonModelException`, :class:`Logger`,
:class:`ModelConfig` for ``auto_complete_config``, the ``get_*_by_name`` helpers, the type
tables and the byte-tensor (de)serializers. What it does not: decoupled responses
(``get_response_sender``), model loading from a model (``load_model``), custom metrics
(:class:`MetricFamily`), GPU tensors.

Example::

    out = pb_utils.Tensor("OUTPUT0", in0.as_numpy() * 2)
    responses.append(pb_utils.InferenceResponse(output_tensors=[out]))
"""

from __future__ import annotations

import json
import logging
import struct
import threading
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from pysonic.backends.python._config import ModelConfig

__all__ = [
    "TRITONSERVER_REQUEST_FLAG_SEQUENCE_END",
    "TRITONSERVER_REQUEST_FLAG_SEQUENCE_START",
    "TRITONSERVER_REQUEST_RELEASE_ALL",
    "TRITONSERVER_REQUEST_RELEASE_RESCHEDULE",
    "TRITONSERVER_RESPONSE_COMPLETE_FINAL",
    "TRITON_STRING_TO_NUMPY",
    "InferenceRequest",
    "InferenceResponse",
    "Logger",
    "MetricFamily",
    "ModelConfig",
    "Tensor",
    "TritonError",
    "TritonModelException",
    "deserialize_bytes_tensor",
    "get_input_config_by_name",
    "get_input_tensor_by_name",
    "get_model_dir",
    "get_output_config_by_name",
    "get_output_tensor_by_name",
    "is_model_ready",
    "load_model",
    "numpy_to_triton_type",
    "serialize_byte_tensor",
    "triton_string_to_numpy",
    "triton_to_numpy_type",
    "unload_model",
    "using_decoupled_model_transaction_policy",
]

log = logging.getLogger("pysonic.python_model")

TRITONSERVER_REQUEST_FLAG_SEQUENCE_START = 1
TRITONSERVER_REQUEST_FLAG_SEQUENCE_END = 2
TRITONSERVER_RESPONSE_COMPLETE_FINAL = 1
TRITONSERVER_REQUEST_RELEASE_ALL = 1
TRITONSERVER_REQUEST_RELEASE_RESCHEDULE = 2

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


class InferenceRequest:
    """One request: the server builds them for ``execute``; a model builds them for BLS."""

    def __init__(
        self,
        request_id: str = "",
        correlation_id: int | str = 0,
        inputs: Sequence[Tensor] = (),
        requested_output_names: Sequence[str] = (),
        model_name: str = "",
        model_version: int = -1,
        flags: int = 0,
        timeout: int = 0,
        preferred_memory: Any = None,
        trace: Any = None,
        parameters: Mapping[str, Any] | str | None = None,
    ) -> None:
        self._id = request_id
        self._correlation_id = correlation_id
        self._inputs = list(inputs)
        self._outputs = list(requested_output_names)
        self.model_name = model_name
        self.model_version = model_version
        self._flags = flags
        self._timeout = timeout
        if isinstance(parameters, str):
            parameters = json.loads(parameters)
        self._parameters = dict(parameters or {})

    def inputs(self) -> list[Tensor]:
        return self._inputs

    def request_id(self) -> str:
        return self._id

    def correlation_id(self) -> int | str:
        return self._correlation_id

    def requested_output_names(self) -> list[str]:
        return self._outputs

    def parameters(self) -> str:
        """The request's parameters as a JSON string (as in Triton)."""
        return json.dumps(self._parameters)

    def flags(self) -> int:
        return self._flags

    def set_flags(self, flags: int) -> None:
        self._flags = flags

    def timeout(self) -> int:
        return self._timeout

    def is_cancelled(self) -> bool:
        return False

    def trace(self) -> None:
        return None

    def set_release_flags(self, flags: int) -> None:
        if flags != TRITONSERVER_REQUEST_RELEASE_ALL:
            raise TritonModelException("request rescheduling is not supported by pysonic")

    def get_response_sender(self) -> Any:
        raise TritonModelException("decoupled models (response senders) are not supported")

    def exec(self, decoupled: bool = False) -> InferenceResponse:
        """Business Logic Scripting: run this request on another model of the server.

        Blocks the calling instance thread (never the event loop) until the response is back;
        errors come back in the response (``has_error()``), as in Triton."""
        if decoupled:
            raise TritonModelException("decoupled BLS requests are not supported by pysonic")
        bls = getattr(_current, "bls", None)
        if bls is None:
            raise TritonModelException("BLS is not available: no server runs this model")
        inputs = {t.name(): t.as_numpy() for t in self._inputs}
        version = "" if self.model_version in (-1, "", None) else str(self.model_version)
        outputs, error = bls(
            self.model_name, version, inputs, list(self._outputs), self._parameters
        )
        if error is not None:
            code = getattr(error, "code", None)
            triton_code = _TRITON_CODE_BY_NAME.get(getattr(code, "name", ""), TritonError.INTERNAL)
            message = getattr(error, "message", str(error))
            return InferenceResponse(error=TritonError(message, triton_code))
        return InferenceResponse([Tensor(n, a) for n, a in outputs.items()])

    async def async_exec(self, decoupled: bool = False) -> InferenceResponse:
        """``exec`` for ``async def execute`` models: pysonic runs it in place (blocking)."""
        return self.exec(decoupled)


_TRITON_CODE_BY_NAME = {
    "INVALID_ARGUMENT": TritonError.INVALID_ARG,
    "NOT_FOUND": TritonError.NOT_FOUND,
    "UNAVAILABLE": TritonError.UNAVAILABLE,
    "RESOURCE_EXHAUSTED": TritonError.UNAVAILABLE,
    "UNIMPLEMENTED": TritonError.UNSUPPORTED,
    "ALREADY_EXISTS": TritonError.ALREADY_EXISTS,
    "CANCELLED": TritonError.CANCELLED,
}


class InferenceResponse:
    """The response to one request: output tensors, or an error."""

    def __init__(
        self,
        output_tensors: Sequence[Tensor] = (),
        error: TritonError | None = None,
        parameters: Mapping[str, Any] | None = None,
    ) -> None:
        self._outputs = list(output_tensors)
        self._error = error
        self._parameters = dict(parameters or {})

    def output_tensors(self) -> list[Tensor]:
        return self._outputs

    def has_error(self) -> bool:
        return self._error is not None

    def error(self) -> TritonError | None:
        return self._error

    def parameters(self) -> str:
        return json.dumps(self._parameters)


def get_input_tensor_by_name(inference_request: InferenceRequest, name: str) -> Tensor | None:
    return next((t for t in inference_request.inputs() if t.name() == name), None)


def get_output_tensor_by_name(inference_response: InferenceResponse, name: str) -> Tensor | None:
    return next((t for t in inference_response.output_tensors() if t.name() == name), None)


def get_input_config_by_name(model_config: Mapping[str, Any], name: str) -> Any:
    return next((io for io in model_config.get("input", []) if io["name"] == name), None)


def get_output_config_by_name(model_config: Mapping[str, Any], name: str) -> Any:
    return next((io for io in model_config.get("output", []) if io["name"] == name), None)


def using_decoupled_model_transaction_policy(model_config: Mapping[str, Any]) -> bool:
    return bool(model_config.get("model_transaction_policy", {}).get("decoupled", False))


_current = threading.local()


def get_model_dir() -> str:
    """The directory of the running model.py (its version directory), as in Triton."""
    model_dir = getattr(_current, "model_dir", None)
    if model_dir is None:
        raise TritonModelException("get_model_dir() is only known inside a model's methods")
    return model_dir


class Logger:
    """Triton's model logger, writing to the server log (logger ``pysonic.python_model``)."""

    INFO = logging.INFO
    WARNING = logging.WARNING
    ERROR = logging.ERROR
    VERBOSE = logging.DEBUG

    @staticmethod
    def log(message: str, level: int = logging.INFO) -> None:
        model = getattr(_current, "model_name", "")
        log.log(level, "%s%s", f"[{model}] " if model else "", message)

    @staticmethod
    def log_info(message: str) -> None:
        Logger.log(message, Logger.INFO)

    @staticmethod
    def log_warn(message: str) -> None:
        Logger.log(message, Logger.WARNING)

    @staticmethod
    def log_error(message: str) -> None:
        Logger.log(message, Logger.ERROR)

    @staticmethod
    def log_verbose(message: str) -> None:
        Logger.log(message, Logger.VERBOSE)


class MetricFamily:
    """Triton's custom metrics: not provided (a model that needs them fails to load clearly)."""

    COUNTER = 0
    GAUGE = 1
    HISTOGRAM = 2

    def __init__(self, name: str, description: str, kind: int) -> None:
        msg = f"custom metrics (MetricFamily '{name}') are not supported by pysonic yet"
        raise TritonModelException(msg)


def load_model(model_name: str, config: str = "", files: Any = None) -> None:
    raise TritonModelException("loading models from a Python model is not supported by pysonic")


def unload_model(model_name: str, unload_dependents: bool = False) -> None:
    raise TritonModelException("unloading models from a Python model is not supported by pysonic")


def is_model_ready(model_name: str, model_version: str = "") -> bool:
    raise TritonModelException("is_model_ready from a Python model is not supported by pysonic")
