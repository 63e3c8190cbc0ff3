"""The PyTorch backend: TorchScript (``model.pt``) and torch.export programs (``model.pt2``).

Configured the way Triton's ``pytorch`` backend is: ``backend: "pytorch"`` (or the legacy
``platform: "pytorch_libtorch"``) loads ``model.pt`` with ``torch.jit.load``; a
``default_model_filename`` ending in ``.pt2`` loads a program saved by ``torch.export.save`` (its
``module()``; export it with a dynamic batch dimension to batch). Triton's own ``.pt2`` platform,
``torch_aoti`` (AOTInductor packages), is not provided.

Tensor names follow Triton's rules. Inputs: if every config input is a ``forward`` argument name,
they bind by name; else if every name is ``<anything>__<index>`` (``INPUT__0``), by index; else
by config order. A ``forward`` taking one ``Dict[str, Tensor]`` gets the inputs by config name.
Outputs: ``<anything>__<index>`` (``OUTPUT__0``) picks that element of the returned tuple/list,
else config order does; a returned dict is read by output name.

Threads: ``torch.set_num_threads`` is process-global in name, but OpenMP and MKL keep the count
per calling thread, so each instance thread sets its own before its first execution:
``INTRA_OP_THREAD_COUNT`` (Triton's key), default cores // instances, as the ONNX Runtime backend.
``INTER_OP_THREAD_COUNT`` is truly global (``torch.set_num_interop_threads``, once per process):
the first model that sets it wins and later different values are logged and ignored, as in
Triton. Execution runs under ``torch.inference_mode()`` (``INFERENCE_MODE: "false"`` switches to
``no_grad``); torch releases the GIL inside its kernels and TorchScript's interpreter, so N
instance threads run in parallel. ``KIND_GPU`` runs on ``cuda:<device_id>`` and is a
:class:`ModelConfigError` where CUDA is not available; ``KIND_MODEL`` leaves the module where it is.

Inputs reach torch without copies (``torch.from_numpy`` over the received bytes, which are
read-only: a model must not modify its inputs in place). BYTES tensors are not supported.

Example::

    backend = TorchBackend(InstanceSpec("tagger", 1, repo / "tagger" / "1", config))
    backend.execute({"INPUT__0": x})["OUTPUT__0"]
"""

from __future__ import annotations

import logging
import os
import re
import threading
import warnings
from collections.abc import Mapping
from types import ModuleType
from typing import Any

import ml_dtypes
import numpy as np
from tritonclient.grpc import model_config_pb2

from pysonic.backends.base import Backend, InstanceSpec
from pysonic.errors import InternalError, InvalidArgumentError, ModelConfigError

__all__ = ["TorchBackend"]

log = logging.getLogger(__name__)

_INDEXED = re.compile(r"^.+__(\d+)$")
_BF16 = np.dtype(ml_dtypes.bfloat16)
_TRUE = {"1", "true", "yes", "on"}
_interop_threads: int | None = None
_interop_lock = threading.Lock()


def require_torch(model: str) -> ModuleType:
    """Import torch, or say how to install it (torch is the optional ``pysonic[torch]``)."""
    try:
        import torch
    except ModuleNotFoundError as err:
        msg = (
            f"model '{model}' uses the pytorch backend, which needs PyTorch: "
            "pip install 'pysonic[torch]'"
        )
        raise ModelConfigError(msg) from err
    return torch


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


