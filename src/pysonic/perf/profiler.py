"""perf_analyzer's measurement procedure over pysonic's load engine.

For each load level (a concurrency or a request rate): after a short settle, measurement windows
of ``window_ms`` follow each other until the last three agree within ``stability`` percent in
throughput (inferences/s) and latency (the average, or the ``percentile`` when given), or
``max_trials`` windows have run; the level's result merges those last three windows. A window
holds the requests that ended in it; ModelStatistics read at each window boundary give the
server's share (queue, compute input / infer / output) of the same interval. The search stops
early once the latency passes ``latency_threshold_ms`` (perf_analyzer's ``-l``).

Example::

    options = PerfOptions(model="dense_tagger", url="127.0.0.1:8001",
                          levels=[LoadLevel(concurrency=c) for c in (1, 2, 4)])
    report = run_perf(options)
    for r in report.results:
        print(r.level.value, r.throughput, r.percentile_us(99))
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pysonic.perf._control import Connection, Control, ServerStats
from pysonic.perf._engine import LoadLevel, LoadRunner, Records
from pysonic.perf._inputs import ModelIO, make_input_sets
from pysonic.perf._senders import TargetSpec

__all__ = [
    "LevelResult",
    "PerfOptions",
    "PerfReport",
    "ProfileSettings",
    "WindowResult",
    "parse_range",
    "profile",
    "run_perf",
]

log = logging.getLogger("pysonic.perf")
PERCENTILES = (50, 90, 95, 99)
STABILITY_WINDOWS = 3  #: perf_analyzer's stability window


def parse_range(text: str, *, integer: bool) -> list[float]:
    """perf_analyzer's ``start:end:step`` (end and step optional; inclusive end)."""
    parts = text.split(":")
    if not 1 <= len(parts) <= 3 or not all(p.strip() for p in parts):
        msg = f"a range is start[:end[:step]], got {text!r}"
        raise ValueError(msg)
    conv = int if integer else float
    try:
        start = conv(parts[0])
        end = conv(parts[1]) if len(parts) > 1 else start
        step = conv(parts[2]) if len(parts) > 2 else conv(1)
    except ValueError:
        msg = f"a range is start[:end[:step]] of {'integers' if integer else 'numbers'}: {text!r}"
        raise ValueError(msg) from None
    if start <= 0 or step <= 0 or end < start:
        msg = f"range {text!r}: need 0 < start <= end and step > 0"
        raise ValueError(msg)
    values, v, k = [], start, 0
    while v <= end * (1 + 1e-9):
        values.append(v)
        k += 1
        v = start + k * step
    return values


@dataclass
class WindowResult:
    """One measurement window (or several merged): client records, server delta, generator CPU."""

    records: Records
    duration_ns: int
    server: ServerStats
    batch: int
    percentile: int | None = None
    generator_cpu: float = 0.0  #: the busiest load process's CPU time / wall time

    @property
    def requests(self) -> int:
        return self.records.count

    @property
    def errors(self) -> int:
        return len(self.records.error_end_ns)

    @property
    def delayed(self) -> int:
        return int(self.records.delayed.sum())

    @property
    def requests_per_s(self) -> float:
        return self.requests / (self.duration_ns / 1e9) if self.duration_ns > 0 else 0.0

    @property
    def throughput(self) -> float:
        """Inferences/s: successful requests times the batch size per second (perf_analyzer)."""
        return self.requests_per_s * self.batch

    def _sorted_latency(self) -> np.ndarray:
        if not hasattr(self, "_lat"):
            self._lat = np.sort(self.records.latency_ns)
        return self._lat

    def percentile_us(self, q: int) -> float:
        """perf_analyzer's percentile: the sorted latency at round(q/100 * (n - 1))."""
        lat = self._sorted_latency()
        if not len(lat):
            return float("nan")
        return float(lat[int(q / 100.0 * (len(lat) - 1) + 0.5)]) / 1000.0

    @property
    def avg_latency_us(self) -> float:
        lat = self.records.latency_ns
        return float(lat.mean()) / 1000.0 if len(lat) else float("nan")

    @property
    def stabilizing_latency_us(self) -> float:
        """What stability is judged on: the average, or ``--percentile``'s latency."""
        if self.percentile is None:
            return self.avg_latency_us
        return self.percentile_us(self.percentile)

    @property
    def client_send_us(self) -> float:
        return float(self.records.send_ns.mean()) / 1000.0 if self.requests else 0.0

    @property
    def client_recv_us(self) -> float:
        return float(self.records.recv_ns.mean()) / 1000.0 if self.requests else 0.0

    @property
    def network_us(self) -> float:
        """``Network+Server Send/Recv``: client wait minus server queue and compute, >= 0."""
        wait = self.avg_latency_us - self.client_send_us - self.client_recv_us
        s = self.server
        accounted = (
            s.avg_queue_us + s.avg_compute_input_us + s.avg_compute_infer_us
            + s.avg_compute_output_us
        )  # fmt: skip
        return max(0.0, wait - accounted) if self.requests else 0.0

    def percentiles(self) -> dict[int, float]:
        qs = sorted({*PERCENTILES, *([self.percentile] if self.percentile else [])})
        return {q: self.percentile_us(q) for q in qs}


