"""What the load generator sends: tensors sized from the model's config, perf_analyzer's rules.

perf_analyzer's input options, with the same meaning:

* ``-b N`` sets the first (batch) dimension when the model batches (``max_batch_size > 0``);
  a model without batching accepts only ``-b 1`` and gets no batch dimension;
* ``--shape NAME:d1,d2`` gives the dimensions (batch excluded) of an input whose config has
  variable (``-1``) dimensions; fixed dimensions must agree with the config;
* ``--input-data zero|random|FILE``: ``zero`` fills zeros; ``random`` draws one input set and
  reuses it for every request (as perf_analyzer does); FILE is perf_analyzer's JSON data format:
  ``{"data": [{NAME: [flat values] | {"b64": ...} | {"content": ..., "shape": [...]}}, ...]}``,
  one entry per batch-1 step; a batch-N request stacks N consecutive steps (wrapping around).

For pysonic's shipped HEP models (name and inputs match :mod:`pysonic.models.specs`), ``random``
draws jet-like values (masks, in-range categories), so embeddings and gathers stay valid.

Example::

    io = ModelIO.from_config(config_dict)
    sets = make_input_sets(io, batch=4, shapes={"INPUT0": (16,)}, data="random")
"""

from __future__ import annotations

import base64
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pysonic.protocol.datatypes import BYTES, config_to_wire, to_numpy_dtype

__all__ = ["ModelIO", "TensorInfo", "make_input_sets", "parse_shape"]


@dataclass(frozen=True)
class TensorInfo:
    """One input or output of the model config: wire datatype and dims without the batch axis."""

    name: str
    datatype: str
    dims: tuple[int, ...]


@dataclass(frozen=True)
class ModelIO:
    """The parts of a model's config the load generator needs."""

    name: str
    max_batch_size: int
    inputs: tuple[TensorInfo, ...]
    outputs: tuple[TensorInfo, ...]

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> ModelIO:
        """From a model config as JSON (gRPC ``as_json`` or HTTP; int64 may come as strings)."""

        def tensors(key: str) -> tuple[TensorInfo, ...]:
            return tuple(
                TensorInfo(
                    t["name"],
                    config_to_wire(t.get("data_type", "TYPE_FP32")),
                    tuple(int(d) for d in t.get("dims", [])),
                )
                for t in config.get(key, [])
            )

        return cls(
            name=str(config.get("name", "")),
            max_batch_size=int(config.get("max_batch_size", 0)),
            inputs=tensors("input"),
            outputs=tensors("output"),
        )


def parse_shape(text: str) -> tuple[str, tuple[int, ...]]:
    """``"NAME:1,2,3"`` -> ``("NAME", (1, 2, 3))`` (perf_analyzer's ``--shape``)."""
    name, sep, dims = text.rpartition(":")
    try:
        shape = tuple(int(d) for d in dims.split(",") if d.strip())
    except ValueError:
        shape = ()
    if not sep or not name or not shape or min(shape) < 0:
        msg = f"--shape must be NAME:d1,d2,... with non-negative sizes, got {text!r}"
        raise ValueError(msg)
    return name, shape


def _dims(t: TensorInfo, shapes: Mapping[str, Sequence[int]]) -> tuple[int, ...]:
    """The per-item shape of input ``t``: config dims with ``--shape`` filling variable ones."""
    given = shapes.get(t.name)
    if given is None:
        if any(d < 0 for d in t.dims):
            msg = (
                f"input '{t.name}' has variable dims {list(t.dims)}: give its shape with "
                f"--shape {t.name}:" + ",".join("N" if d < 0 else str(d) for d in t.dims)
            )
            raise ValueError(msg)
        return t.dims
    given = tuple(int(d) for d in given)
    fits = len(given) == len(t.dims) and all(
        c < 0 or c == g for c, g in zip(t.dims, given, strict=True)
    )
    if not fits:
        msg = f"--shape {t.name}:{','.join(map(str, given))} does not fit its dims {list(t.dims)}"
        raise ValueError(msg)
    return given


def _batch_shape(io: ModelIO, batch: int, dims: tuple[int, ...]) -> tuple[int, ...]:
    return (batch, *dims) if io.max_batch_size > 0 else dims


