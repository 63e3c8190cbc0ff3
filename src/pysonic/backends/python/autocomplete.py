"""``TritonPythonModel.auto_complete_config``: let a model.py fill its own configuration.

Triton calls the static method once at load (unless ``--disable-auto-complete-config``, which is
pysonic's ``--strict-model-config``) in a throwaway interpreter; pysonic imports the model.py in a
private package that is dropped afterwards, so nothing created there survives into the instances.
The method receives a :class:`~pysonic.backends.python._config.ModelConfig` holding what
config.pbtxt says and returns it completed; a conflict with config.pbtxt is a ModelConfigError.

Example::

    complete_python_config(config, Path("repo/preprocess/1/model.py"), "repo/preprocess")
"""

from __future__ import annotations

from pathlib import Path

from google.protobuf import json_format
from tritonclient.grpc import model_config_pb2

from pysonic.backends.python._config import ModelConfig, config_from_dict, config_to_dict
from pysonic.backends.python._loader import forget_module, import_model_file
from pysonic.errors import ModelConfigError

__all__ = ["complete_python_config"]


def complete_python_config(
    config: model_config_pb2.ModelConfig, model_file: Path, source: str
) -> None:
    """Run the model's ``auto_complete_config`` (if any) on ``config``, in place."""
    try:
        module, package = import_model_file(model_file, f"autocomplete_{config.name}")
    except Exception as err:
        msg = f"{source}: importing {model_file} failed: {type(err).__name__}: {err}"
        raise ModelConfigError(msg) from err
    try:
        model_cls = getattr(module, "TritonPythonModel", None)
        hook = getattr(model_cls, "auto_complete_config", None)
        if hook is None:
            return
        try:
            completed = hook(ModelConfig(config_to_dict(config)))
        except Exception as err:
            msg = f"{source}: auto_complete_config failed: {type(err).__name__}: {err}"
            raise ModelConfigError(msg) from err
        if not isinstance(completed, ModelConfig):
            msg = f"{source}: auto_complete_config must return the pb_utils.ModelConfig it got"
            raise ModelConfigError(msg)
        try:
            new = config_from_dict(completed.as_dict())
        except json_format.ParseError as err:
            msg = f"{source}: auto_complete_config produced an invalid configuration: {err}"
            raise ModelConfigError(msg) from err
        config.CopyFrom(new)
    finally:
        forget_module(package)