class TorchBackend(Backend):
    """One TorchScript module or exported program serving one model instance."""

    def __init__(self, spec: InstanceSpec) -> None:
        super().__init__(spec)
        self._torch = torch = require_torch(spec.model_name)
        config = spec.config
        self._label = f"model '{spec.model_name}' version {spec.version}"
        self._params = {k.upper(): v.string_value for k, v in config.parameters.items()}
        if config.platform == "torch_aoti":
            msg = f"{self._label}: platform torch_aoti (AOTInductor packages) is not supported"
            raise ModelConfigError(msg)
        for t in (*config.input, *config.output):
            if t.data_type == model_config_pb2.TYPE_STRING:
                msg = f"{self._label}: '{t.name}' is TYPE_STRING; the pytorch backend takes tensors"
                raise ModelConfigError(msg)
        path = spec.version_path / (config.default_model_filename or "model.pt")
        if not path.is_file():
            msg = f"{self._label}: no model file at {path}"
            raise ModelConfigError(msg)
        self._device = self._choose_device()
        self._module, arg_names, self._dict_input = self._load(path)
        self._inputs = self._bind_inputs(arg_names)
        self._outputs = self._bind_outputs()
        self._threads = self._int_param(
            "INTRA_OP_THREAD_COUNT", max(1, _cores() // max(1, spec.instance_count))
        )
        self._set_interop_threads()
        self._inference_mode = self._params.get("INFERENCE_MODE", "true").lower() in _TRUE
        self._optimized = self._params.get("DISABLE_OPTIMIZED_EXECUTION", "").lower() not in _TRUE
        self._thread_ready = threading.local()
        with warnings.catch_warnings():
            # torch warns once per process that read-only numpy inputs make read-only tensors;
            # pysonic's inputs are read-only views of the request bytes by design.
            warnings.simplefilter("ignore", UserWarning)
            torch.from_numpy(np.frombuffer(b"\0\0\0\0", np.float32))
        log.info(
            "model %s v%d instance %d: %s on %s, intra_op_threads=%d",
            spec.model_name,
            spec.version,
            spec.instance_index,
            path.name,
            self._device,
            self._threads,
        )

    # -- loading -----------------------------------------------------------------------------
    def _int_param(self, key: str, default: int) -> int:
        raw = self._params.get(key, "")
        if not raw:
            return default
        if not raw.isdigit() or int(raw) < 1:
            msg = f"{self._label}: parameter {key}='{raw}' must be an integer >= 1"
            raise ModelConfigError(msg)
        return int(raw)

    def _set_interop_threads(self) -> None:
        global _interop_threads
        wanted = self._int_param("INTER_OP_THREAD_COUNT", 0)
        if not wanted:
            return
        with _interop_lock:
            if _interop_threads is None:
                try:
                    self._torch.set_num_interop_threads(wanted)
                except RuntimeError as err:  # inter-op work already started in this process
                    log.warning(
                        "%s: INTER_OP_THREAD_COUNT=%d not applied: %s", self._label, wanted, err
                    )
                    return
                _interop_threads = wanted
            elif _interop_threads != wanted:
                log.warning(
                    "%s: INTER_OP_THREAD_COUNT=%d ignored: process-wide, already %d",
                    self._label,
                    wanted,
                    _interop_threads,
                )

    def _choose_device(self) -> Any:
        torch, spec = self._torch, self.spec
        if spec.kind != "KIND_GPU":
            return torch.device("cpu")
        if not torch.cuda.is_available():
            msg = (
                f"{self._label}: instance kind KIND_GPU needs CUDA, but this torch "
                f"({torch.__version__}) sees no GPU; use KIND_CPU or a CUDA build of torch"
            )
            raise ModelConfigError(msg)
        if spec.device_id >= torch.cuda.device_count():
            msg = f"{self._label}: GPU {spec.device_id} asked, {torch.cuda.device_count()} visible"
            raise ModelConfigError(msg)
        return torch.device("cuda", spec.device_id)

    def _load(self, path: Any) -> tuple[Any, list[str], bool]:
        """(callable module, forward argument names, takes one Dict[str, Tensor])."""
        torch = self._torch
        location = None if self.spec.kind == "KIND_MODEL" else self._device
        try:
            if path.suffix == ".pt2":
                program = torch.export.load(str(path))
                names = list(program.graph_signature.user_inputs)
                module = program.module()
                if location is not None and location.type != "cpu":
                    module = module.to(location)
                return module, names, False
            with warnings.catch_warnings():
                # torch >= 2.10 deprecates TorchScript; Triton's pytorch_libtorch serves it
                # still, and so does pysonic (torch.export programs are the way forward).
                warnings.filterwarnings("ignore", ".*torch.jit", DeprecationWarning)
                module = torch.jit.load(str(path), map_location=location)
        except (RuntimeError, ValueError, OSError) as err:
            msg = f"{self._label}: torch cannot load {path}: {err}"
            raise ModelConfigError(msg) from err
        module.eval()
        arguments = module.forward.schema.arguments
        args = [a for a in arguments if a.name != "self"]
        is_dict = len(args) == 1 and str(args[0].type.kind()) == "DictType"
        return module, [a.name for a in args], is_dict

    def _bind_inputs(self, arg_names: list[str]) -> list[tuple[str, int]]:
        """(config input name, position in forward) in the order forward takes them."""
        names = [t.name for t in self.spec.config.input]
        if self._dict_input:
            return [(n, i) for i, n in enumerate(names)]
        if len(arg_names) != len(names):
            msg = (
                f"{self._label}: the config lists {len(names)} inputs but forward takes "
                f"{len(arg_names)} ({', '.join(arg_names)})"
            )
            raise ModelConfigError(msg)
        if all(n in arg_names for n in names):
            return sorted(((n, arg_names.index(n)) for n in names), key=lambda p: p[1])
        indexed = [_INDEXED.match(n) for n in names]
        if all(indexed):
            positions = [int(m.group(1)) for m in indexed if m]
            if sorted(positions) != list(range(len(names))):
                msg = f"{self._label}: input indices {positions} must be 0..{len(names) - 1}"
                raise ModelConfigError(msg)
            return sorted(zip(names, positions, strict=True), key=lambda p: p[1])
        return [(n, i) for i, n in enumerate(names)]

    def _bind_outputs(self) -> list[tuple[str, int]]:
        names = [t.name for t in self.spec.config.output]
        indexed = [_INDEXED.match(n) for n in names]
        if all(indexed):
            return [(n, int(m.group(1))) for n, m in zip(names, indexed, strict=True) if m]
        return [(n, i) for i, n in enumerate(names)]

    # -- execution ---------------------------------------------------------------------------
    def _to_torch(self, name: str, array: np.ndarray) -> Any:
        torch = self._torch
        if array.dtype == _BF16:
            tensor = torch.from_numpy(np.ascontiguousarray(array).view(np.uint16)).view(
                torch.bfloat16
            )
        else:
            try:
                tensor = torch.from_numpy(array)
            except TypeError as err:
                msg = f"{self._label}: input '{name}' of dtype {array.dtype} is not a torch dtype"
                raise InvalidArgumentError(msg) from err
        return tensor if self._device.type == "cpu" else tensor.to(self._device, non_blocking=True)

    def _to_numpy(self, name: str, value: Any) -> np.ndarray:
        torch = self._torch
        if not isinstance(value, torch.Tensor):
            msg = f"{self._label}: output '{name}' is {type(value).__name__}, not a tensor"
            raise InternalError(msg)
        value = value.detach().cpu().contiguous()
        if value.dtype == torch.bfloat16:
            return value.view(torch.uint16).numpy().view(_BF16)
        return value.numpy()

    def execute(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run forward on the inputs (as tensors sharing their memory); name -> output array."""
        torch = self._torch
        if self._module is None:
            msg = f"{self._label}: backend instance is closed"
            raise InternalError(msg)
        if not getattr(self._thread_ready, "done", False):
            torch.set_num_threads(self._threads)  # per OS thread for OpenMP and MKL
            self._thread_ready.done = True
        try:
            tensors = {n: self._to_torch(n, inputs[n]) for n, _ in self._inputs if n in inputs}
        except KeyError as err:
            msg = f"{self._label}: missing input {err}"
            raise InvalidArgumentError(msg) from err
        grad = torch.inference_mode() if self._inference_mode else torch.no_grad()
        try:
            with grad, torch.jit.optimized_execution(self._optimized):
                if self._dict_input:
                    result = self._module(tensors)
                else:
                    result = self._module(*(tensors[n] for n, _ in self._inputs))
        except RuntimeError as err:
            msg = f"{self._label}: torch failed: {err}"
            raise InternalError(msg) from err
        return self._outputs_of(result)

    def _outputs_of(self, result: Any) -> dict[str, np.ndarray]:
        if isinstance(result, Mapping):
            missing = [n for n, _ in self._outputs if n not in result]
            if missing:
                msg = f"{self._label}: forward returned keys {list(result)}, not {missing}"
                raise InternalError(msg)
            return {n: self._to_numpy(n, result[n]) for n, _ in self._outputs}
        values = list(result) if isinstance(result, list | tuple) else [result]
        out = {}
        for name, index in self._outputs:
            if index >= len(values):
                msg = (
                    f"{self._label}: output '{name}' wants element {index}; forward returned "
                    f"{len(values)}"
                )
                raise InternalError(msg)
            out[name] = self._to_numpy(name, values[index])
        return out

    def close(self) -> None:
        self._module = None