def _random(t: TensorInfo, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    if t.datatype == BYTES:
        letters = np.frombuffer(b"abcdefghijklmnopqrstuvwxyz", np.uint8)
        items = [bytes(rng.choice(letters, 16)) for _ in range(math.prod(shape))]
        return np.array(items, dtype=object).reshape(shape)
    dtype = to_numpy_dtype(t.datatype)
    if dtype == np.bool_:
        return rng.integers(0, 2, size=shape).astype(np.bool_)
    if np.issubdtype(dtype, np.integer):
        return rng.integers(0, 2, size=shape).astype(dtype)  # small: valid indices, no overflow
    return rng.random(size=shape, dtype=np.float32).astype(dtype)


def _spec_inputs(io: ModelIO, batch: int) -> dict[str, np.ndarray] | None:
    """Jet-like inputs for a shipped HEP model whose config matches its spec, else None."""
    from pysonic.models.specs import MODELS

    spec = MODELS.get(io.name)
    if spec is None or io.max_batch_size <= 0:
        return None
    ours = [(t.name, t.dims, t.datatype) for t in io.inputs]
    if ours != [(t.name, tuple(t.shape), t.dtype) for t in spec.inputs]:
        return None
    from pysonic.models.export import example_inputs

    return example_inputs(spec, batch, seed=0)


def _from_json_value(t: TensorInfo, value: Any, shapes: Mapping[str, Sequence[int]]) -> np.ndarray:
    """One batch-1 step of one input; its own ``"shape"`` beats ``--shape`` and the config."""
    if isinstance(value, dict) and "content" in value:
        shape = tuple(int(d) for d in value["shape"]) if "shape" in value else _dims(t, shapes)
        value = value["content"]
    else:
        shape = _dims(t, shapes)
    if t.datatype == BYTES:
        if isinstance(value, dict):
            msg = f"input '{t.name}': base64 BYTES data is not supported; give a list of strings"
            raise ValueError(msg)
        return np.array([str(v).encode() for v in value], dtype=object).reshape(shape)
    dtype = to_numpy_dtype(t.datatype)
    if isinstance(value, dict) and "b64" in value:
        arr = np.frombuffer(base64.b64decode(value["b64"]), dtype=dtype.newbyteorder("<"))
    else:
        arr = np.asarray(value, dtype=dtype)
    if arr.size != math.prod(shape):
        msg = f"input '{t.name}': {arr.size} values in the data file, shape {list(shape)} needs "
        msg += str(math.prod(shape))
        raise ValueError(msg)
    return arr.astype(dtype, copy=False).reshape(shape)


def _json_sets(
    io: ModelIO, batch: int, shapes: Mapping[str, Sequence[int]], path: Path
) -> list[dict[str, np.ndarray]]:
    doc = json.loads(Path(path).read_text())
    steps = doc.get("data") if isinstance(doc, dict) else None
    if not steps or not isinstance(steps, list):
        msg = f"{path}: expected perf_analyzer's format {{'data': [{{INPUT: values}}, ...]}}"
        raise ValueError(msg)
    if isinstance(steps[0], list):  # sequence streams: use the first stream's steps
        steps = steps[0]
    items: list[dict[str, np.ndarray]] = []
    for k, step in enumerate(steps):
        missing = [t.name for t in io.inputs if t.name not in step]
        if missing:
            msg = f"{path}: step {k} has no data for input(s) {missing}"
            raise ValueError(msg)
        items.append({t.name: _from_json_value(t, step[t.name], shapes) for t in io.inputs})
    if io.max_batch_size <= 0:
        return items
    n_sets = max(1, len(items) // batch)
    sets = []
    for j in range(n_sets):
        rows = [items[(j * batch + r) % len(items)] for r in range(batch)]
        sets.append({t.name: np.stack([row[t.name] for row in rows]) for t in io.inputs})
    return sets


def make_input_sets(
    io: ModelIO,
    *,
    batch: int = 1,
    shapes: Mapping[str, Sequence[int]] | None = None,
    data: str = "random",
    seed: int = 0,
) -> list[dict[str, np.ndarray]]:
    """The input sets requests cycle through (see the module docstring for the rules)."""
    shapes = dict(shapes or {})
    unknown = sorted(set(shapes) - {t.name for t in io.inputs})
    if unknown:
        msg = f"--shape for unknown input(s) {unknown}; inputs: {[t.name for t in io.inputs]}"
        raise ValueError(msg)
    if batch < 1:
        msg = f"batch size must be >= 1, got {batch}"
        raise ValueError(msg)
    if io.max_batch_size <= 0 and batch != 1:
        msg = f"model '{io.name}' does not batch (max_batch_size 0): only -b 1 is valid"
        raise ValueError(msg)
    if 0 < io.max_batch_size < batch:
        msg = f"-b {batch} exceeds the model's max_batch_size {io.max_batch_size}"
        raise ValueError(msg)
    if data not in ("zero", "random"):
        return _json_sets(io, batch, shapes, Path(data))
    if data == "random" and not shapes:
        spec = _spec_inputs(io, batch)
        if spec is not None:
            return [spec]
    rng = np.random.default_rng(seed)
    out: dict[str, np.ndarray] = {}
    for t in io.inputs:
        shape = _batch_shape(io, batch, _dims(t, shapes))
        if data == "zero":
            if t.datatype == BYTES:
                out[t.name] = np.full(shape, b"0", dtype=object)
            else:
                out[t.name] = np.zeros(shape, dtype=to_numpy_dtype(t.datatype))
        else:
            out[t.name] = _random(t, shape, rng)
    return [out]
