"""One closed-loop window over Triton's gRPC protocol: the simple entry to the load engine.

``concurrency`` workers each keep exactly one request in flight (send, wait for the answer, send
the next), cycling through a pool of prepared input sets, so the server sees a constant number of
outstanding requests. This is :mod:`pysonic.perf._engine` (the engine behind ``pysonic perf``)
with one warm-up and one timed window, for benchmarks that want a single number per point; it
runs on uvloop when that is installed (``pysonic._loop``). When one process cannot keep up (a
trivial model on a fast server), the workers are split over several processes whose records are
cut to the same window on the host's monotonic clock.

Any Triton-protocol server is a target: pysonic, NVIDIA Triton, PyTriton, MLServer.

Example::

    target = LoadTarget("127.0.0.1:8001", "particlenet_lite", [inputs])
    window = measure(target, concurrency=4, seconds=5.0)
    print(window.throughput, window.percentile(99))
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pysonic.perf._engine import LoadEngine, LoadLevel, LoadRunner, Records
from pysonic.perf._inputs import TensorInfo
from pysonic.perf._senders import TargetSpec, make_sender

__all__ = ["LoadTarget", "LoadWindow", "closed_loop", "measure"]


@dataclass(frozen=True)
class LoadTarget:
    """Where to send requests and what: input sets are cycled, one per request."""

    url: str
    model: str
    inputs: Sequence[Mapping[str, np.ndarray]]
    version: str = ""
    outputs: tuple[str, ...] = ()

    @property
    def batch(self) -> int:
        first = next(iter(self.inputs[0].values()))
        return int(first.shape[0]) if first.ndim else 1


@dataclass
class LoadWindow:
    """One timed window: per-request latencies of the successful requests, and the errors."""

    concurrency: int
    seconds: float
    latencies_us: np.ndarray
    errors: int = 0
    error_sample: str = ""
    batch: int = 1
    processes: int = 1
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def requests(self) -> int:
        return len(self.latencies_us)

    @property
    def throughput(self) -> float:
        """Successful requests per second."""
        return self.requests / self.seconds if self.seconds > 0 else 0.0

    @property
    def items_per_s(self) -> float:
        """Rows (jets, events) per second: throughput times the batch size."""
        return self.throughput * self.batch

    def percentile(self, q: float) -> float:
        """Latency percentile in ms (NaN without requests)."""
        if not self.requests:
            return float("nan")
        return float(np.percentile(self.latencies_us, q)) / 1000.0

    def summary(self) -> dict[str, Any]:
        return {
            "concurrency": self.concurrency,
            "batch": self.batch,
            "processes": self.processes,
            "seconds": self.seconds,
            "requests": self.requests,
            "errors": self.errors,
            "error_sample": self.error_sample,
            "throughput": self.throughput,
            "items_per_s": self.items_per_s,
            "p50_ms": self.percentile(50),
            "p90_ms": self.percentile(90),
            "p95_ms": self.percentile(95),
            "p99_ms": self.percentile(99),
            **self.extra,
        }


def _spec(target: LoadTarget) -> TargetSpec:
    return TargetSpec(
        protocol="grpc",
        url=target.url,
        model=target.model,
        input_sets=tuple(dict(s) for s in target.inputs),
        version=target.version,
        outputs=tuple(TensorInfo(o, "FP32", ()) for o in target.outputs),
    )


def _window(records: Records, concurrency: int, seconds: float, batch: int) -> LoadWindow:
    return LoadWindow(
        concurrency=concurrency,
        seconds=seconds,
        latencies_us=records.latency_ns.astype(np.float64) / 1000.0,
        errors=len(records.error_end_ns),
        error_sample=records.error_samples[0] if records.error_samples else "",
        batch=batch,
    )


async def closed_loop(
    target: LoadTarget,
    concurrency: int,
    seconds: float,
    *,
    warmup: float = 0.5,
    barrier: Any = None,
) -> LoadWindow:
    """``concurrency`` workers on the running loop; a warm-up, then the timed window.

    ``barrier`` (a ``threading``/``multiprocessing`` barrier) is waited on after the warm-up,
    so callers running this in several places can start their windows together."""
    spec = _spec(target)
    engine = LoadEngine(make_sender(spec), n_sets=len(spec.input_sets), slots=concurrency)
    await engine.open()
    try:
        await engine.set_level(LoadLevel(concurrency=concurrency))
        await asyncio.sleep(warmup)
        if barrier is not None:
            await asyncio.get_running_loop().run_in_executor(None, barrier.wait)
        engine.take()
        begin = time.monotonic_ns()
        await asyncio.sleep(seconds)
        end = time.monotonic_ns()
        await engine.stop_load()
        records = engine.take().ended_between(begin, end)
    finally:
        await engine.close()
    return _window(records, concurrency, (end - begin) / 1e9, spec.batch)


def measure(
    target: LoadTarget,
    concurrency: int,
    seconds: float,
    *,
    warmup: float = 0.5,
    processes: int = 1,
) -> LoadWindow:
    """One window at ``concurrency``; with ``processes`` > 1 the workers are split across
    that many processes (spawned, so nothing of the caller's state is shared)."""
    processes = max(1, min(processes, concurrency))
    spec = _spec(target)
    with LoadRunner(spec, processes=processes, slots=concurrency) as runner:
        runner.set_level(LoadLevel(concurrency=concurrency))
        time.sleep(warmup)
        runner.take()
        begin = time.monotonic_ns()
        time.sleep(seconds)
        end = time.monotonic_ns()
        runner.set_level(None)
        records = runner.take().ended_between(begin, end)
    window = _window(records, concurrency, (end - begin) / 1e9, spec.batch)
    window.processes = processes
    return window
