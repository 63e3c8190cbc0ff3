"""The TensorFlow backend: SavedModel directories (``model.savedmodel``), like Triton's.

``platform: "tensorflow_savedmodel"`` (or ``backend: "tensorflow"``) loads the version
directory's ``model.savedmodel`` with ``tf.saved_model.load`` and calls one of its signatures,
``serving_default`` unless the ``TF_SIGNATURE_DEF`` parameter names another (Triton's key). Config
tensor names are the signature's input and output keys. ``tensorflow_graphdef`` is not provided.

TensorFlow is the optional extra ``pysonic[tensorflow]`` (2.18 or newer, the first releases
built for numpy 2), imported only when a model asks for it. Its thread pools are process-wide and
fixed when the runtime starts, so pysonic leaves them to TensorFlow (all cores); signatures run
in C++ with the GIL released, so instance threads run in parallel. ``KIND_GPU`` pins the instance
to ``/GPU:<device_id>`` and is a :class:`ModelConfigError` when TensorFlow sees no GPU.

Example::

    backend = TensorFlowBackend(InstanceSpec("tagger", 1, repo / "tagger" / "1", config))
    backend.execute({"x": x})["y"]
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from types import ModuleType
from typing import Any

import numpy as np

from pysonic.backends.base import Backend, InstanceSpec
from pysonic.errors import InternalError, InvalidArgumentError, ModelConfigError

__all__ = ["TensorFlowBackend", "require_tensorflow"]

log = logging.getLogger(__name__)


def require_tensorflow(model: str) -> ModuleType:
    """Import tensorflow, or say how to install it."""
    try:
        import tensorflow as tf
    except ModuleNotFoundError as err:
        msg = (
            f"model '{model}' uses the tensorflow backend, which needs TensorFlow: "
            "pip install 'pysonic[tensorflow]'"
        )
        raise ModelConfigError(msg) from err
    return tf


class TensorFlowBackend(Backend):
    """One SavedModel signature serving one model instance."""

    def __init__(self, spec: InstanceSpec) -> None:
        super().__init__(spec)
        self._tf = tf = require_tensorflow(spec.model_name)
        config = spec.config
        self._label = f"model '{spec.model_name}' version {spec.version}"
        if config.platform == "tensorflow_graphdef":
            msg = f"{self._label}: TensorFlow GraphDef models are not supported; use a SavedModel"
            raise ModelConfigError(msg)
        path = spec.version_path / (config.default_model_filename or "model.savedmodel")
        if not path.is_dir():
            msg = f"{self._label}: no SavedModel directory at {path}"
            raise ModelConfigError(msg)
        self._device = self._choose_device()
        params = {k: v.string_value for k, v in config.parameters.items()}
        key = params.get("TF_SIGNATURE_DEF") or "serving_default"
        try:
            with tf.device(self._device):
                self._model: Any = tf.saved_model.load(str(path))
        except (OSError, ValueError, tf.errors.OpError) as err:
            msg = f"{self._label}: TensorFlow cannot load {path}: {err}"
            raise ModelConfigError(msg) from err
        signatures = self._model.signatures
        if key not in signatures:
            msg = f"{self._label}: no signature '{key}' (the SavedModel has {list(signatures)})"
            raise ModelConfigError(msg)
        self._fn = signatures[key]
        self._check_names(self._fn)
        self._outputs = [o.name for o in config.output]
        log.info(
            "model %s v%d: SavedModel signature %s on %s",
            spec.model_name,
            spec.version,
            key,
            self._device,
        )

    def _choose_device(self) -> str:
        tf, spec = self._tf, self.spec
        if spec.kind != "KIND_GPU":
            return "/CPU:0"
        gpus = tf.config.list_physical_devices("GPU")
        if spec.device_id >= len(gpus):
            msg = (
                f"{self._label}: instance kind KIND_GPU wants GPU {spec.device_id}, but "
                f"TensorFlow {tf.__version__} sees {len(gpus)} GPU(s); use KIND_CPU"
            )
            raise ModelConfigError(msg)
        return f"/GPU:{spec.device_id}"

    def _check_names(self, fn: Any) -> None:
        inputs = fn.structured_input_signature[1]
        outputs = fn.structured_outputs
        for kind, config_names, known in (
            ("input", [t.name for t in self.spec.config.input], inputs),
            ("output", [t.name for t in self.spec.config.output], outputs),
        ):
            unknown = [n for n in config_names if n not in known]
            if unknown:
                msg = (
                    f"{self._label}: config {kind}s {unknown} are not in the signature "
                    f"(its {kind}s: {', '.join(known)})"
                )
                raise ModelConfigError(msg)
        self._signature_inputs = set(inputs)

    def execute(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Call the signature with the inputs as tensors; name -> output array."""
        tf = self._tf
        missing = self._signature_inputs - set(inputs)
        if missing:
            msg = f"{self._label}: the signature needs inputs {sorted(missing)}"
            raise InvalidArgumentError(msg)
        try:
            with tf.device(self._device):
                result = self._fn(**{n: tf.convert_to_tensor(a) for n, a in inputs.items()})
        except (tf.errors.OpError, ValueError, TypeError) as err:
            msg = f"{self._label}: TensorFlow failed: {err}"
            raise InternalError(msg) from err
        return {name: result[name].numpy() for name in self._outputs}

    def close(self) -> None:
        self._fn = None
        self._model = None
