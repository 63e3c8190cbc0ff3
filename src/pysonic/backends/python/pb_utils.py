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
import threading
from collections.abc import Mapping, Sequence
from typing import Any

from pysonic.backends.python._config import ModelConfig
from pysonic.backends.python._tensor import (
    TRITON_STRING_TO_NUMPY,
    Tensor,
    TritonError,
    TritonModelException,
    deserialize_bytes_tensor,
    numpy_to_triton_type,
    serialize_byte_tensor,
    triton_string_to_numpy,
    triton_to_numpy_type,
)

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
