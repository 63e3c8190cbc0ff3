"""The discrete-event engine: one heap of timed events, plain Python, deterministic by seed.

Event kinds: a job starts; a stream's CPU work for an event ends (it sends a request); a request
reaches its server (after half the network round trip); a server completes its head request; a
response reaches its job; KEDA polls; a new replica becomes ready; a sample is taken. Servers are
the flow-equivalent stations of :mod:`pysonic.simulate._model`: a completion is scheduled from the
current in-service count and rescheduled whenever it changes (stale completions carry an old
version and are dropped).

Example::

    result = simulate(seed000())
    result.totals["events_per_s"], result.replicas[-1]
"""

from __future__ import annotations

import heapq
import itertools
import math
import random
from collections import deque
from dataclasses import asdict, dataclass, field
from typing import Any

from pysonic.simulate._model import Scenario, ServerProfile

__all__ = ["SimResult", "simulate"]

# event kinds (ints keep heap tuples cheap and comparable)
JOB, CPU_DONE, ARRIVE, COMPLETE, RESPONSE, POLL, READY, SAMPLE = range(8)
P2C_ABOVE = 16  #: above this many servers least_request samples two (Envoy's default)


class _Server:
    __slots__ = (
        "created", "draining", "id", "in_service", "jobs", "last_t", "outstanding", "profile",
        "ready_at", "removed", "served", "util", "version", "vt", "waiting",
    )  # fmt: skip

    def __init__(self, sid: int, profile: ServerProfile, created: float, ready_at: float) -> None:
        self.id = sid
        self.profile = profile
        self.created, self.ready_at = created, ready_at
        self.draining = False
        self.removed: float | None = None
        self.in_service: deque[tuple[float, _Request]] = deque()  # (finish virtual time, request)
        self.waiting: deque[_Request] = deque()
        self.vt = 0.0  # virtual time: service each in-service request has received
        self.last_t = created
        self.util = 0.0  # integral of X(n) / peak dt
        self.version = 0
        self.outstanding = 0  # requests sent here and not answered (what the balancer counts)
        self.served = 0
        self.jobs = 0  # jobs pinned here (per-job balancing)

    def advance(self, t: float) -> None:
        n = len(self.in_service)
        if n:
            x = self.profile.rate(n)
            self.vt += (t - self.last_t) * x / n
            self.util += (t - self.last_t) * x / self.profile.peak
        self.last_t = t


@dataclass
class _Request:
    job: int
    stream: int
    sent: float
    server: int = -1
    queued_at: float = 0.0


