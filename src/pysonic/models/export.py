"""Export the HEP models to ONNX with a Triton config.pbtxt, deterministically.

Fixed seed, ``torch.onnx.export(..., dynamo=False)`` (the TorchScript exporter; the dynamo one needs
onnxscript), opset 17, dynamic batch axis ``N``, ``onnx.checker`` passes, and the file is
re-serialized with protobuf's deterministic mode so two exports on one machine are byte-identical
(across CPU models, BatchNorm folding may round weights differently by an ULP). Trained
weights, where a model has them, ship as ``pysonic/models/weights/<name>.npz`` (numpy, no torch
needed to read them) and are loaded before export.

Example::

    export_model("particlenet_lite", Path("model_repository"))
"""

from __future__ import annotations

import importlib
import io
import warnings
from pathlib import Path

import numpy as np
import onnx

from pysonic.models._extras import require_torch
from pysonic.models.specs import MODELS, ModelSpec

__all__ = [
    "BUILDERS",
    "EXPORTABLE",
    "WEIGHTS_DIR",
    "build",
    "config_text",
    "example_inputs",
    "export_model",
    "load_weights",
    "save_weights",
]

OPSET = 17
SEED = 20231025
EXPORTABLE: dict[str, ModelSpec] = dict(MODELS)
#: Lazily imported builders ("module:function"), so torch is imported only on export.
BUILDERS: dict[str, str] = {
    "particlenet": "pysonic.models.particlenet:build_particlenet",
    "particlenet_lite": "pysonic.models.particlenet:build_particlenet_lite",
    "part": "pysonic.models.part:build_part",
    "deepmet": "pysonic.models.deepmet:build_deepmet",
}
WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"


def _four_vectors(rng: np.random.Generator, batch: int, length: int) -> np.ndarray:
    """Physical (px, py, pz, E) [batch, 4, length]: E >= |p|, a pion-like mass."""
    p = rng.standard_normal((batch, 3, length)) * 20.0
    e = np.sqrt((p**2).sum(axis=1, keepdims=True) + 0.14**2)
    return np.concatenate([p, e], axis=1).astype(np.float32)


def example_inputs(spec: ModelSpec, batch: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Random jet/event-like inputs: a random number of real entries, zero padding, masks.

    Inputs sharing a name prefix (``pf_``, ``sv_``) share the count of real entries; the padded
    axis is the last one for jets ([C, P]) and the first one for per-event inputs ([P, C]).
    Four-vectors (``*_vectors``) are physical; categorical inputs draw from ``1..vocab-1``.
    """
    rng = np.random.default_rng(seed)
    out: dict[str, np.ndarray] = {}
    counts: dict[str, np.ndarray] = {}
    for t in spec.inputs:
        prefix = t.name.split("_")[0]
        axis = 0 if spec.points_first else len(t.shape) - 1  # the padded axis
        length = t.shape[axis]
        if prefix not in counts:
            counts[prefix] = rng.integers(1, length + 1, size=batch)
        mask = np.arange(length)[None, :] < counts[prefix][:, None]  # [batch, length]
        mask = np.expand_dims(mask, 2 if axis == 0 else 1)
        if t.name.endswith("mask"):
            value = mask.astype(np.float32)
        elif t.vocab is not None:
            value = rng.integers(1, t.vocab, size=(batch, *t.shape)).astype(np.int32)
        elif t.name.endswith("vectors"):
            value = _four_vectors(rng, batch, length)
        else:
            value = rng.standard_normal((batch, *t.shape)).astype(np.float32)
        out[t.name] = (value * mask).astype(value.dtype)
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
        f"instance_group [{{ count: {spec.instances} kind: KIND_CPU }}]\n"
        'parameters { key: "intra_op_thread_count" '
        f'value {{ string_value: "{spec.intra_op_threads}" }} }}\n'
    )


def load_weights(model: object, path: Path) -> None:
    """Load a ``.npz`` state dict (as written by :func:`save_weights`) into ``model``."""
    torch = require_torch()
    with np.load(path) as data:
        state = {k: torch.from_numpy(data[k].copy()) for k in data.files}
    model.load_state_dict(state)  # type: ignore[attr-defined]


def save_weights(model: object, path: Path) -> Path:
    """Write ``model``'s state dict as ``.npz`` (fp32 / int64 buffers, deterministic order)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = model.state_dict()  # type: ignore[attr-defined]
    np.savez(path, **{k: v.detach().cpu().numpy() for k, v in state.items()})
    return path


def build(name: str, *, trained: bool = True) -> object:
    """The torch module for ``name``, seeded, in eval mode, with shipped weights if any."""
    torch = require_torch()
    module, func = BUILDERS[name].split(":")
    torch.manual_seed(SEED)
    model = getattr(importlib.import_module(module), func)()
    weights = WEIGHTS_DIR / f"{name}.npz"
    if trained and weights.exists():
        load_weights(model, weights)
    return model.eval()


def export_model(name: str, out: Path, *, model: object | None = None) -> Path:
    """Write ``out/<name>/1/model.onnx`` and ``out/<name>/config.pbtxt``; return the model path."""
    torch = require_torch()
    spec = EXPORTABLE[name]
    model = build(name) if model is None else model
    model.eval()  # type: ignore[attr-defined]
    feeds = example_inputs(spec, 2)
    args = tuple(torch.from_numpy(feeds[t.name]) for t in spec.inputs)
    names_in = [t.name for t in spec.inputs]
    names_out = [t.name for t in spec.outputs]
    buffer = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        # the TorchScript exporter is deprecated upstream; the dynamo one needs onnxscript
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", UserWarning)
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
