"""Capacity planning with seed 003's t_SONIC model: how many jobs one server carries.

A job processes events one after another; a fraction ``p`` of its all-CPU time per event
``t_CPU`` is the inference that SONIC moves to a server. On the server that inference takes
``t_GPU`` per event; each event also pays ``t_latency`` for the remote calls. With ``N_CPU``
jobs sharing ``N_GPU`` servers::

    t_ideal = (1 - p) t_CPU + t_GPU + t_latency
    t_SONIC = (1 - p) t_CPU + t_GPU [1 + max(0, N_CPU/N_GPU - t_ideal/t_GPU)] + t_latency

Unsaturated (``N_CPU/N_GPU <= t_ideal/t_GPU``) every job runs at ``t_ideal`` per event; past that
the server is the bottleneck and ``t_SONIC = t_GPU N_CPU/N_GPU`` (the two expressions meet at
the saturation point ``N_CPU/N_GPU = t_ideal/t_GPU``). Events/s per job is ``1/t_SONIC``; all jobs
together make ``N_CPU/t_SONIC``, which levels off at ``N_GPU/t_GPU``.

Inputs come from measurements: ``p`` and ``t_CPU`` from a workflow timing report (all inference
direct), ``t_GPU`` from the load generator (a server's saturated throughput, per event),
``t_latency`` from a ping, or are given directly.

Example::

    model = SonicModel(p=0.88, t_cpu=0.035, t_gpu=0.028, t_latency=0.0003)
    model.saturation_jobs, model.events_per_s(4), model.servers_needed(1000)
"""

from __future__ import annotations

import csv
import math
import statistics
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "SonicModel",
    "perf_csv_throughput",
    "ping",
    "plot_plan",
    "t_gpu_from_throughputs",
    "timing_inputs",
]


@dataclass(frozen=True)
class SonicModel:
    """Seed 003's model; all times in seconds per event.

    ``p``: inference share of the all-CPU per-event time; ``t_cpu``: the all-CPU per-event time;
    ``t_gpu``: the offloaded inference's time per event on one server; ``t_latency``: added
    per-event latency of the remote calls; ``n_gpu``: servers.
    """

    p: float
    t_cpu: float
    t_gpu: float
    t_latency: float = 0.0
    n_gpu: int = 1

    def __post_init__(self) -> None:
        if not 0.0 <= self.p <= 1.0:
            msg = f"p is a fraction in [0, 1], got {self.p}"
            raise ValueError(msg)
        if self.t_cpu < 0 or self.t_gpu <= 0 or self.t_latency < 0 or self.n_gpu < 1:
            msg = f"need t_cpu >= 0, t_gpu > 0, t_latency >= 0, n_gpu >= 1: {self}"
            raise ValueError(msg)

    @property
    def t_ideal(self) -> float:
        """Per-event time when the server is never busy with another job's work."""
        return (1.0 - self.p) * self.t_cpu + self.t_gpu + self.t_latency

    def t_sonic(self, n_cpu: float) -> float:
        """Per-event time of each of ``n_cpu`` jobs sharing the ``n_gpu`` servers."""
        excess = max(0.0, n_cpu / self.n_gpu - self.t_ideal / self.t_gpu)
        return (1.0 - self.p) * self.t_cpu + self.t_gpu * (1.0 + excess) + self.t_latency

    def saturated(self, n_cpu: float) -> bool:
        return n_cpu / self.n_gpu > self.t_ideal / self.t_gpu

    @property
    def saturation_jobs(self) -> float:
        """Jobs the servers carry before slowing them down: ``N_GPU t_ideal / t_GPU``."""
        return self.n_gpu * self.t_ideal / self.t_gpu

    def events_per_s(self, n_cpu: float) -> float:
        """Events/s of one job."""
        return 1.0 / self.t_sonic(n_cpu)

    def total_events_per_s(self, n_cpu: float) -> float:
        """Events/s of all ``n_cpu`` jobs together (at most ``n_gpu / t_gpu``)."""
        return n_cpu / self.t_sonic(n_cpu)

    def speedup(self, n_cpu: float) -> float:
        """One job's events/s with SONIC over the same job all on CPU."""
        return self.t_cpu / self.t_sonic(n_cpu) if self.t_cpu > 0 else float("nan")

    def servers_needed(self, n_jobs: int) -> int:
        """The fewest servers that keep ``n_jobs`` jobs unsaturated."""
        return max(1, math.ceil(n_jobs * self.t_gpu / self.t_ideal - 1e-9))

    def curve(self, jobs: Iterable[int]) -> list[dict[str, float]]:
        return [
            {
                "jobs": n,
                "t_sonic_ms": self.t_sonic(n) * 1e3,
                "events_per_s_per_job": self.events_per_s(n),
                "events_per_s_total": self.total_events_per_s(n),
                "saturated": self.saturated(n),
            }
            for n in jobs
        ]

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "t_ideal": self.t_ideal, "saturation_jobs": self.saturation_jobs}


