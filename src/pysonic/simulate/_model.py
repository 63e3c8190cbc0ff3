"""What the simulator simulates: servers, jobs, arrivals, the balancer and the KEDA policy.

A **server** is a flow-equivalent station: with ``n`` requests inside it completes requests at the
rate ``X(n)`` of its measured throughput curve (closed-loop concurrency ``n`` -> requests/s, as
``pysonic perf`` measures it), shared equally by the requests in service; beyond ``slots``
requests (the knee of the curve, where more concurrency adds no throughput) new requests wait in
its queue. The queue time KEDA scales on is a request's time in the server beyond the unloaded
latency ``1 / X(1)`` (waiting for an instance, longer batches): it rises smoothly with load, as
Triton's queue time does on a batching server. Coprocessor
utilization is the share of the server's peak rate in use, ``X(n) / max X``. A closed-loop
measurement at concurrency ``n`` is reproduced exactly by construction; what the model adds is
how arrivals, balancing and replicas interact.

A **job** (a CMSSW-like process) runs ``events`` events on ``streams`` streams; each event is CPU
work (``cpu_s``, gamma-distributed with ``cpu_cv``) followed by ``requests_per_event`` blocking
inference calls. **Arrivals** are batches of jobs at fixed intervals (seed 000: 1,000 jobs in
batches of 50 every 10 minutes). The **balancer** picks a server per request (least requests in
flight, like HAProxy ``leastconn`` / Envoy ``LEAST_REQUEST``), or per job (a job keeps the server
it first connected to, the behaviour per-request balancing replaced). **KEDA** polls the average
queue time per execution over a window every ``polling_s`` and sets the replica count with the
HPA rule for KEDA's default ``AverageValue`` metric, ``ceil(metric / threshold)`` (10% tolerance,
HPA's default scale-up limit of
doubling or +4 per poll), scaling up at once (new replicas serve after ``startup_s``) and down to
the highest recommendation of the last ``cooldown_s`` (HPA's scale-down stabilization window).

Example::

    profile = ServerProfile.from_perf_json(Path("perf.json"), startup_s=60)
    scenario = replace(seed000(), server=profile)
"""

from __future__ import annotations

import bisect
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

__all__ = [
    "Arrivals",
    "Balancing",
    "JobProfile",
    "KedaPolicy",
    "Scenario",
    "ServerProfile",
    "scenario_presets",
    "seed000",
    "seed002",
]

Balancing = Literal["least_request", "round_robin", "per_job"]


@dataclass(frozen=True)
class ServerProfile:
    """A server's throughput curve: ``points`` of (concurrency, requests/s), increasing n."""

    points: tuple[tuple[float, float], ...]
    name: str = "server"
    #: seconds from a replica's creation (scale-up) to its readiness
    startup_s: float = 60.0
    #: requests in service at most (the rest queue); default: the knee of the curve
    slots: int = 0

    def __post_init__(self) -> None:
        if not self.points or any(n <= 0 or x <= 0 for n, x in self.points):
            msg = "a server profile needs (concurrency > 0, requests/s > 0) points"
            raise ValueError(msg)
        if list(self.points) != sorted(self.points):
            msg = "server profile points must be sorted by concurrency"
            raise ValueError(msg)
        if self.slots <= 0:
            object.__setattr__(self, "slots", self._knee())

    def _knee(self, fraction: float = 0.95) -> int:
        peak = self.peak
        for n, x in self.points:
            if x >= fraction * peak:
                return max(1, math.ceil(n))
        return max(1, math.ceil(self.points[-1][0]))  # pragma: no cover - peak is reached

    @property
    def peak(self) -> float:
        return max(x for _, x in self.points)

    def rate(self, n: int) -> float:
        """X(n): requests/s with ``n`` requests in service (linear between points, 0 at 0)."""
        if n <= 0:
            return 0.0
        ns = [p[0] for p in self.points]
        i = bisect.bisect_left(ns, n)
        if i < len(ns) and ns[i] == n:
            return self.points[i][1]
        if i == 0:
            n1, x1 = self.points[0]
            return x1 * n / n1  # latency at low load: that of the first point
        if i == len(ns):
            return self.points[-1][1]
        (n0, x0), (n1, x1) = self.points[i - 1], self.points[i]
        return x0 + (x1 - x0) * (n - n0) / (n1 - n0)

    @classmethod
    def from_batch_model(
        cls,
        t0_ms: float,
        per_item_ms: float,
        *,
        max_batch: int,
        instances: int = 1,
        name: str = "gpu",
        startup_s: float = 60.0,
    ) -> ServerProfile:
        """A coprocessor with batch time ``t0 + b * per_item`` (one request = one item), its
        ``instances`` each taking up to ``max_batch`` queued requests per execution."""
        pts = []
        n = 1
        while n <= max_batch * instances:
            b = max(1, math.ceil(n / instances))
            pts.append((float(n), min(n, instances) * b / ((t0_ms + b * per_item_ms) / 1000)))
            n *= 2
        return cls(tuple(pts), name=name, startup_s=startup_s, slots=max_batch * instances)

    @classmethod
    def from_perf(
        cls, report: dict[str, Any], *, name: str = "", startup_s: float = 60.0
    ) -> ServerProfile:
        """From ``pysonic perf --json`` output (a concurrency sweep)."""
        pts = sorted(
            (float(lv["concurrency"]), float(lv["requests_per_s"]))
            for lv in report["levels"]
            if lv.get("concurrency") and lv.get("requests_per_s", 0) > 0
        )
        if not pts:
            msg = "the perf report has no concurrency levels with throughput"
            raise ValueError(msg)
        return cls(tuple(pts), name=name or str(report.get("model", "server")), startup_s=startup_s)

    @classmethod
    def from_perf_json(cls, path: Path, **kwargs: Any) -> ServerProfile:
        return cls.from_perf(json.loads(Path(path).read_text()), **kwargs)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "points": [list(p) for p in self.points],
            "slots": self.slots,
            "peak_requests_per_s": self.peak,
            "startup_s": self.startup_s,
        }


