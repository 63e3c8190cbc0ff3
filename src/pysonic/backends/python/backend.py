"""Triton Python models, unchanged: ``model.py`` with ``TritonPythonModel``, served in-process.

One :class:`PythonBackend` per model instance imports the model.py afresh, creates its
``TritonPythonModel``, calls ``initialize(args)`` with Triton's ``args`` dict, then for each batch
calls ``execute(requests)`` with one ``InferenceRequest`` per client request (the batch as Triton
sends it, not concatenated) and maps each ``InferenceResponse`` back to that request alone: an
``error=TritonError(...)`` fails only its request. ``finalize()`` runs when the model unloads.

Why in-process (Triton uses a stub process per instance): pysonic's data path hands numpy views
of the received bytes to the backend; a worker process would add a copy each way through shared
memory plus an IPC round trip per batch, which is most of the cost of the small pre/post
processing models this backend is for. The price is Triton's reason for processes: model.py code
holds the GIL while it runs Python (numpy releases it inside its kernels), so instances of a
pure-Python model do not run in parallel, and a model.py that crashes the interpreter takes the
server down. Heavy pure-Python models scale with more server processes behind a load balancer.

Example::

    backend = PythonBackend(InstanceSpec("preprocess", 1, repo / "preprocess" / "1", config))
    [result] = backend.execute_requests([BackendRequest({"INPUT0": x})])
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from tritonclient.grpc import model_config_pb2

from pysonic.backends.base import Backend, BackendRequest, InstanceSpec
from pysonic.backends.python import pb_utils
from pysonic.backends.python._config import config_to_json
from pysonic.backends.python._loader import calling, forget_module, import_model_file
from pysonic.errors import (
    AlreadyExistsError,
    CancelledError,
    InternalError,
    InvalidArgumentError,
    ModelConfigError,
    NotFoundError,
    PysonicError,
    UnavailableError,
    UnimplementedError,
)

__all__ = ["PythonBackend"]

log = logging.getLogger(__name__)

_ERRORS: dict[int, type[PysonicError]] = {
    pb_utils.TritonError.INVALID_ARG: InvalidArgumentError,
    pb_utils.TritonError.NOT_FOUND: NotFoundError,
    pb_utils.TritonError.UNAVAILABLE: UnavailableError,
    pb_utils.TritonError.UNSUPPORTED: UnimplementedError,
    pb_utils.TritonError.ALREADY_EXISTS: AlreadyExistsError,
    pb_utils.TritonError.CANCELLED: CancelledError,
}
_DTYPES: dict[str, np.dtype | None] = {
    name: (None if t is np.object_ else np.dtype(t))
    for name, t in pb_utils.TRITON_STRING_TO_NUMPY.items()
}


class PythonBackend(Backend):
    """One ``TritonPythonModel`` object serving one model instance."""

    per_request = True

    def __init__(self, spec: InstanceSpec) -> None:
        super().__init__(spec)
        config = spec.config
        self._label = f"model '{spec.model_name}' version {spec.version}"
        path = spec.version_path / (config.default_model_filename or "model.py")
        if not path.is_file():
            msg = f"{self._label}: no Python model file at {path}"
            raise ModelConfigError(msg)
        if config.model_transaction_policy.decoupled:
            msg = f"{self._label}: decoupled Python models are not supported by pysonic"
            raise ModelConfigError(msg)
        self._dir = path.parent
        self._outputs = {o.name: model_config_pb2.DataType.Name(o.data_type) for o in config.output}
        try:
            module, self._package = import_model_file(path, f"{spec.model_name}_{spec.version}")
        except Exception as err:
            msg = f"{self._label}: importing {path} failed: {type(err).__name__}: {err}"
            raise ModelConfigError(msg) from err
        model_cls = getattr(module, "TritonPythonModel", None)
        if not isinstance(model_cls, type):
            forget_module(self._package)
            msg = f"{self._label}: {path} defines no class TritonPythonModel"
            raise ModelConfigError(msg)
        self._model: Any = None
        try:
            with calling(spec.model_name, self._dir, spec.infer):
                model = model_cls()
                if hasattr(model, "initialize"):
                    model.initialize(self._args())
        except Exception as err:
            forget_module(self._package)
            msg = f"{self._label}: initialize failed: {type(err).__name__}: {err}"
            raise ModelConfigError(msg) from err
        self._model = model

    def _args(self) -> dict[str, str]:
        """Triton's ``initialize`` arguments (all strings)."""
        spec = self.spec
        kind = spec.kind.removeprefix("KIND_")
        return {
            "model_config": config_to_json(spec.config),
            "model_instance_kind": kind,
            "model_instance_name": _instance_name(spec),
            "model_instance_device_id": str(spec.device_id if kind == "GPU" else 0),
            "model_repository": str(spec.version_path.parent),
            "model_version": str(spec.version),
            "model_name": spec.model_name,
        }

    # -- execution ---------------------------------------------------------------------------
    def execute(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """One request alone (direct use); the server calls :meth:`execute_requests`."""
        [result] = self.execute_requests([BackendRequest(inputs)])
        if isinstance(result, Exception):
            raise result
        return result

    def execute_requests(
        self, requests: Sequence[BackendRequest]
    ) -> list[dict[str, np.ndarray] | Exception]:
        model = self._model
        if model is None:
            msg = f"{self._label}: the Python model is finalized"
            raise InternalError(msg)
        pb_requests = [
            pb_utils.InferenceRequest(
                request_id=r.id,
                inputs=[pb_utils.Tensor(n, a) for n, a in r.inputs.items()],
                requested_output_names=list(r.requested_outputs or self._outputs),
                model_name=self.spec.model_name,
                model_version=self.spec.version,
                parameters=r.parameters,
            )
            for r in requests
        ]
        try:
            with calling(self.spec.model_name, self._dir, self.spec.infer):
                responses = model.execute(pb_requests)
                if inspect.iscoroutine(responses):  # ``async def execute`` (Triton 23.04+)
                    responses = asyncio.run(responses)
        except PysonicError:
            raise
        except Exception as err:  # the model's own failure: every request of the batch
            msg = f"{self._label}: execute raised {type(err).__name__}: {err}"
            raise InternalError(msg) from err
        if not isinstance(responses, list | tuple) or len(responses) != len(requests):
            got = len(responses) if isinstance(responses, list | tuple) else type(responses)
            msg = (
                f"{self._label}: execute must return a list of {len(requests)} "
                f"InferenceResponse (one per request), got {got}"
            )
            raise InternalError(msg)
        return [self._result(r) for r in responses]

    def _result(self, response: Any) -> dict[str, np.ndarray] | Exception:
        if not isinstance(response, pb_utils.InferenceResponse):
            kind = type(response).__name__
            msg = f"{self._label}: execute returned {kind}, not an InferenceResponse"
            return InternalError(msg)
        error = response.error()
        if error is not None:
            return _ERRORS.get(error.code(), InternalError)(error.message())
        outputs: dict[str, np.ndarray] = {}
        for tensor in response.output_tensors():
            name, array = tensor.name(), tensor.as_numpy()
            expected = self._outputs.get(name)
            if expected is None:
                continue  # Triton drops outputs the config does not list
            try:
                outputs[name] = self._checked(name, array, expected)
            except InternalError as err:
                return err
        return outputs

    def _checked(self, name: str, array: np.ndarray, config_type: str) -> np.ndarray:
        if config_type == "TYPE_STRING":
            if array.dtype == np.object_:
                flat = array.reshape(-1)
                if all(isinstance(x, bytes) for x in flat):
                    return array
            elif array.dtype.kind not in "SU":
                msg = f"{self._label}: output '{name}' is TYPE_STRING, got dtype {array.dtype}"
                raise InternalError(msg)
            out = np.empty(array.size, dtype=np.object_)
            out[:] = [x if isinstance(x, bytes) else str(x).encode() for x in array.reshape(-1)]
            return out.reshape(array.shape)
        expected = _DTYPES.get(config_type)
        if expected is not None and array.dtype != expected:
            msg = (
                f"{self._label}: output '{name}' has dtype {array.dtype} but the config says "
                f"{config_type} ({expected}); convert it with .astype()"
            )
            raise InternalError(msg)
        return array

    def close(self) -> None:
        """Call ``finalize()`` once (at unload) and drop the imported model.py."""
        model, self._model = self._model, None
        if model is None:
            return
        try:
            if hasattr(model, "finalize"):
                with calling(self.spec.model_name, self._dir, self.spec.infer):
                    model.finalize()
        except Exception:
            log.exception("%s: finalize failed", self._label)
        finally:
            forget_module(self._package)


def _instance_name(spec: InstanceSpec) -> str:
    """Triton's instance name: ``<group name>_<index in group>``."""
    index = spec.instance_index
    for group in spec.config.instance_group:
        kind = model_config_pb2.ModelInstanceGroup.Kind.Name(group.kind)
        gpus = (len(group.gpus) or 1) if kind == "KIND_GPU" else 1
        size = max(group.count, 1) * gpus
        if index < size:
            return f"{group.name}_{index}"
        index -= size
    return f"{spec.model_name}_{spec.instance_index}"
