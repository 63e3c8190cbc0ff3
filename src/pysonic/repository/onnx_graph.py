"""What auto-complete needs from an ONNX file: its graph inputs and outputs, nothing more.

The file is read with ``onnx.load(path, load_external_data=False)``, so external weights are
never touched, and no ONNX Runtime session is built (Triton builds one; reading the proto is
enough to learn names, element types and shapes, and it is much cheaper). Initializers that
are also listed as graph inputs (ONNX IR < 4 does that) are not inputs a client sends, so they
are dropped.

Example::

    >>> inputs, outputs = read_onnx_io(Path("repo/jets/1/model.onnx"))
    >>> inputs[0]
    GraphTensor(name='pf_points', config_type='TYPE_FP32', shape=(-1, 100, 2), onnx_type='FLOAT')
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import onnx
from google.protobuf.message import DecodeError

from pysonic.errors import ModelConfigError
from pysonic.protocol.datatypes import wire_to_config

if TYPE_CHECKING:
    from pathlib import Path

__all__ = ["GraphTensor", "read_onnx_io"]

#: ONNX TensorProto element type name -> Triton wire datatype (the rest share their name).
_ONNX_TO_WIRE = {
    "FLOAT": "FP32",
    "DOUBLE": "FP64",
    "FLOAT16": "FP16",
    "BFLOAT16": "BF16",
    "STRING": "BYTES",
    **{n: n for n in ("BOOL", "INT8", "INT16", "INT32", "INT64")},
    **{n: n for n in ("UINT8", "UINT16", "UINT32", "UINT64")},
}


@dataclass(frozen=True)
class GraphTensor:
    """One graph input or output.

    ``shape`` uses -1 for every dimension not fixed to a positive size (``dim_param``, unset,
    or ``dim_value <= 0``), and is ``None`` when the graph does not give the rank at all.
    ``config_type`` is the config.pbtxt datatype (``TYPE_FP32``), or ``None`` when Triton has
    no datatype for the ONNX element type (complex, float8, int4, ...); ``onnx_type`` keeps the
    ONNX name for error messages.
    """

    name: str
    config_type: str | None
    shape: tuple[int, ...] | None
    onnx_type: str = ""

    def batchable(self) -> bool:
        """Whether the first axis is variable, so a batch dimension can sit there."""
        return bool(self.shape) and self.shape[0] == -1


def read_onnx_io(path: Path) -> tuple[list[GraphTensor], list[GraphTensor]]:
    """(inputs, outputs) of the ONNX graph at ``path``; ModelConfigError naming the file."""
    if path.is_dir():
        msg = (
            f"{path}: is a directory; auto-complete reads single-file ONNX models only, "
            "write inputs and outputs in config.pbtxt"
        )
        raise ModelConfigError(msg)
    try:
        model = onnx.load(path, load_external_data=False)
    except (OSError, DecodeError, ValueError) as err:
        msg = f"{path}: cannot read the ONNX model for auto-complete: {err}"
        raise ModelConfigError(msg) from err
    graph = model.graph
    initializers = {t.name for t in graph.initializer}
    initializers.update(t.values.name for t in graph.sparse_initializer)
    inputs = [_tensor(v, path) for v in graph.input if v.name not in initializers]
    outputs = [_tensor(v, path) for v in graph.output]
    return inputs, outputs


def _tensor(value: onnx.ValueInfoProto, path: Path) -> GraphTensor:
    kind = value.type.WhichOneof("value")
    if kind != "tensor_type":
        msg = (
            f"{path}: graph tensor '{value.name}' has ONNX type '{kind}'; only tensors can be "
            "served"
        )
        raise ModelConfigError(msg)
    tensor_type = value.type.tensor_type
    onnx_type = onnx.TensorProto.DataType.Name(tensor_type.elem_type)
    wire = _ONNX_TO_WIRE.get(onnx_type)
    shape = None
    if tensor_type.HasField("shape"):
        shape = tuple(
            d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else -1
            for d in tensor_type.shape.dim
        )
    return GraphTensor(
        name=value.name,
        config_type=wire_to_config(wire) if wire else None,
        shape=shape,
        onnx_type=onnx_type,
    )
