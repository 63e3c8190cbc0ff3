"""Runtimes behind one small interface, chosen from a registry of lazily imported names.

Built-in backends are listed in :data:`BUILTIN_BACKENDS`; third-party backends register an entry
point in the ``pysonic.backends`` group (``name = "package.module:BackendClass"``). A backend's
module is imported only when a model asks for it, so optional runtimes stay optional.

Example::

    cls = load_backend_class("onnxruntime")
    backend = cls(spec)
"""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points

from pysonic.backends.base import Backend, BackendRequest, InstanceSpec
from pysonic.errors import ModelConfigError

__all__ = [
    "BUILTIN_BACKENDS",
    "Backend",
    "BackendRequest",
    "InstanceSpec",
    "available_backends",
    "load_backend_class",
]

#: backend name (config.pbtxt ``backend``) -> "module:Class"
BUILTIN_BACKENDS: dict[str, str] = {
    "onnxruntime": "pysonic.backends.onnxruntime:OrtBackend",
    "python": "pysonic.backends.python:PythonBackend",
    "pytorch": "pysonic.backends.pytorch:TorchBackend",
    "tensorflow": "pysonic.backends.tensorflow:TensorFlowBackend",
}

#: config.pbtxt ``platform`` -> backend name (Triton's legacy platform names)
PLATFORM_TO_BACKEND: dict[str, str] = {
    "onnxruntime_onnx": "onnxruntime",
    "pytorch_libtorch": "pytorch",
    "tensorflow_savedmodel": "tensorflow",
}


def available_backends() -> dict[str, str]:
    """All known backends: built-ins plus ``pysonic.backends`` entry points (those win)."""
    found = dict(BUILTIN_BACKENDS)
    for ep in entry_points(group="pysonic.backends"):
        found[ep.name] = ep.value
    return found


def load_backend_class(name: str) -> type[Backend]:
    """Import and return the backend class registered as ``name``."""
    registry = available_backends()
    try:
        target = registry[name]
    except KeyError:
        msg = f"unknown backend '{name}' (available: {', '.join(sorted(registry))})"
        raise ModelConfigError(msg) from None
    module_name, _, attr = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        msg = f"backend '{name}' needs a module that is not installed: {err.name}"
        raise ModelConfigError(msg) from err
    cls = getattr(module, attr)
    if not (isinstance(cls, type) and issubclass(cls, Backend)):
        msg = f"backend '{name}' ({target}) is not a pysonic Backend subclass"
        raise ModelConfigError(msg)
    return cls
