"""The ONNX Runtime backend, configured the way Triton's ``onnxruntime`` backend is.

One :class:`OrtBackend` owns one ``onnxruntime.InferenceSession`` for one model instance. Inputs go
to ORT without copies (C-contiguous numpy arrays, read-only ``np.frombuffer`` views included, are
wrapped, not copied); BYTES (object arrays of ``bytes``) are decoded to the ``str`` ORT wants and
string outputs come back as ``bytes``; BF16 (``ml_dtypes.bfloat16``) goes through ``OrtValue``.

Execution providers follow the instance group and Triton's accelerators: ``KIND_CPU`` -> CPU EP
(or OpenVINO via ``cpu_execution_accelerator``), ``KIND_GPU`` -> CUDA EP on ``device_id`` (TensorRT
first via ``gpu_execution_accelerator``). A provider that this onnxruntime build lacks is a
:class:`ModelConfigError`, never a silent fallback to CPU.

``parameters`` keys (all ``string_value``)::

    intra_op_thread_count   int, 0 = ORT default (all cores); unset = cores // instance_count
    inter_op_thread_count   int, default 1
    execution_mode          0 | 1 | sequential | parallel
    graph_optimization_level  disable | basic | extended | all (overrides optimization.graph.level)
    enable_mem_arena        bool (CPU memory arena), enable_mem_pattern  bool
    execution_provider      comma-separated EP names, replaces the kind/accelerator choice,
                            e.g. "ROCMExecutionProvider" (CPU EP is appended for unsupported ops)
    session_config.<key>    passed to SessionOptions.add_session_config_entry(<key>, value),
                            e.g. session_config.session.intra_op.allow_spinning = "0"
    cudnn_conv_algo_search, gpu_mem_limit, arena_extend_strategy, do_copy_in_default_stream,
    cudnn_conv_use_max_workspace   CUDA EP options (as in Triton)

Example::

    backend = OrtBackend(InstanceSpec("dense_tagger", 1, path / "1", config))
    probs = backend.execute({"pf_features": x, "pf_mask": m})["softmax"]
"""

from __future__ import annotations

import ctypes
import inspect
import logging
import os
from collections.abc import Mapping
from typing import Any

import ml_dtypes
import numpy as np
import onnxruntime as ort
from onnx import TensorProto
from onnxruntime.capi import onnxruntime_pybind11_state as _ort_state

from pysonic.backends.base import Backend, InstanceSpec
from pysonic.errors import InternalError, InvalidArgumentError, ModelConfigError

__all__ = ["OrtBackend"]

logger = logging.getLogger(__name__)

_CPU = "CPUExecutionProvider"
_GPU_PROVIDERS = frozenset(
    {
        "CUDAExecutionProvider",
        "TensorrtExecutionProvider",
        "ROCMExecutionProvider",
        "MIGraphXExecutionProvider",
        "DmlExecutionProvider",
    }
)
_GPU_ACCELERATORS = {"tensorrt": "TensorrtExecutionProvider", "cuda": "CUDAExecutionProvider"}
_CPU_ACCELERATORS = {"openvino": "OpenVINOExecutionProvider"}
_CUDA_KEYS = (
    "cudnn_conv_algo_search",
    "gpu_mem_limit",
    "arena_extend_strategy",
    "do_copy_in_default_stream",
    "cudnn_conv_use_max_workspace",
)
_LEVELS = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}
_MODES = {
    "0": ort.ExecutionMode.ORT_SEQUENTIAL,
    "sequential": ort.ExecutionMode.ORT_SEQUENTIAL,
    "1": ort.ExecutionMode.ORT_PARALLEL,
    "parallel": ort.ExecutionMode.ORT_PARALLEL,
}
_BF16 = np.dtype(ml_dtypes.bfloat16)
# ORT's pybind exceptions do not share a base class below Exception: collect them once.
_ORT_ERRORS: tuple[type[BaseException], ...] = (
    *(c for c in vars(_ort_state).values() if inspect.isclass(c) and issubclass(c, Exception)),
    RuntimeError,
    ValueError,
)


def _available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