@dataclass
class SimResult:
    """Time series (one entry per sample) and totals; ``to_dict`` is the JSON output."""

    scenario: dict[str, Any]
    times: list[float] = field(default_factory=list)
    utilization: dict[str, list[float | None]] = field(default_factory=dict)
    events_per_s: list[float] = field(default_factory=list)
    requests_per_s: list[float] = field(default_factory=list)
    replicas: list[int] = field(default_factory=list)
    ready_replicas: list[int] = field(default_factory=list)
    jobs_running: list[int] = field(default_factory=list)
    queue_ms: list[float] = field(default_factory=list)  #: KEDA's metric at its last poll
    scale_events: list[tuple[float, int, int]] = field(default_factory=list)
    totals: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class _Sim:
    def __init__(self, sc: Scenario) -> None:
        self.sc = sc
        self.rng = random.Random(sc.seed)
        self.heap: list[tuple[float, int, int, Any]] = []
        self.seq = itertools.count()
        self.servers: list[_Server] = []
        self.res = SimResult(scenario=_scenario_dict(sc))
        job = sc.job
        self.events_left = [job.events] * sc.arrivals.jobs
        self.streams_left = [0] * sc.arrivals.jobs
        self.requests_left: dict[tuple[int, int], int] = {}
        self.pinned = [-1] * sc.arrivals.jobs
        self.started = self.finished = 0
        self.events_done = self.requests_sent = self.requests_done = 0
        self.latency_sum = self.queue_sum = 0.0
        self.window: deque[tuple[float, float]] = deque()  # (t, queue seconds) for KEDA
        self.metric_ms = 0.0
        self.last_up = -math.inf
        self.end_t = 0.0
        self.base_s = 1.0 / sc.server.rate(1)
        self.recommendations: deque[tuple[float, int]] = deque()
        self.last_t = 0.0
        self.sample_events = self.sample_requests = 0
        self.rr = itertools.count()
        self._ok: list[_Server] | None = None  # ready, non-draining servers (cached)
        self._next_ready = math.inf
        k = 1.0 / job.cpu_cv**2 if job.cpu_cv > 0 else 0.0
        self.gamma = (k, job.cpu_s / k) if k else None

    # ------------------------------------------------------------------ plumbing
    def push(self, t: float, kind: int, payload: Any = None) -> None:
        heapq.heappush(self.heap, (t, next(self.seq), kind, payload))

    def cpu(self) -> float:
        if self.gamma is None:
            return self.sc.job.cpu_s
        return self.rng.gammavariate(*self.gamma)

    def add_server(self, t: float, startup: float) -> _Server:
        s = _Server(len(self.servers), self.sc.server, t, t + startup)
        self.servers.append(s)
        self.res.utilization[f"server-{s.id}"] = [None] * len(self.res.times)
        if startup > 0:
            self.push(t + startup, READY, s.id)
        self._ok = None
        return s

    def active(self) -> list[_Server]:
        return [s for s in self.servers if not s.draining and s.removed is None]

    # ------------------------------------------------------------------ jobs
    def start_job(self, t: float, j: int) -> None:
        self.started += 1
        self.streams_left[j] = min(self.sc.job.streams, self.events_left[j])
        if self.sc.balancing == "per_job":
            self.pinned[j] = self.pick_for_job(t)
        for stream in range(self.streams_left[j]):
            self.next_event(t, j, stream)

    def next_event(self, t: float, j: int, stream: int) -> None:
        if self.events_left[j] <= 0:
            self.streams_left[j] -= 1
            if self.streams_left[j] == 0:
                self.finished += 1
                self.end_t = t
                if self.pinned[j] >= 0:
                    self.servers[self.pinned[j]].jobs -= 1
            return
        self.events_left[j] -= 1
        self.push(t + self.cpu(), CPU_DONE, (j, stream))

    def send(self, t: float, j: int, stream: int) -> None:
        s = self.pick(t, j)
        req = _Request(j, stream, t, s.id)
        s.outstanding += 1
        self.requests_sent += 1
        if self.sc.network_s > 0:
            self.push(t + self.sc.network_s / 2, ARRIVE, req)
        else:
            self.arrive(t, req)

    def response(self, t: float, req: _Request) -> None:
        self.requests_done += 1
        self.sample_requests += 1
        self.latency_sum += t - req.sent
        key = (req.job, req.stream)
        left = self.requests_left.get(key, self.sc.job.requests_per_event) - 1
        if left > 0:
            self.requests_left[key] = left
            self.send(t, req.job, req.stream)
            return
        self.requests_left.pop(key, None)
        self.events_done += 1
        self.sample_events += 1
        self.next_event(t, req.job, req.stream)

    # ------------------------------------------------------------------ balancing
    def ready_servers(self, t: float) -> list[_Server]:
        if self._ok is None:
            self._ok = [s for s in self.active() if s.ready_at <= t]
            if not self._ok:  # nothing ready yet: queue on the ones starting
                self._ok = self.active() or self.servers[-1:]
        return self._ok

    def pick(self, t: float, j: int) -> _Server:
        ok = self.ready_servers(t)
        if self.sc.balancing == "per_job":
            pinned = self.servers[self.pinned[j]] if self.pinned[j] >= 0 else None
            if pinned is not None and pinned in ok:
                return pinned
            self.pinned[j] = self.pick_for_job(t)
            return self.servers[self.pinned[j]]
        if self.sc.balancing == "round_robin":
            return ok[next(self.rr) % len(ok)]
        if len(ok) > P2C_ABOVE:
            n = len(ok)
            a, b = ok[int(self.rng.random() * n)], ok[int(self.rng.random() * n)]
            return a if a.outstanding <= b.outstanding else b
        start = next(self.rr) % len(ok)  # rotate ties
        return min(ok[start:] + ok[:start], key=lambda s: s.outstanding)

    def pick_for_job(self, t: float) -> int:
        ok = self.ready_servers(t)
        s = min(ok, key=lambda s: (s.jobs, s.id))
        s.jobs += 1
        return s.id

    # ------------------------------------------------------------------ servers
    def arrive(self, t: float, req: _Request) -> None:
        s = self.servers[req.server]
        s.advance(t)
        req.queued_at = t
        if len(s.in_service) < s.profile.slots:
            self.begin(t, s, req)
        else:
            s.waiting.append(req)
        self.reschedule(t, s)

    def begin(self, t: float, s: _Server, req: _Request) -> None:
        s.in_service.append((s.vt + 1.0, req))

    def reschedule(self, t: float, s: _Server) -> None:
        s.version += 1
        if s.in_service:
            n = len(s.in_service)
            dt = max(0.0, s.in_service[0][0] - s.vt) * n / s.profile.rate(n)
            self.push(t + dt, COMPLETE, (s.id, s.version))

    def complete(self, t: float, sid: int, version: int) -> None:
        s = self.servers[sid]
        if version != s.version:
            return
        s.advance(t)
        _, req = s.in_service.popleft()
        s.served += 1
        # queue time: the time in the server beyond its unloaded latency 1 / X(1)
        q = max(0.0, t - req.queued_at - self.base_s)
        self.queue_sum += q
        self.window.append((t, q))
        if s.waiting:
            self.begin(t, s, s.waiting.popleft())
        self.reschedule(t, s)
        if self.sc.network_s > 0:
            self.push(t + self.sc.network_s / 2, RESPONSE, req)
        else:
            self.deliver(t, req)
        if s.draining and s.removed is None and not s.in_service and s.outstanding == 0:
            s.removed = t

    def deliver(self, t: float, req: _Request) -> None:
        s = self.servers[req.server]
        s.outstanding -= 1
        if s.draining and s.removed is None and s.outstanding == 0 and not s.in_service:
            s.advance(t)
            s.removed = t
        self.response(t, req)

    # ------------------------------------------------------------------ KEDA
    def poll(self, t: float) -> None:
        k = self.sc.keda
        while self.window and self.window[0][0] < t - k.window_s:
            self.window.popleft()
        count = len(self.window)
        self.metric_ms = sum(q for _, q in self.window) / count * 1000 if count else 0.0
        current = len(self.active())
        if k.metric_type == "AverageValue":  # KEDA's default: replicas = metric / threshold
            ratio = self.metric_ms / (k.threshold_ms * current)
        else:  # "Value": the metric is a per-replica average to hold at the threshold
            ratio = self.metric_ms / k.threshold_ms
        desired = current if abs(ratio - 1) <= k.tolerance else math.ceil(current * ratio)
        # HPA's default scale-up policy: at most double, or add 4, per period
        desired = min(desired, max(2 * current, current + 4))
        desired = max(k.min_replicas, min(k.max_replicas, desired))
        # scale-down stabilization: the highest recommendation within the cooldown window
        self.recommendations.append((t, desired))
        while self.recommendations[0][0] < t - k.cooldown_s:
            self.recommendations.popleft()
        if desired < current:
            desired = min(current, max(d for _, d in self.recommendations))
            if k.scale_down_pods_per_poll > 0:
                desired = max(desired, current - k.scale_down_pods_per_poll)
        if desired > current:
            for _ in range(desired - current):
                self.add_server(t, self.sc.server.startup_s)
            self.last_up = t
            self.res.scale_events.append((t, current, desired))
        elif desired < current:
            # not-yet-ready replicas go first, then the newest (ReplicaSet's deletion cost)
            victims = sorted(self.active(), key=lambda s: (s.ready_at <= t, -s.created))
            self._ok = None
            for s in victims[: current - desired]:
                s.draining = True
                if s.outstanding == 0 and not s.in_service:
                    s.advance(t)
                    s.removed = t
            self.res.scale_events.append((t, current, desired))

    # ------------------------------------------------------------------ samples
    def sample(self, t: float) -> None:
        dt = t - self.last_t
        r = self.res
        r.times.append(t)
        for s in self.servers:
            s.advance(t)
            key = f"server-{s.id}"
            alive = s.created <= t and (s.removed is None or s.removed > self.last_t)
            r.utilization[key].append(round(s.util / dt, 4) if alive and dt > 0 else None)
            s.util = 0.0
        r.events_per_s.append(self.sample_events / dt if dt > 0 else 0.0)
        r.requests_per_s.append(self.sample_requests / dt if dt > 0 else 0.0)
        r.replicas.append(len(self.active()))
        r.ready_replicas.append(sum(1 for s in self.active() if s.ready_at <= t))
        r.jobs_running.append(self.started - self.finished)
        r.queue_ms.append(round(self.metric_ms, 3))
        self.sample_events = self.sample_requests = 0
        self.last_t = t

    # ------------------------------------------------------------------ run
    def run(self) -> SimResult:
        sc = self.sc
        for _ in range(sc.initial_servers):
            self.add_server(0.0, 0.0)
        a = sc.arrivals
        for j in range(a.jobs):
            if a.times:
                self.push(a.times[j], JOB, j)
                continue
            t0 = (j // a.batch) * a.interval_s
            self.push(t0 + (self.rng.uniform(0, a.spread_s) if a.spread_s else 0.0), JOB, j)
        if sc.keda.enabled:
            self.push(sc.keda.polling_s, POLL)
        self.push(sc.sample_s, SAMPLE)
        horizon = sc.horizon_s if sc.horizon_s is not None else math.inf
        t = 0.0
        while self.heap:
            t, _, kind, p = heapq.heappop(self.heap)
            if t > horizon:
                t = horizon
                break
            if kind == CPU_DONE:
                self.send(t, *p)
            elif kind == COMPLETE:
                self.complete(t, *p)
            elif kind == ARRIVE:
                self.arrive(t, p)
            elif kind == RESPONSE:
                self.deliver(t, p)
            elif kind == JOB:
                self.start_job(t, p)
            elif kind == POLL:
                self.poll(t)
                if self.finished < a.jobs:
                    self.push(t + sc.keda.polling_s, POLL)
            elif kind == SAMPLE:
                self.sample(t)
                if self.finished < a.jobs:
                    self.push(t + sc.sample_s, SAMPLE)
            elif kind == READY:
                self._ok = None
        if not self.res.times or self.res.times[-1] < t:
            self.sample(t)
        self.res.totals = self.totals(self.end_t if self.finished == a.jobs else t)
        return self.res

    def totals(self, end: float) -> dict[str, Any]:
        done = self.requests_done
        return {
            "jobs": self.sc.arrivals.jobs,
            "jobs_finished": self.finished,
            "events": self.events_done,
            "requests_sent": self.requests_sent,
            "requests_done": done,
            "makespan_s": end,
            "events_per_s": self.events_done / end if end > 0 else 0.0,
            "requests_per_s": done / end if end > 0 else 0.0,
            "mean_latency_ms": self.latency_sum / done * 1000 if done else 0.0,
            "mean_queue_ms": self.queue_sum / done * 1000 if done else 0.0,
            "servers_created": len(self.servers),
            "max_replicas": max(self.res.replicas, default=0),
            "served_per_server": [s.served for s in self.servers],
        }


def _scenario_dict(sc: Scenario) -> dict[str, Any]:
    d = asdict(sc)
    d["server"] = sc.server.to_dict()
    return d


def simulate(scenario: Scenario) -> SimResult:
    """Run ``scenario`` to completion (or its horizon); deterministic for a given seed."""
    return _Sim(scenario).run()
