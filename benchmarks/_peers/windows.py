"""One timed window of each kind, reported as the same small dict.

* served: ``pysonic.perf.loadgen.measure`` (closed loop, grpc.aio + pysonic's codec) against a URL;
* direct: ``serve_vs_direct.direct_throughput`` (one in-process ``InferenceSession`` with
  ``intra_op_num_threads`` = all cores, the timed ``run`` call only), on inputs from
  ``pysonic.perf.direct``'s factory (valid masks and four-vectors for the HEP models).

Both return ``{"throughput": requests (calls) / s, "items_per_s", "p50_ms", "p99_ms", ...}``.

Example::

    work = Workload(Path("model_repository"), "particlenet_lite")
    direct_window(work, batch=16, seconds=1.0)["items_per_s"]
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from pysonic.perf.direct import _input_factory, _model_file, _session
from pysonic.perf.loadgen import LoadTarget, measure
from pysonic.protocol.datatypes import from_numpy_dtype
from serve_vs_direct import direct_throughput

__all__ = ["IDENTITY_WIDTH", "Workload", "check_outputs", "direct_window", "served_window"]

#: identity requests carry [batch, 16] FP32, as benchmarks/client.py sends
IDENTITY_WIDTH = 16
_POOL = 8  # distinct input sets cycled by the load generator


class Workload:
    """A model's ONNX file and its input factory (``make(batch, seed) -> feeds``)."""

    def __init__(self, repository: Path, model: str) -> None:
        self.model = model
        _, self.file = _model_file(repository / model)

    @cached_property
    def _make(self) -> Any:
        return _input_factory(self.model, _session(self.file, "cpu", None))

    def inputs(self, batch: int, seed: int) -> dict[str, np.ndarray]:
        if self.model == "identity_fp32":  # ORT's generic factory would make [batch, batch]
            rng = np.random.default_rng(seed)
            return {"INPUT0": rng.standard_normal((batch, IDENTITY_WIDTH)).astype(np.float32)}
        return self._make(batch, seed)


def direct_window(work: Workload, batch: int, seconds: float) -> dict[str, Any]:
    out = direct_throughput(work.file, work.inputs(batch, 0), seconds)
    return {
        "kind": "direct",
        "batch": batch,
        "seconds": seconds,
        "requests": out["calls"],
        "throughput": out["jets_per_s"] / batch,
        "items_per_s": out["jets_per_s"],
        "p50_ms": out["p50_ms"],
        "p99_ms": out["p99_ms"],
        "errors": 0,
        "error_sample": "",
    }


def served_window(
    url: str, work: Workload, batch: int, concurrency: int, seconds: float, warmup: float
) -> dict[str, Any]:
    target = LoadTarget(url, work.model, [work.inputs(batch, seed) for seed in range(_POOL)])
    window = measure(target, concurrency, seconds, warmup=warmup)
    return {"kind": "served", **window.summary()}


def check_outputs(url: str, work: Workload, batch: int = 3) -> str:
    """ "" when the server answers ``batch`` rows as in-process onnxruntime does, else why not."""
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    feeds = work.inputs(batch, 123)
    session = _session(work.file, "cpu", 1)
    names = [o.name for o in session.get_outputs()]
    expected = dict(zip(names, session.run(names, feeds), strict=True))
    inputs = []
    for name, arr in feeds.items():
        tensor = grpcclient.InferInput(name, list(arr.shape), from_numpy_dtype(arr.dtype))
        tensor.set_data_from_numpy(arr)
        inputs.append(tensor)
    client = grpcclient.InferenceServerClient(url)
    try:
        result = client.infer(work.model, inputs)
    except InferenceServerException as err:
        return f"request failed: {err}"
    finally:
        client.close()
    for name, want in expected.items():
        got = result.as_numpy(name)
        if got is None or got.shape != want.shape:
            shape = None if got is None else got.shape
            return f"output {name}: shape {shape}, expected {want.shape}"
        if not np.allclose(got, want, rtol=1e-4, atol=1e-5):
            return f"output {name} differs from onnxruntime by up to {np.abs(got - want).max():.3g}"
    return ""