@dataclass
class LevelResult(WindowResult):
    """A load level's result: its last (up to three) windows merged; perf_analyzer's PerfStatus."""

    level: LoadLevel = field(default_factory=lambda: LoadLevel(concurrency=1))
    trials: int = 0
    stable: bool = False

    def summary(self) -> dict[str, Any]:
        s = self.server
        return {
            "concurrency": self.level.concurrency or None,
            "request_rate": self.level.rate or None,
            "batch": self.batch,
            "stable": self.stable,
            "trials": self.trials,
            "requests": self.requests,
            "errors": self.errors,
            "delayed": self.delayed,
            "seconds": self.duration_ns / 1e9,
            "requests_per_s": self.requests_per_s,
            "inferences_per_s": self.throughput,
            "avg_latency_us": self.avg_latency_us,
            **{f"p{q}_latency_us": v for q, v in self.percentiles().items()},
            "client_send_us": self.client_send_us,
            "client_recv_us": self.client_recv_us,
            "network_us": self.network_us,
            "server_queue_us": s.avg_queue_us,
            "server_compute_input_us": s.avg_compute_input_us,
            "server_compute_infer_us": s.avg_compute_infer_us,
            "server_compute_output_us": s.avg_compute_output_us,
            "server_requests": s.success_count,
            "server_avg_batch": s.avg_batch,
            "generator_cpu": self.generator_cpu,
            "error_sample": self.records.error_samples[0] if self.records.error_samples else "",
        }


def _stable(windows: Sequence[WindowResult], threshold: float, check_latency: bool) -> bool:
    """perf_analyzer's rule on the last three windows: max/min <= 1 + threshold."""
    if len(windows) < STABILITY_WINDOWS:
        return False
    last = windows[-STABILITY_WINDOWS:]
    ips = [w.throughput for w in last]
    if min(ips) <= 0:
        return False
    if max(ips) / min(ips) > 1 + threshold:
        return False
    if not check_latency:
        return True
    lat = [w.stabilizing_latency_us for w in last]
    return bool(min(lat) > 0 and max(lat) / min(lat) <= 1 + threshold)


def _merge(
    windows: Sequence[WindowResult], level: LoadLevel, trials: int, stable: bool
) -> LevelResult:
    server = ServerStats()
    for w in windows:
        server = server + w.server
    return LevelResult(
        records=Records.concat([w.records for w in windows]),
        duration_ns=sum(w.duration_ns for w in windows),
        server=server,
        batch=windows[0].batch,
        percentile=windows[0].percentile,
        generator_cpu=float(np.mean([w.generator_cpu for w in windows])),
        level=level,
        trials=trials,
        stable=stable,
    )


def _busy(before: list[tuple[int, int]], after: list[tuple[int, int]]) -> float:
    """The busiest load process's CPU fraction between two takes."""
    fractions = [
        (c1 - c0) / (w1 - w0) for (c0, w0), (c1, w1) in zip(before, after, strict=False) if w1 > w0
    ]
    return max(fractions, default=0.0)


@dataclass(frozen=True)
class ProfileSettings:
    """How each level is measured (perf_analyzer's -p, -s, --max-trials, --percentile, -l)."""

    window_ms: int = 5000
    stability_pct: float = 10.0
    max_trials: int = 10
    percentile: int | None = None
    latency_threshold_ms: float = 0.0
    settle_s: float = 0.5