def timing_inputs(report: Any, ml_modules: Sequence[str]) -> tuple[float, float]:
    """``(p, t_cpu)`` from a workflow :class:`~pysonic.workflow.TimingReport` of an all-direct run.

    ``p`` is the ML modules' share of module time; ``t_cpu`` is the job's wall time per event
    (``1 / events_per_s``), so a multi-stream job counts as one job of that throughput.
    """
    if report.events <= 0 or report.events_per_s <= 0:
        msg = "the timing report has no events"
        raise ValueError(msg)
    return report.inference_share(ml_modules), 1.0 / report.events_per_s


def perf_csv_throughput(path: Path) -> float:
    """The highest ``Inferences/Second`` in a perf_analyzer-format CSV (the saturated server)."""
    with Path(path).open(newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows or "Inferences/Second" not in rows[0]:
        msg = f"{path}: not a perf_analyzer CSV (no 'Inferences/Second' column)"
        raise ValueError(msg)
    return max(float(r["Inferences/Second"]) for r in rows)


def t_gpu_from_throughputs(parts: Iterable[tuple[float, float]]) -> float:
    """``t_GPU`` from ``(inferences per event, server inferences/s)`` per request kind.

    A server works on one kind at a time at its saturated rate, so the times add up:
    ``t_GPU = sum(n_k / T_k)``."""
    total = 0.0
    for per_event, rate in parts:
        if rate <= 0:
            msg = f"server throughput must be > 0, got {rate}"
            raise ValueError(msg)
        total += per_event / rate
    return total


def ping(url: str, protocol: str = "grpc", *, count: int = 50) -> float:
    """Median round trip (s) of a server-liveness request: the network part of ``t_latency``."""
    from pysonic.perf._control import Control

    with Control(protocol, url) as control:
        control.live()  # connect first: the channel's set-up is not latency
        rtts = []
        for _ in range(count):
            start = time.perf_counter()
            control.live()
            rtts.append(time.perf_counter() - start)
    return statistics.median(rtts)


def plot_plan(
    model: SonicModel,
    max_jobs: int,
    path: Path,
    *,
    measured: Sequence[tuple[int, float]] = (),
    title: str = "",
    also: SonicModel | None = None,
    also_label: str = "second model",
) -> Path:
    """Events/s per job and in total vs jobs per server, the saturation point marked;
    ``measured`` adds (jobs, events/s per job) points, ``also`` a second model's curve."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = [k / 4 for k in range(4, 4 * max_jobs + 1)]
    fig, ax1 = plt.subplots(figsize=(7.5, 4.5))
    ax1.plot(n, [model.events_per_s(k) for k in n], label="per job (model)")
    if also is not None:
        ax1.plot(n, [also.events_per_s(k) for k in n], ":", label=f"per job ({also_label})")
    if measured:
        ax1.plot(*zip(*measured, strict=True), "o", label="per job (measured)")
    ax1.axvline(model.saturation_jobs, color="gray", ls=":", label="saturation")
    ax1.set_xlabel("client jobs per server (N_CPU / N_GPU)")
    ax1.set_ylabel("events / s per job")
    ax2 = ax1.twinx()
    ax2.plot(n, [model.total_events_per_s(k) for k in n], "--", color="C3", label="all jobs")
    if measured:
        ax2.plot([k for k, _ in measured], [k * v for k, v in measured], "s", color="C3")
    ax2.set_ylabel("events / s, all jobs")
    ax1.set_ylim(bottom=0)
    ax2.set_ylim(bottom=0)
    lines = ax1.get_legend_handles_labels()
    more = ax2.get_legend_handles_labels()
    ax1.legend(lines[0] + more[0], lines[1] + more[1], loc="center right", fontsize=8)
    ax1.set_title(title or "t_SONIC: events/s vs jobs per server")
    ax1.grid(alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
