"""Export the HEP models to ONNX with a Triton config.pbtxt, deterministically.

Fixed seed, ``torch.onnx.export(..., dynamo=False)`` (the TorchScript exporter; the dynamo one needs
onnxscript), opset 17, dynamic batch axis ``N``, ``onnx.checker`` passes, and the file is
re-serialized with protobuf's deterministic mode so two exports are byte-identical.

Example::

    export_model("particlenet_lite", Path("model_repository"))
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
import onnx

from pysonic.models._extras import require_torch
from pysonic.models.specs import PARTICLENET, PARTICLENET_LITE, ModelSpec

__all__ = ["EXPORTABLE", "config_text", "example_inputs", "export_model"]

OPSET = 17
SEED = 20231025
EXPORTABLE: dict[str, ModelSpec] = {
    "particlenet": PARTICLENET,
    "particlenet_lite": PARTICLENET_LITE,
}


def example_inputs(spec: ModelSpec, batch: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Random jet-like inputs: a random number of real particles/SVs, zero padding, masks."""
    rng = np.random.default_rng(seed)
    out: dict[str, np.ndarray] = {}
    counts: dict[str, np.ndarray] = {}
    for t in spec.inputs:
        prefix = t.name.split("_")[0]
        length = t.shape[-1]
        if prefix not in counts:
            counts[prefix] = rng.integers(1, length + 1, size=batch)
        mask = (np.arange(length)[None, :] < counts[prefix][:, None]).astype(np.float32)
        if t.name.endswith("mask"):
            out[t.name] = mask[:, None, :]
        else:
            out[t.name] = rng.standard_normal((batch, *t.shape)).astype(np.float32) * mask[:, None]
    return out


def config_text(spec: ModelSpec) -> str:
    def tensor(t: object) -> str:
        return f'  {{ name: "{t.name}" data_type: TYPE_{t.dtype} dims: {list(t.shape)} }}'  # type: ignore[attr-defined]

    return (
        f'name: "{spec.name}"\nbackend: "onnxruntime"\nmax_batch_size: {spec.max_batch_size}\n'
        "input [\n" + ",\n".join(tensor(t) for t in spec.inputs) + "\n]\n"
        "output [\n" + ",\n".join(tensor(t) for t in spec.outputs) + "\n]\n"
        "dynamic_batching {\n"
        f"  preferred_batch_size: {list(spec.preferred_batch_sizes)}\n"
        f"  max_queue_delay_microseconds: {spec.max_queue_delay_us}\n}}\n"
        "instance_group [{ count: 1 kind: KIND_CPU }]\n"
    )


def build(name: str) -> object:
    """The torch module for ``name``, seeded, in eval mode."""
    torch = require_torch()
    from pysonic.models.particlenet import build_particlenet

    torch.manual_seed(SEED)
    model = build_particlenet(lite=name == "particlenet_lite")
    return model.eval()


def export_model(name: str, out: Path, state_dict_path: Path | None = None) -> Path:
    """Write ``out/<name>/1/model.onnx`` and ``out/<name>/config.pbtxt``; return the model path."""
    torch = require_torch()
    spec = EXPORTABLE[name]
    model = build(name)
    if state_dict_path is not None:
        model.load_state_dict(torch.load(state_dict_path, map_location="cpu"))  # type: ignore[attr-defined]
    feeds = example_inputs(spec, 2)
    args = tuple(torch.from_numpy(feeds[t.name]) for t in spec.inputs)
    names_in = [t.name for t in spec.inputs]
    names_out = [t.name for t in spec.outputs]
    buffer = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        # the TorchScript exporter is deprecated upstream; the dynamo one needs onnxscript
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            model,
            args,
            buffer,
            input_names=names_in,
            output_names=names_out,
            dynamic_axes={n: {0: "N"} for n in names_in + names_out},
            opset_version=OPSET,
            dynamo=False,
        )
    proto = onnx.load_from_string(buffer.getvalue())
    proto.producer_version = ""  # keep the bytes independent of the torch build
    onnx.checker.check_model(proto)
    path = Path(out) / name / "1" / "model.onnx"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(proto.SerializeToString(deterministic=True))
    (Path(out) / name / "config.pbtxt").write_text(config_text(spec))
    return path
