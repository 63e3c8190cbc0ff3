"""Fill what config.pbtxt leaves out, the way Triton's server and ONNX Runtime backend do.

Two steps, kept apart because ``--strict-model-config`` disables only the second:

* :func:`complete_backend_fields` (always, as Triton's server does): ``name`` from the model
  directory (a different ``name`` is an error), ``backend`` / ``platform`` /
  ``default_model_filename`` from each other or from the model file found in the latest version
  directory (``model.onnx`` -> ``onnxruntime`` / ``onnxruntime_onnx``).
* :func:`complete_io` (ONNX Runtime models, unless strict): when inputs or outputs are missing,
  read the graph and fill the missing list, plus ``max_batch_size`` when every graph input and
  output has a variable first axis (:data:`DEFAULT_MAX_BATCH_SIZE`, Triton's
  ``default-max-batch-size``) and then ``dynamic_batching {}``. What the user wrote is kept and
  checked against the graph (names, datatypes, ranks, fixed sizes).

Example::

    config = ModelConfig()                         # no config.pbtxt at all
    complete_backend_fields(config, Path("repo/jets"), "repo/jets/config.pbtxt")
    complete_io(config, Path("repo/jets/1/model.onnx"), "repo/jets/config.pbtxt")
    # -> name "jets", backend "onnxruntime", max_batch_size 4, inputs/outputs from the graph
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tritonclient.grpc.model_config_pb2 import DataType

from pysonic.errors import ModelConfigError
from pysonic.repository.onnx_graph import GraphTensor, read_onnx_io
from pysonic.repository.versions import DEFAULT_MODEL_FILENAMES, list_versions

if TYPE_CHECKING:
    from pathlib import Path

    from google.protobuf.internal.containers import RepeatedCompositeFieldContainer
    from tritonclient.grpc.model_config_pb2 import ModelConfig, ModelInput, ModelOutput

    _Tensors = (
        RepeatedCompositeFieldContainer[ModelInput] | RepeatedCompositeFieldContainer[ModelOutput]
    )

__all__ = [
    "DEFAULT_MAX_BATCH_SIZE",
    "ENSEMBLE_PLATFORM",
    "PLATFORM_BACKENDS",
    "complete_backend_fields",
    "complete_io",
]

#: max_batch_size set by auto-complete for a model that can batch (Triton's default for
#: ``--backend-config=onnxruntime,default-max-batch-size``). Write a larger one in config.pbtxt.
DEFAULT_MAX_BATCH_SIZE = 4

#: The platform of an ensemble (``ensemble_scheduling``): no backend, steps run other models.
ENSEMBLE_PLATFORM = "ensemble"

#: Triton's platform names -> backend.
PLATFORM_BACKENDS: dict[str, str] = {
    "onnxruntime_onnx": "onnxruntime",
    "pytorch_libtorch": "pytorch",
    "tensorflow_savedmodel": "tensorflow",
    "tensorflow_graphdef": "tensorflow",
    "tensorrt_plan": "tensorrt",
}
_DEFAULT_PLATFORMS = {
    "onnxruntime": "onnxruntime_onnx",
    "pytorch": "pytorch_libtorch",
    "tensorflow": "tensorflow_savedmodel",
    "tensorrt": "tensorrt_plan",
}
_PLATFORM_FILENAMES = {"tensorflow_graphdef": "model.graphdef"}
#: model file -> (backend, platform), in the order Triton probes a version directory.
_FILE_BACKENDS = {
    "model.savedmodel": ("tensorflow", "tensorflow_savedmodel"),
    "model.graphdef": ("tensorflow", "tensorflow_graphdef"),
    "model.plan": ("tensorrt", "tensorrt_plan"),
    "model.onnx": ("onnxruntime", "onnxruntime_onnx"),
    "model.xml": ("openvino", ""),
    "model.pt": ("pytorch", "pytorch_libtorch"),
    "model.py": ("python", ""),
}


def complete_backend_fields(config: ModelConfig, model_dir: Path, source: str) -> None:
    """Fill ``name``, ``backend``, ``platform``, ``default_model_filename`` (in place)."""
    if not config.name:
        config.name = model_dir.name
    elif config.name != model_dir.name:
        msg = (
            f"{source}: name '{config.name}' differs from the model directory "
            f"'{model_dir.name}'; the directory name must equal the model name"
        )
        raise ModelConfigError(msg)
    if config.platform == ENSEMBLE_PLATFORM:
        return  # an ensemble has no backend and no model file: its steps are other models
    if config.platform and config.platform not in PLATFORM_BACKENDS and not config.backend:
        known = ", ".join(sorted(PLATFORM_BACKENDS))
        msg = f"{source}: unknown platform '{config.platform}' (known: {known}); set 'backend'"
        raise ModelConfigError(msg)
    if not config.backend:
        backend, platform = _detect_backend(config, model_dir, source)
        config.backend = backend
        config.platform = config.platform or platform
    expected = PLATFORM_BACKENDS.get(config.platform)
    if expected is not None and expected != config.backend:
        msg = (
            f"{source}: platform '{config.platform}' belongs to backend '{expected}', "
            f"not '{config.backend}'"
        )
        raise ModelConfigError(msg)
    if not config.platform:
        config.platform = _DEFAULT_PLATFORMS.get(config.backend, "")
    if not config.default_model_filename:
        filename = _PLATFORM_FILENAMES.get(config.platform)
        config.default_model_filename = filename or DEFAULT_MODEL_FILENAMES.get(config.backend, "")


def _detect_backend(config: ModelConfig, model_dir: Path, source: str) -> tuple[str, str]:
    if config.platform:
        return PLATFORM_BACKENDS[config.platform], config.platform
    if config.default_model_filename:
        found = _FILE_BACKENDS.get(config.default_model_filename)
        if found is None:
            msg = (
                f"{source}: default_model_filename '{config.default_model_filename}' does not "
                "tell the backend; set 'backend' (e.g. backend: \"onnxruntime\")"
            )
            raise ModelConfigError(msg)
    else:
        versions = list_versions(model_dir)
        latest = versions[max(versions)] if versions else None
        found = next(
            (v for f, v in _FILE_BACKENDS.items() if latest and (latest / f).exists()), None
        )
    if found is None:
        files = ", ".join(_FILE_BACKENDS)
        msg = (
            f"{source}: cannot tell the backend of model '{config.name}': config.pbtxt sets no "
            f"'backend' or 'platform' and the latest version directory holds none of {files}"
        )
        raise ModelConfigError(msg)
    return found


def complete_io(config: ModelConfig, model_path: Path, source: str) -> None:
    """Fill missing inputs/outputs and ``max_batch_size`` from the ONNX graph (in place).

    Does nothing (and reads nothing) when both inputs and outputs are written, like Triton.
    """
    if config.input and config.output:
        return
    graph_inputs, graph_outputs = read_onnx_io(model_path)
    where = f"{source} (graph {model_path})"
    _check_names("input", config.input, graph_inputs, where)
    _check_names("output", config.output, graph_outputs, where)
    _complete_max_batch(config, graph_inputs + graph_outputs, where)
    for ios, graph in ((config.input, graph_inputs), (config.output, graph_outputs)):
        if not ios:
            for tensor in graph:
                _add_tensor(ios, tensor, config.max_batch_size, where)
    _check_shapes("input", config.input, graph_inputs, config.max_batch_size, where)
    _check_shapes("output", config.output, graph_outputs, config.max_batch_size, where)


def _check_names(kind: str, ios: _Tensors, graph: list[GraphTensor], where: str) -> None:
    names = {t.name for t in graph}
    for io in ios:
        if io.name not in names:
            msg = (
                f"{where}: {kind} '{io.name}' is not in the ONNX graph "
                f"(graph {kind}s: {', '.join(sorted(names)) or 'none'})"
            )
            raise ModelConfigError(msg)


def _complete_max_batch(config: ModelConfig, graph: list[GraphTensor], where: str) -> None:
    can_batch = all(t.batchable() for t in graph)
    if config.max_batch_size == 0:
        if not can_batch or _user_wrote_batch_axis(config, graph):
            return
        config.max_batch_size = DEFAULT_MAX_BATCH_SIZE
    elif not can_batch:
        fixed = next(t for t in graph if not t.batchable())
        msg = (
            f"{where}: max_batch_size is {config.max_batch_size} but the model cannot batch: "
            f"the first axis of '{fixed.name}' (shape {_shape_text(fixed.shape)}) is not "
            "variable; set max_batch_size: 0"
        )
        raise ModelConfigError(msg)
    if config.max_batch_size > 1 and not (
        config.HasField("dynamic_batching") or config.HasField("sequence_batching")
    ):
        config.dynamic_batching.SetInParent()


def _user_wrote_batch_axis(config: ModelConfig, graph: list[GraphTensor]) -> bool:
    """A written tensor with the graph's full rank means the user chose not to batch.

    Triton would still set max_batch_size and then reject those dims; pysonic keeps 0.
    """
    shapes = {t.name: t.shape for t in graph}
    for io in (*config.input, *config.output):
        shape = shapes.get(io.name)
        if shape and len(_model_dims(io)) == len(shape):
            return True
    return False


def _add_tensor(ios: _Tensors, tensor: GraphTensor, max_batch_size: int, where: str) -> None:
    if tensor.config_type is None:
        msg = (
            f"{where}: '{tensor.name}' has ONNX element type {tensor.onnx_type}, which has no "
            "Triton datatype"
        )
        raise ModelConfigError(msg)
    if tensor.shape is None:
        msg = f"{where}: '{tensor.name}' has no shape in the graph; write its dims in config.pbtxt"
        raise ModelConfigError(msg)
    dims = list(tensor.shape[1:] if max_batch_size > 0 else tensor.shape)
    io = ios.add(name=tensor.name, data_type=tensor.config_type, dims=dims or [1])
    if not dims and max_batch_size > 0:
        # One scalar per batch item: Triton writes dims [1] and an empty reshape.
        io.reshape.SetInParent()


def _check_shapes(kind: str, ios: _Tensors, graph: list[GraphTensor], mbs: int, where: str) -> None:
    by_name = {t.name: t for t in graph}
    for io in ios:
        tensor = by_name[io.name]
        label = f"{where}: {kind} '{io.name}'"
        if tensor.config_type is not None and io.data_type != DataType.Value(tensor.config_type):
            msg = f"{label} is {DataType.Name(io.data_type)} but the graph has {tensor.config_type}"
            raise ModelConfigError(msg)
        if tensor.shape is None:
            continue
        expected = list(tensor.shape[1:] if mbs > 0 else tensor.shape)
        dims = _model_dims(io)
        if not expected and dims == [1]:
            continue  # a non-batching scalar, written as dims [1] (Triton's convention)
        mismatch = len(dims) != len(expected) or any(
            d > 0 and e > 0 and d != e for d, e in zip(dims, expected, strict=True)
        )
        if mismatch:
            batch = f" after the batch axis (max_batch_size {mbs})" if mbs > 0 else ""
            msg = (
                f"{label} has dims {dims} but the graph shape is {_shape_text(tensor.shape)}, "
                f"i.e. {expected}{batch}"
            )
            raise ModelConfigError(msg)


def _model_dims(io: ModelInput | ModelOutput) -> list[int]:
    """The dims the model sees: ``reshape.shape`` when given, else ``dims``."""
    return list(io.reshape.shape) if io.HasField("reshape") else list(io.dims)


def _shape_text(shape: tuple[int, ...] | None) -> str:
    return "unknown" if shape is None else str(list(shape))