@dataclass(frozen=True)
class JobProfile:
    """One job: ``events`` events on ``streams`` streams, CPU then blocking inference per event."""

    events: int = 500
    cpu_s: float = 8.0
    cpu_cv: float = 0.3
    streams: int = 1
    requests_per_event: int = 1


@dataclass(frozen=True)
class Arrivals:
    """``jobs`` jobs submitted ``batch`` at a time every ``interval_s`` seconds, from t = 0; a
    batch's jobs start spread uniformly over ``spread_s`` (the batch system's dispatch)."""

    jobs: int = 1000
    batch: int = 50
    interval_s: float = 600.0
    spread_s: float = 0.0
    #: explicit start times (e.g. those observed in a real run); replace the batch schedule
    times: tuple[float, ...] = ()


@dataclass(frozen=True)
class KedaPolicy:
    """KEDA ScaledObject + HPA behaviour on the average queue time per execution."""

    enabled: bool = True
    min_replicas: int = 1
    max_replicas: int = 10
    threshold_ms: float = 100.0
    polling_s: float = 30.0
    window_s: float = 30.0  #: the PromQL rate() window
    cooldown_s: float = 300.0  #: scale-down stabilization window (HPA's default 300 s)
    #: KEDA's ``metricType``: AverageValue (default: replicas = ceil(metric / threshold)) or
    #: Value (replicas = ceil(replicas * metric / threshold))
    metric_type: Literal["AverageValue", "Value"] = "AverageValue"
    tolerance: float = 0.1  #: HPA's: no change while the usage ratio is within 10% of 1
    #: HPA ``behavior.scaleDown.policies`` Pods limit per poll (0: HPA's default, no limit)
    scale_down_pods_per_poll: int = 0

    def __post_init__(self) -> None:
        if not 1 <= self.min_replicas <= self.max_replicas:
            msg = "need 1 <= min_replicas <= max_replicas (scale to zero is not modelled)"
            raise ValueError(msg)
        if self.threshold_ms <= 0 or self.polling_s <= 0 or self.window_s <= 0:
            msg = "threshold_ms, polling_s and window_s must be positive"
            raise ValueError(msg)


@dataclass(frozen=True)
class Scenario:
    """Everything one simulation needs; ``seed`` fixes every random draw."""

    server: ServerProfile
    job: JobProfile = field(default_factory=JobProfile)
    arrivals: Arrivals = field(default_factory=Arrivals)
    keda: KedaPolicy = field(default_factory=KedaPolicy)
    #: servers at t = 0 (KEDA then adjusts within its bounds when enabled)
    initial_servers: int = 1
    balancing: Balancing = "least_request"
    #: round-trip network latency added to every request, seconds
    network_s: float = 0.0
    sample_s: float = 60.0
    horizon_s: float | None = None  #: None: until every job has finished
    seed: int = 0
    name: str = "custom"


def t4_tagger() -> ServerProfile:
    """An assumed NVIDIA T4 serving a jet tagger, one request = one event's jets (not measured
    here: t(b) = 5 ms + 50 ms * b, batches up to 8, so about 20 requests/s at most); replace it
    with a measured profile (``--profile perf.json``) where a GPU is at hand."""
    return ServerProfile.from_batch_model(
        5.0, 50.0, max_batch=8, instances=1, name="T4 tagger (assumed)", startup_s=90.0
    )


def seed000(server: ServerProfile | None = None) -> Scenario:
    """Purdue's continuous flow (seed 000): 1,000 jobs in batches of 50 every 10 minutes, GPU
    servers autoscaled by KEDA on queue time."""
    return Scenario(
        server=server or t4_tagger(),
        job=JobProfile(events=500, cpu_s=6.0, cpu_cv=0.3, streams=4, requests_per_event=1),
        arrivals=Arrivals(jobs=1000, batch=50, interval_s=600.0, spread_s=60.0),
        keda=KedaPolicy(
            min_replicas=1, max_replicas=20, threshold_ms=50.0, scale_down_pods_per_poll=1
        ),
        initial_servers=1,
        name="seed000",
    )


def seed002(server: ServerProfile | None = None) -> Scenario:
    """The Google Cloud scale test (seed 002): 10,000 CPU jobs and 100 T4 GPUs, no autoscaling."""
    return Scenario(
        server=server or t4_tagger(),
        job=JobProfile(events=50, cpu_s=6.0, cpu_cv=0.3, streams=1, requests_per_event=1),
        arrivals=Arrivals(jobs=10_000, batch=10_000, interval_s=1.0, spread_s=120.0),
        keda=KedaPolicy(enabled=False, min_replicas=100, max_replicas=100),
        initial_servers=100,
        name="seed002",
    )


def scenario_presets() -> dict[str, Any]:
    return {"seed000": seed000, "seed002": seed002}


def curve_points(values: Sequence[tuple[float, float]]) -> tuple[tuple[float, float], ...]:
    return tuple(sorted((float(n), float(x)) for n, x in values))
