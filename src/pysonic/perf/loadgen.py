"""Closed-loop load over Triton's gRPC protocol: perf_analyzer's concurrency mode.

``concurrency`` workers each keep exactly one request in flight (send, wait for the answer, send
the next), cycling through a pool of prepared input sets, so the server sees a constant number of
outstanding requests. Requests are built once (``tritonclient``'s ``InferInput`` holds the
serialized bytes), so the generator spends its time on the RPCs, not on numpy. It runs on uvloop
when that is installed (``pysonic._loop``). When one process cannot keep up (a trivial model on a
fast server), the workers are split over several processes that start their timed window
together (a barrier after warm-up) and report their latencies back.

Any Triton-protocol server is a target: pysonic, NVIDIA Triton, PyTriton, MLServer.

Example::

    target = LoadTarget("127.0.0.1:8001", "particlenet_lite", [inputs])
    window = measure(target, concurrency=4, seconds=5.0)
    print(window.throughput, window.percentile(99))
"""

from __future__ import annotations

import asyncio
import multiprocessing
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pysonic._loop import run
from pysonic.protocol.datatypes import from_numpy_dtype

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


def _prepared(target: LoadTarget) -> list[tuple[list[Any], list[Any]]]:
    import tritonclient.grpc.aio as grpcclient

    sets = []
    for arrays in target.inputs:
        inputs = []
        for name, arr in arrays.items():
            arr = np.ascontiguousarray(arr)
            i = grpcclient.InferInput(name, list(arr.shape), from_numpy_dtype(arr.dtype))
            i.set_data_from_numpy(arr)
            inputs.append(i)
        outputs = [grpcclient.InferRequestedOutput(o) for o in target.outputs]
        sets.append((inputs, outputs))
    return sets


async def closed_loop(
    target: LoadTarget,
    concurrency: int,
    seconds: float,
    *,
    warmup: float = 0.5,
    barrier: Any = None,
) -> LoadWindow:
    """``concurrency`` workers in one process; a warm-up, then the timed window."""
    import tritonclient.grpc.aio as grpcclient
    from tritonclient.utils import InferenceServerException

    sets = _prepared(target)
    latencies: list[int] = []
    errors: list[str] = []
    state = {"stop": 0.0, "timed": False}

    async with grpcclient.InferenceServerClient(target.url) as client:

        async def worker(k: int) -> None:
            i = k
            infer, version, now = client.infer, target.version, time.perf_counter_ns
            while time.perf_counter() < state["stop"]:
                inputs, outputs = sets[i % len(sets)]
                i += 1
                start = now()
                try:
                    await infer(target.model, inputs, model_version=version, outputs=outputs)
                except InferenceServerException as err:  # counted; the load goes on
                    if state["timed"]:
                        errors.append(str(err))
                    continue
                if state["timed"]:
                    latencies.append(now() - start)

        state["stop"] = time.perf_counter() + warmup
        await asyncio.gather(*(worker(k) for k in range(concurrency)))
        if barrier is not None:
            await asyncio.get_running_loop().run_in_executor(None, barrier.wait)
        state["timed"] = True
        begin = time.perf_counter()
        state["stop"] = begin + seconds
        await asyncio.gather(*(worker(k) for k in range(concurrency)))
        elapsed = time.perf_counter() - begin
    return LoadWindow(
        concurrency=concurrency,
        seconds=elapsed,
        latencies_us=np.asarray(latencies, dtype=np.float64) / 1000.0,
        errors=len(errors),
        error_sample=errors[0] if errors else "",
        batch=target.batch,
    )


def _worker_main(
    target: LoadTarget, concurrency: int, seconds: float, warmup: float, barrier: Any, out: Any
) -> None:
    try:
        window = run(closed_loop(target, concurrency, seconds, warmup=warmup, barrier=barrier))
        out.put(("ok", window))
    except Exception as err:  # noqa: BLE001 - reported to the parent, which raises it
        barrier.abort()
        out.put(("error", f"{type(err).__name__}: {err}"))


def _collect(out: Any, procs: list[Any], deadline: float) -> list[tuple[str, Any]]:
    """Each process's result; a process that dies without one fails the window at once."""
    import queue

    results: list[tuple[str, Any]] = []
    while len(results) < len(procs):
        try:
            results.append(out.get(timeout=0.2))
        except queue.Empty:
            dead = [p for p in procs if p.exitcode not in (None, 0)]
            if dead or time.monotonic() > deadline:
                why = f"exit code {dead[0].exitcode}" if dead else "no result before the deadline"
                return [*results, ("error", why)]
    return results


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
    if processes == 1:
        return run(closed_loop(target, concurrency, seconds, warmup=warmup))
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(processes)
    out = ctx.Queue()
    shares = [concurrency // processes + (k < concurrency % processes) for k in range(processes)]
    procs = [
        ctx.Process(target=_worker_main, args=(target, n, seconds, warmup, barrier, out))
        for n in shares
    ]
    for p in procs:
        p.start()
    try:
        results = _collect(out, procs, deadline=time.monotonic() + seconds + warmup + 120)
    finally:
        for p in procs:
            p.join(10)
            if p.is_alive():
                p.kill()
    failed = [r[1] for r in results if r[0] != "ok"]
    if failed:
        msg = f"load generator process failed: {failed[0]}"
        raise RuntimeError(msg)
    windows: list[LoadWindow] = [r[1] for r in results]
    return LoadWindow(
        concurrency=concurrency,
        seconds=max(w.seconds for w in windows),
        latencies_us=np.concatenate([w.latencies_us for w in windows]),
        errors=sum(w.errors for w in windows),
        error_sample=next((w.error_sample for w in windows if w.error_sample), ""),
        batch=target.batch,
        processes=processes,
    )
