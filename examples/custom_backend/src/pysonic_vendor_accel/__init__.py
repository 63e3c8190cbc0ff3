"""An example pysonic backend plugin for a (simulated) vendor accelerator.

A real plugin would open the vendor's device handle in ``__init__``, load the compiled model onto
it, and call the vendor's run function in ``execute``; everything pysonic needs is here:

* one :class:`VendorAccelBackend` per model instance (``instance_group`` count x gpus), built on
  a loader thread and then used from exactly one instance thread;
* load failures raise :class:`pysonic.errors.ModelConfigError` naming the model and the file;
* run-time failures raise :class:`pysonic.errors.InternalError` (or ``InvalidArgumentError`` for
  a bad input); anything else is wrapped as an internal error by the server;
* ``execute`` takes and returns numpy arrays, batched along axis 0 by pysonic's batcher;
* ``close`` frees the device (called at unload, after the instance's last execution).

Example::

    compile_model(Path("repo/tagger/1/model.vxa"), features=16, classes=4)
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from pysonic.backends import Backend, InstanceSpec
from pysonic.errors import InternalError, InvalidArgumentError, ModelConfigError

__all__ = ["VendorAccelBackend", "compile_model"]

log = logging.getLogger(__name__)

#: Cards of the simulated accelerator; a real runtime would enumerate its devices.
DEVICES = 2
_open_devices: dict[int, int] = {}
_devices_lock = threading.Lock()


def compile_model(path: Path, *, features: int = 16, classes: int = 4, seed: int = 0) -> Path:
    """Write an example compiled model: one dense layer + softmax, as a NumPy archive."""
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as f:
        np.savez(
            f,
            weight=rng.standard_normal((features, classes)).astype(np.float32),
            bias=rng.standard_normal(classes).astype(np.float32),
        )
    return path


class VendorAccelBackend(Backend):
    """One model instance on one accelerator card (``KIND_GPU`` device ids are card numbers)."""

    def __init__(self, spec: InstanceSpec) -> None:
        super().__init__(spec)
        label = f"model '{spec.model_name}' version {spec.version}"
        self.card = spec.device_id if spec.kind == "KIND_GPU" else 0
        if self.card >= DEVICES:
            msg = f"{label}: accelerator card {self.card} does not exist ({DEVICES} cards)"
            raise ModelConfigError(msg)
        path = spec.version_path / (spec.config.default_model_filename or "model.vxa")
        try:
            with np.load(path) as archive:
                self._weight = archive["weight"]
                self._bias = archive["bias"]
        except (OSError, KeyError, ValueError) as err:
            msg = f"{label}: cannot load the compiled model {path}: {err}"
            raise ModelConfigError(msg) from err
        params = {k: v.string_value for k, v in spec.config.parameters.items()}
        self.clock_mhz = int(params.get("clock_mhz", "250"))
        with _devices_lock:
            _open_devices[self.card] = _open_devices.get(self.card, 0) + 1
        self._label = label
        log.info("%s instance %d on %s", label, spec.instance_index, self.device)

    @property
    def device(self) -> str:
        """Where this instance runs, as the vendor would name it."""
        return f"vxa:{self.card}@{self.clock_mhz}MHz"

    def execute(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self._weight is None:
            msg = f"{self._label}: the device was released"
            raise InternalError(msg)
        x = inputs["x"]
        if x.shape[-1] != self._weight.shape[0]:
            wanted = self._weight.shape[0]
            msg = f"{self._label}: x has {x.shape[-1]} features, the model takes {wanted}"
            raise InvalidArgumentError(msg)
        logits = x @ self._weight + self._bias  # the "device" call: releases the GIL
        logits -= logits.max(axis=-1, keepdims=True)
        scores = np.exp(logits)
        scores /= scores.sum(axis=-1, keepdims=True)
        return {"scores": scores.astype(np.float32)}

    def close(self) -> None:
        if self._weight is None:
            return
        self._weight = self._bias = None  # type: ignore[assignment]
        with _devices_lock:
            _open_devices[self.card] -= 1
