"""``pysonic demo``: serve the bundled model repository locally and prove a real round trip.

It starts a pysonic server in-process (free ports, 127.0.0.1), talks to it with NVIDIA's own
``tritonclient.grpc`` exactly as any Triton client would, and compares every served result with
the same ONNX model run directly in onnxruntime: outputs must agree, and the table shows latency
and throughput served vs direct. (The event-workflow demo replaces this once it lands.)

Example::

    rows = run_demo(Path("model_repository"))
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
import tritonclient.grpc as grpcclient

from pysonic.protocol.datatypes import to_numpy_dtype
from pysonic.repository import ModelRepository, model_file_path
from pysonic.server import EmbeddedServer, ServerOptions

__all__ = ["DemoRow", "run_demo"]


@dataclass
class DemoRow:
    model: str
    batch: int
    served_ms: float
    direct_ms: float
    max_abs_diff: float
    ok: bool

    @property
    def served_over_direct(self) -> float:
        return self.direct_ms / self.served_ms if self.served_ms else 0.0


def _random_inputs(
    meta: grpcclient.service_pb2.ModelMetadataResponse, batch: int, rng: np.random.Generator
) -> dict[str, np.ndarray]:
    arrays = {}
    for t in meta.inputs:
        shape = [
            batch if i == 0 and d == -1 else (d if d > 0 else 1) for i, d in enumerate(t.shape)
        ]
        dtype = to_numpy_dtype(t.datatype)
        if dtype.kind == "f":
            arrays[t.name] = rng.standard_normal(shape).astype(dtype)
        elif dtype.kind == "b":
            arrays[t.name] = rng.integers(0, 2, shape).astype(bool)
        else:
            arrays[t.name] = rng.integers(0, 10, shape).astype(dtype)
    return arrays


def _time(fn: object, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()  # type: ignore[operator]
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000


def run_demo(
    repository: Path,
    batch_sizes: tuple[int, ...] = (1, 16),
    repeats: int = 30,
    tolerance: float = 1e-4,
) -> list[DemoRow]:
    """Serve ``repository``, run each model served and direct, return one row per model x batch."""
    options = ServerOptions(
        model_repository=repository, host="127.0.0.1", grpc_port=0, metrics_port=0
    )
    rows: list[DemoRow] = []
    rng = np.random.default_rng(2024)
    repo = ModelRepository(repository)
    with EmbeddedServer(options) as server:
        client = grpcclient.InferenceServerClient(server.grpc_url)
        for entry in client.get_model_repository_index().models:
            if entry.state != "READY":
                continue
            meta = client.get_model_metadata(entry.name)
            definition = repo.load(entry.name)
            version = max(definition.versions)
            path = model_file_path(definition.config, definition.versions[version])
            session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            out_names = [o.name for o in meta.outputs]
            max_batch = definition.config.max_batch_size
            for batch in batch_sizes if max_batch > 0 else (1,):
                if max_batch and batch > max_batch:
                    continue
                arrays = _random_inputs(meta, batch, rng)
                inputs = []
                for t in meta.inputs:
                    inp = grpcclient.InferInput(t.name, list(arrays[t.name].shape), t.datatype)
                    inp.set_data_from_numpy(arrays[t.name])
                    inputs.append(inp)
                result = client.infer(entry.name, inputs)
                direct = session.run(out_names, arrays)
                diff = max(
                    float(
                        np.max(np.abs(result.as_numpy(n).astype(np.float64) - d.astype(np.float64)))
                    )
                    for n, d in zip(out_names, direct, strict=True)
                )
                served_ms = _time(lambda: client.infer(entry.name, inputs), repeats)  # noqa: B023
                direct_ms = _time(lambda: session.run(out_names, arrays), repeats)  # noqa: B023
                rows.append(
                    DemoRow(entry.name, batch, served_ms, direct_ms, diff, diff <= tolerance)
                )
        client.close()
    return rows
