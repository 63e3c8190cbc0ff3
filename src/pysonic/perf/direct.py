"""Direct inference benchmark, seed 001's method: time only the inference call.

For each batch size: ``trials`` calls, each on fresh random inputs (made before the clock starts,
so input generation is never timed), latency per call, throughput T = N / latency (median).
Inputs of the shipped HEP models come from their specs (valid masks, physical four-vectors,
categories in range); any other ONNX model gets standard-normal tensors of its declared shapes.
Execution providers: CPU by default; CUDA / ROCm when asked for and present (never a silent
fallback to the CPU).

Example::

    points = bench_direct(Path("model_repository/particlenet_lite"), [4, 16, 64], trials=20)
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "DEFAULT_BATCHES",
    "PROVIDERS",
    "DirectPoint",
    "available_providers",
    "bench_direct",
    "direct_table",
    "plot_direct",
    "write_direct_csv",
]

#: seed 001's batch sizes: powers of two from 4 to 2048
DEFAULT_BATCHES = tuple(2**k for k in range(2, 12))

PROVIDERS = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "rocm": "ROCMExecutionProvider",
}
_NUMPY = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int32)": np.int32,
    "tensor(int64)": np.int64,
    "tensor(bool)": np.bool_,
}


@dataclass
class DirectPoint:
    """One (model, batch size) measurement."""

    model: str
    provider: str
    batch: int
    trials: int
    latency_ms_p50: float
    latency_ms_p90: float
    latency_ms_min: float
    throughput: float  #: items (jets / events) per second, batch / median latency

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def available_providers() -> list[str]:
    """The keys of :data:`PROVIDERS` whose execution provider this onnxruntime has."""
    import onnxruntime as ort

    have = set(ort.get_available_providers())
    return [key for key, ep in PROVIDERS.items() if ep in have]


def _model_file(path: Path) -> tuple[str, Path]:
    """Accept a Triton model directory (its newest served version) or an .onnx file."""
    path = Path(path)
    if path.is_file():
        return path.parent.parent.name if path.parent.name.isdigit() else path.stem, path
    from pysonic.repository import ModelRepository

    return path.name, ModelRepository(path.parent).load(path.name).model_file()


def _input_factory(name: str, session: Any) -> Callable[[int, int], dict[str, np.ndarray]]:
    from pysonic.models.export import example_inputs
    from pysonic.models.specs import MODELS

    declared = [i.name for i in session.get_inputs()]
    spec = MODELS.get(name)
    if spec is not None and [t.name for t in spec.inputs] == declared:
        return lambda batch, seed: example_inputs(spec, batch, seed)

    def generic(batch: int, seed: int) -> dict[str, np.ndarray]:
        rng = np.random.default_rng(seed)
        out = {}
        for i in session.get_inputs():
            shape = [batch if not isinstance(d, int) or d < 0 else d for d in i.shape]
            dtype = _NUMPY.get(i.type, np.float32)
            if np.issubdtype(dtype, np.integer):
                out[i.name] = rng.integers(0, 2, size=shape).astype(dtype)
            else:
                out[i.name] = rng.standard_normal(shape).astype(dtype)
        return out

    return generic


def _session(model_file: Path, provider: str, threads: int | None) -> Any:
    import onnxruntime as ort

    ep = PROVIDERS[provider]
    if ep not in ort.get_available_providers():
        msg = (
            f"execution provider {ep} is not available here (have {ort.get_available_providers()})"
        )
        raise RuntimeError(msg)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads or len(os.sched_getaffinity(0))
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(model_file), opts, providers=[ep])


def bench_direct(
    model: Path,
    batch_sizes: Sequence[int],
    *,
    trials: int = 100,
    provider: str = "cpu",
    threads: int | None = None,
    max_seconds_per_point: float | None = None,
    warmup: int = 2,
    progress: Callable[[DirectPoint], None] | None = None,
) -> list[DirectPoint]:
    """Measure ``model`` at each batch size; see the module docstring for the method.

    ``max_seconds_per_point`` caps the timed calls of one batch size (at least 3 trials run);
    the number actually run is recorded in :attr:`DirectPoint.trials`.
    """
    name, model_file = _model_file(model)
    session = _session(model_file, provider, threads)
    make = _input_factory(name, session)
    points = []
    for batch in batch_sizes:
        for w in range(warmup):
            session.run(None, make(batch, 10_000 + w))
        latencies: list[float] = []
        spent = 0.0
        for trial in range(trials):
            feeds = make(batch, trial)
            start = time.perf_counter()
            session.run(None, feeds)
            latencies.append(time.perf_counter() - start)
            spent += latencies[-1]
            if max_seconds_per_point and spent > max_seconds_per_point and trial >= 2:
                break
        lat = np.asarray(latencies) * 1000.0
        p50 = float(np.percentile(lat, 50))
        point = DirectPoint(
            name,
            provider,
            batch,
            len(lat),
            p50,
            float(np.percentile(lat, 90)),
            float(lat.min()),
            batch / (p50 / 1000.0),
        )
        points.append(point)
        if progress is not None:
            progress(point)
    return points


def plot_direct(points: Sequence[DirectPoint], path: Path, title: str = "") -> Path:
    """Throughput vs batch size, one line per (model, provider); log-log; PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    keys = sorted({(p.model, p.provider) for p in points})
    for model, provider in keys:
        sel = sorted(
            (p for p in points if (p.model, p.provider) == (model, provider)), key=lambda p: p.batch
        )
        ax.plot(
            [p.batch for p in sel],
            [p.throughput for p in sel],
            marker="o",
            label=f"{model} ({provider})",
        )
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("batch size")
    ax.set_ylabel("throughput (items / s)")
    ax.set_title(title or "direct inference: T = N / latency")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


_CSV_FIELDS = (
    "model", "provider", "batch", "trials", "latency_ms_p50", "latency_ms_p90", "latency_ms_min",
    "throughput",
)  # fmt: skip


def write_direct_csv(points: Sequence[DirectPoint], path: Path) -> Path:
    """One row per (model, provider, batch): the :class:`DirectPoint` fields."""
    import csv

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=_CSV_FIELDS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(p.as_dict() for p in points)
    return path


def direct_table(points: Sequence[DirectPoint], title: str = "") -> Any:
    """A rich table of the points: latency, items/s and ms per item."""
    from rich.table import Table

    table = Table(title=title or "direct inference, T = N / median latency")
    for col in ("model", "provider", "batch", "trials", "p50 ms", "p90 ms", "items/s", "ms/item"):
        table.add_column(col, justify="right")
    for p in points:
        table.add_row(
            p.model,
            p.provider,
            str(p.batch),
            str(p.trials),
            f"{p.latency_ms_p50:.2f}",
            f"{p.latency_ms_p90:.2f}",
            f"{p.throughput:,.0f}",
            f"{1000 / p.throughput:.3f}",
        )
    return table