def profile(
    spec: TargetSpec,
    control: Control,
    levels: Sequence[LoadLevel],
    settings: ProfileSettings = ProfileSettings(),
    *,
    processes: int = 1,
    progress: Callable[[LoadLevel, int, WindowResult], None] | None = None,
) -> tuple[list[LevelResult], tuple[int, int]]:
    """Measure every level; also (successful, failed) requests the generator saw in all."""
    slots = max((lv.concurrency for lv in levels), default=1) or 64
    results: list[LevelResult] = []
    with LoadRunner(spec, processes=processes, slots=slots) as runner:
        for level in levels:
            runner.set_level(level)
            time.sleep(settings.settle_s)
            cpu = runner.take().cpu
            t_prev, s_prev = time.monotonic_ns(), control.statistics(spec.model, spec.version)
            carry, windows, stable = Records(), [], False
            for trial in range(1, settings.max_trials + 1):
                time.sleep(
                    max(0.0, (t_prev + settings.window_ms * 1e6 - time.monotonic_ns()) / 1e9)
                )
                t = time.monotonic_ns()
                s = control.statistics(spec.model, spec.version)
                taken = runner.take()
                recs = Records.concat([carry, taken])
                carry = recs.ended_between(t, 2**62)
                window = WindowResult(
                    recs.ended_between(t_prev, t), t - t_prev, s - s_prev, spec.batch,
                    settings.percentile, _busy(cpu, taken.cpu),
                )  # fmt: skip
                windows.append(window)
                cpu, t_prev, s_prev = taken.cpu, t, s
                if progress is not None:
                    progress(level, trial, window)
                stable = _stable(windows, settings.stability_pct / 100.0, check_latency=True)
                if stable:
                    break
            if not stable and level.rate and _stable(windows, settings.stability_pct / 100, False):
                log.warning("latency is not stabilizing at %g/s: lower the rate", level.rate)
                stable = True  # perf_analyzer's rule for open-loop load
            if not stable:
                log.warning(
                    "no stable measurement within %d windows at %s; reporting the last %d",
                    settings.max_trials, level, min(len(windows), STABILITY_WINDOWS),
                )  # fmt: skip
            result = _merge(windows[-STABILITY_WINDOWS:], level, len(windows), stable)
            results.append(result)
            threshold_us = settings.latency_threshold_ms * 1000.0
            if threshold_us and result.stabilizing_latency_us > threshold_us:
                break
        runner.set_level(None)
        totals = runner.close()
    return results, totals


@dataclass(frozen=True)
class PerfOptions:
    """``pysonic perf``'s options (perf_analyzer's names in the comments)."""

    model: str  # -m
    url: str = "localhost:8001"  # -u
    protocol: str = "grpc"  # -i
    version: str = ""  # -x
    batch: int = 1  # -b
    shapes: Mapping[str, Sequence[int]] = field(default_factory=dict)  # --shape
    input_data: str = "random"  # --input-data
    shared_memory: str = "none"  # --shared-memory
    output_shm_size: int = 100 * 1024  # --output-shared-memory-size
    levels: Sequence[LoadLevel] = (LoadLevel(concurrency=1),)  # --concurrency-range / ...
    settings: ProfileSettings = ProfileSettings()  # -p, -s, --max-trials, --percentile, -l
    processes: int = 1  #: load processes (pysonic's own option)
    binary_data: bool = True  #: HTTP tensors in the binary extension (False: JSON data)
    connection: Connection = field(default_factory=Connection)  # --ssl-*, -H


@dataclass
class PerfReport:
    options: PerfOptions
    model: ModelIO
    results: list[LevelResult]
    totals: tuple[int, int]  #: (successful, failed) requests over the whole run
    server_totals: ServerStats  #: ModelStatistics delta over the whole run

    @property
    def mode(self) -> str:
        return "concurrency" if self.options.levels[0].concurrency else "rate"

    def to_dict(self) -> dict[str, Any]:
        o = self.options
        return {
            "model": o.model,
            "url": o.url,
            "protocol": o.protocol,
            "batch": o.batch,
            "shared_memory": o.shared_memory,
            "processes": o.processes,
            "window_ms": o.settings.window_ms,
            "requests_total": self.totals[0],
            "failed_total": self.totals[1],
            "server_requests_total": self.server_totals.success_count,
            "levels": [r.summary() for r in self.results],
        }


def run_perf(
    options: PerfOptions,
    progress: Callable[[LoadLevel, int, WindowResult], None] | None = None,
) -> PerfReport:
    """Read the model's config, build the inputs, measure every level (see the module doc)."""
    with Control(options.protocol, options.url, connection=options.connection) as control:
        io = ModelIO.from_config(control.model_config(options.model, options.version))
        sets = make_input_sets(
            io, batch=options.batch, shapes=options.shapes, data=options.input_data
        )
        spec = TargetSpec(
            protocol=options.protocol,
            url=options.url,
            model=options.model,
            version=options.version,
            input_sets=tuple(sets),
            outputs=io.outputs,
            shared_memory=options.shared_memory,
            output_shm_size=options.output_shm_size,
            batch_size=options.batch if io.max_batch_size > 0 else 1,
            binary_data=options.binary_data,
            connection=options.connection,
        )
        before = control.statistics(options.model, options.version)
        results, totals = profile(
            spec,
            control,
            options.levels,
            options.settings,
            processes=options.processes,
            progress=progress,
        )
        after = control.statistics(options.model, options.version)
    return PerfReport(options, io, results, totals, after - before)