class OrtBackend(Backend):
    """One ONNX Runtime session serving one model instance (used from one thread)."""

    def __init__(self, spec: InstanceSpec) -> None:
        super().__init__(spec)
        self._params = {k: v.string_value for k, v in spec.config.parameters.items()}
        path = spec.version_path / (spec.config.default_model_filename or "model.onnx")
        if not path.is_file():
            msg = f"model '{spec.model_name}' version {spec.version}: no model file at {path}"
            raise ModelConfigError(msg)
        providers = self._providers()
        try:
            self._session: ort.InferenceSession | None = ort.InferenceSession(
                str(path), self._session_options(), providers=providers, enable_fallback=0
            )
        except _ORT_ERRORS as err:
            msg = f"model '{spec.model_name}': onnxruntime cannot load {path}: {err}"
            raise ModelConfigError(msg) from err
        self._session.disable_fallback()  # an EP failure at run time is an error, not CPU
        active = self._session.get_providers()
        missing = [name for name, _ in providers if name not in active]
        if missing:
            msg = (
                f"model '{spec.model_name}': execution provider(s) {missing} failed to "
                f"initialise (session runs on {active}); check the GPU/driver libraries"
            )
            raise ModelConfigError(msg)
        self._inputs = {i.name: i.type for i in self._session.get_inputs()}
        self._optional = {i.name: i.type for i in self._session.get_overridable_initializers()}
        self._outputs = [o.name for o in self._session.get_outputs()]
        types = [*self._inputs.values(), *(o.type for o in self._session.get_outputs())]
        self._use_ort_values = "tensor(bfloat16)" in types
        # Inputs that ORT takes as they come (numpy, no strings, no BF16 OrtValues): a request
        # naming exactly these skips the per-input checks of _feed on the hot path.
        plain = not self._use_ort_values and "tensor(string)" not in self._inputs.values()
        self._plain_inputs = frozenset(self._inputs) if plain else None
        opts = self._session.get_session_options()
        logger.info(
            "model %s v%d instance %d: %s, intra_op_threads=%d inter_op_threads=%d",
            spec.model_name,
            spec.version,
            spec.instance_index,
            active,
            opts.intra_op_num_threads,
            opts.inter_op_num_threads,
        )

    @property
    def providers(self) -> list[str]:
        """The execution providers the session runs on, in priority order."""
        return self._live().get_providers()

    # -- configuration -----------------------------------------------------------------------
    def _int_param(self, key: str, default: int) -> int:
        raw = self._params.get(key)
        if raw is None or raw == "":
            return default
        try:
            value = int(raw)
        except ValueError:
            value = -1
        if value < 0:
            msg = f"model '{self.spec.model_name}': parameter {key}='{raw}' must be an int >= 0"
            raise ModelConfigError(msg)
        return value

    def _choice_param(self, key: str, choices: Mapping[str, Any]) -> Any:
        raw = self._params[key].strip().lower()
        if raw not in choices:
            msg = (
                f"model '{self.spec.model_name}': parameter {key}='{raw}' is not one of "
                f"{', '.join(choices)}"
            )
            raise ModelConfigError(msg)
        return choices[raw]

    def _session_options(self) -> ort.SessionOptions:
        opts = ort.SessionOptions()
        default_intra = max(1, _available_cores() // max(1, self.spec.instance_count))
        opts.intra_op_num_threads = self._int_param("intra_op_thread_count", default_intra)
        opts.inter_op_num_threads = self._int_param("inter_op_thread_count", 1)
        if "execution_mode" in self._params:
            opts.execution_mode = self._choice_param("execution_mode", _MODES)
        opts.graph_optimization_level = self._graph_level()
        bools = {"1": True, "true": True, "0": False, "false": False}
        if "enable_mem_arena" in self._params:
            opts.enable_cpu_mem_arena = self._choice_param("enable_mem_arena", bools)
        if "enable_mem_pattern" in self._params:
            opts.enable_mem_pattern = self._choice_param("enable_mem_pattern", bools)
        for key, value in self._params.items():
            if key.startswith("session_config."):
                opts.add_session_config_entry(key.removeprefix("session_config."), value)
        return opts

    def _graph_level(self) -> ort.GraphOptimizationLevel:
        if "graph_optimization_level" in self._params:
            return self._choice_param("graph_optimization_level", _LEVELS)
        config = self.spec.config
        level = config.optimization.graph.level if config.optimization.HasField("graph") else 0
        # Triton's mapping: -1 basic, 1 extended, anything else all.
        return {-1: _LEVELS["basic"], 1: _LEVELS["extended"]}.get(level, _LEVELS["all"])

    def _providers(self) -> list[tuple[str, dict[str, Any]]]:
        """The (provider, options) list for this instance; raises if any is unavailable."""
        spec, available = self.spec, ort.get_available_providers()
        accelerators = spec.config.optimization.execution_accelerators
        gpu = spec.kind == "KIND_GPU" or (
            spec.kind == "KIND_AUTO" and "CUDAExecutionProvider" in available
        )
        wanted: list[tuple[str, dict[str, Any]]] = []
        if "execution_provider" in self._params:
            names = [n.strip() for n in self._params["execution_provider"].split(",") if n.strip()]
            wanted = [(name, {}) for name in names]
        elif gpu:
            # Triton: TensorRT (if asked) before CUDA; a "cuda" accelerator only adds options.
            cuda: dict[str, Any] = {k: self._params[k] for k in _CUDA_KEYS if k in self._params}
            for acc in accelerators.gpu_execution_accelerator:
                name = self._accelerator(acc.name, _GPU_ACCELERATORS)
                if name == "CUDAExecutionProvider":
                    cuda.update(acc.parameters)
                else:
                    wanted.append((name, self._trt_options(dict(acc.parameters))))
            wanted.append(("CUDAExecutionProvider", cuda))
        else:
            wanted = [
                (self._accelerator(acc.name, _CPU_ACCELERATORS), dict(acc.parameters))
                for acc in accelerators.cpu_execution_accelerator
            ]
        for name, options in wanted:
            if name not in available:
                msg = (
                    f"model '{spec.model_name}' asks for execution provider '{name}', which "
                    f"this onnxruntime build lacks (available: {', '.join(available)})"
                )
                raise ModelConfigError(msg)
            if name in _GPU_PROVIDERS:
                options.setdefault("device_id", spec.device_id)
        return [w for w in wanted if w[0] != _CPU] + [(_CPU, {})]

    def _accelerator(self, name: str, table: Mapping[str, str]) -> str:
        if name not in table:
            msg = (
                f"model '{self.spec.model_name}': unknown execution accelerator '{name}' "
                f"here (known: {', '.join(table)})"
            )
            raise ModelConfigError(msg)
        return table[name]

    @staticmethod
    def _trt_options(params: dict[str, str]) -> dict[str, Any]:
        """Triton's TensorRT accelerator parameters -> TensorRT EP provider options."""
        options: dict[str, Any] = {k: v for k, v in params.items() if k.startswith("trt_")}
        if params.get("precision_mode", "").upper() == "FP16":
            options["trt_fp16_enable"] = True
        if "max_workspace_size_bytes" in params:
            options["trt_max_workspace_size"] = params["max_workspace_size_bytes"]
        return options

    # -- execution ---------------------------------------------------------------------------
    def _live(self) -> ort.InferenceSession:
        if self._session is None:
            msg = f"model '{self.spec.model_name}': backend instance is closed"
            raise InternalError(msg)
        return self._session

    def _feed(self, inputs: Mapping[str, np.ndarray]) -> dict[str, Any]:
        unknown = [n for n in inputs if n not in self._inputs and n not in self._optional]
        missing = [n for n in self._inputs if n not in inputs]
        if unknown or missing:
            msg = (
                f"model '{self.spec.model_name}': unknown inputs {unknown}, missing inputs "
                f"{missing} (the model's inputs: {', '.join(self._inputs)})"
            )
            raise InvalidArgumentError(msg)
        feed: dict[str, Any] = {}
        for name, array in inputs.items():
            if self._inputs.get(name, self._optional.get(name)) == "tensor(string)":
                array = _decode_strings(name, array)
            elif not array.flags.c_contiguous:
                array = np.ascontiguousarray(array)
            if self._use_ort_values:
                feed[name] = (
                    ort.OrtValue.ortvalue_from_numpy_with_onnx_type(
                        array.view(np.uint16), TensorProto.BFLOAT16
                    )
                    if array.dtype == _BF16
                    else ort.OrtValue.ortvalue_from_numpy(array)
                )
            else:
                feed[name] = array
        return feed

    def execute(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the session; returns every graph output by name (strings as ``bytes``)."""
        session = self._live()
        feed = inputs if inputs.keys() == self._plain_inputs else self._feed(inputs)
        try:
            if self._use_ort_values:
                values = session.run_with_ort_values(self._outputs, feed)
                results = [_ort_value_to_numpy(v) for v in values]
            else:
                results = session.run(self._outputs, feed)
        except _ORT_ERRORS as err:
            msg = f"model '{self.spec.model_name}': onnxruntime failed: {err}"
            raise InternalError(msg) from err
        out: dict[str, np.ndarray] = {}
        for name, value in zip(self._outputs, results, strict=True):
            if isinstance(value, np.ndarray) and value.dtype == object:
                value = _encode_strings(value)
            out[name] = value
        return out

    def close(self) -> None:
        """Drop the session; ORT frees its memory (and device memory) when it is collected."""
        self._session = None


def _decode_strings(name: str, array: np.ndarray) -> np.ndarray:
    flat = array.reshape(-1)
    try:
        items = [x.decode() if isinstance(x, bytes | bytearray) else str(x) for x in flat]
    except UnicodeDecodeError as err:
        msg = f"input '{name}': the ONNX string tensor needs UTF-8 elements: {err}"
        raise InvalidArgumentError(msg) from err
    out = np.empty(len(items), dtype=object)
    out[:] = items
    return out.reshape(array.shape)


def _encode_strings(array: np.ndarray) -> np.ndarray:
    out = np.empty(array.size, dtype=object)
    out[:] = [x.encode() if isinstance(x, str) else x for x in array.reshape(-1)]
    return out.reshape(array.shape)


def _ort_value_to_numpy(value: ort.OrtValue) -> np.ndarray:
    if value.data_type() != "tensor(bfloat16)":
        return value.numpy()
    # ORT's numpy() has no bfloat16: copy the raw bytes while ``value`` still owns them.
    raw = (ctypes.c_char * value.tensor_size_in_bytes()).from_address(value.data_ptr())
    return np.frombuffer(raw, dtype=_BF16).reshape(value.shape()).copy()
