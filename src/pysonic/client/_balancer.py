"""Per-request load balancing over several servers, avoiding saturated ones.

Each call picks, among servers that have the model, are not ejected and are not excluded by a
retry, the one with the lowest score ``(outstanding + 1) * (1 + queue_ms / 10)``: requests this
client has in flight there, weighted by the server's recent average queue time per execution
(ModelStatistics deltas, refreshed in the background at most every ``stats_interval_s`` while the
server gets traffic, never on the request path). Servers whose queue time per execution exceeds
``saturation_queue_ms`` (SuperSONIC's 100 ms) are skipped unless every server is saturated. A
server that fails with UNAVAILABLE (connection loss included) is ejected for an exponentially
growing period and must answer ServerReady before it is used again (outlier detection).

Example::

    balanced = Balanced([GrpcTransport(a), GrpcTransport(b)])
    response = await balanced.infer(request)
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from tritonclient.grpc import model_config_pb2, service_pb2

from pysonic.client._metrics import ClientMetrics
from pysonic.client._transport import AsyncTransport, GrpcTransport
from pysonic.errors import (
    PermissionDeniedError,
    PysonicError,
    UnauthenticatedError,
    UnavailableError,
)
from pysonic.protocol.types import InferRequest, InferResponse

__all__ = ["Balanced", "ServerStatus"]

log = logging.getLogger("pysonic.client")
Policy = Literal["least_loaded", "round_robin"]


@dataclass
class ServerStatus:
    """What the balancer knows about one server."""

    transport: GrpcTransport
    models: set[str] | None = None  # None: not probed yet / unreachable
    probed_at: float = 0.0
    outstanding: int = 0
    sent: int = 0
    failures: int = 0
    ejections: int = 0
    ejected_until: float = 0.0
    queue_ms: float = 0.0
    stats_at: float = 0.0
    last_stats: dict[str, tuple[int, int]] = field(default_factory=dict)
    probing: asyncio.Task[None] | None = None
    #: the server refused this client's credentials at the last probe (a bad or missing token)
    refused: PysonicError | None = None

    @property
    def name(self) -> str:
        return self.transport.name


class Balanced(AsyncTransport):
    """Choose a server per request (least loaded, or round robin for comparison)."""

    def __init__(
        self,
        transports: Sequence[GrpcTransport],
        *,
        policy: Policy = "least_loaded",
        preferred: str | None = None,
        saturation_queue_ms: float = 100.0,
        probe_interval_s: float = 10.0,
        stats_interval_s: float = 1.0,
        eject_base_s: float = 1.0,
        eject_max_s: float = 30.0,
        metrics: ClientMetrics | None = None,
    ) -> None:
        if not transports:
            raise UnavailableError("no servers configured (site configuration is empty)")
        self.servers = [ServerStatus(t) for t in transports]
        self.name = "balanced(" + ",".join(s.name for s in self.servers) + ")"
        self.policy = policy
        self.preferred = preferred
        self.saturation_queue_ms = saturation_queue_ms
        self.probe_interval_s = probe_interval_s
        self.stats_interval_s = stats_interval_s
        self.eject_base_s, self.eject_max_s = eject_base_s, eject_max_s
        self.metrics = metrics
        self._rr = itertools.count()
        self._tasks: set[asyncio.Task[None]] = set()

    # ------------------------------------------------------------------ discovery
    async def _probe(self, s: ServerStatus) -> None:
        s.probed_at = time.monotonic()
        try:
            if not await s.transport.server_ready(timeout=2.0):
                s.models = None
                return
            index = await s.transport.repository_index(timeout=2.0)
        except (UnauthenticatedError, PermissionDeniedError) as err:
            # up, but not for us: a configuration error to report, not an outage to wait out
            log.warning("server %s refused the credentials: %s", s.name, err.message)
            s.models, s.refused = None, err
            return
        except PysonicError as err:
            log.info("server %s unreachable: %s", s.name, err.message)
            s.models = None
            return
        s.models = {m.name for m in index if m.state == "READY"}
        s.refused = None

    async def discover(self) -> dict[str, list[str]]:
        """Probe every server now; returns model -> server names."""
        await asyncio.gather(*(self._probe(s) for s in self.servers))
        table: dict[str, list[str]] = {}
        for s in self.servers:
            for m in sorted(s.models or ()):
                table.setdefault(m, []).append(s.name)
        return table

    async def _refresh(self, now: float) -> None:
        """Probe stale servers (and ejected ones whose period is over); concurrent callers
        share one probe per server and all wait for it, so nobody picks from a half-known map."""
        for s in self.servers:
            due = s.probed_at == 0.0 or now - s.probed_at > self.probe_interval_s
            back = bool(s.ejected_until) and now >= s.ejected_until
            if (due or back) and s.probing is None:
                s.probed_at = now
                s.probing = asyncio.create_task(self._probe_and_readmit(s))
        pending = [s.probing for s in self.servers if s.probing is not None]
        if pending:
            await asyncio.gather(*pending)

    async def _probe_and_readmit(self, s: ServerStatus) -> None:
        try:
            await self._probe(s)
            if s.ejected_until and s.models is not None:
                s.ejected_until = 0.0
                log.info("server %s is back after ejection", s.name)
        finally:
            s.probing = None

    # ------------------------------------------------------------------ choice
    def _pick(self, model: str, exclude: frozenset[str], now: float) -> ServerStatus | None:
        ok = [
            s
            for s in self.servers
            if s.models is not None
            and model in s.models
            and s.name not in exclude
            and now >= s.ejected_until
        ]
        if not ok:
            return None
        for s in ok:
            if s.name == self.preferred:
                return s
        if self.policy == "round_robin":
            return ok[next(self._rr) % len(ok)]
        healthy = [s for s in ok if s.queue_ms <= self.saturation_queue_ms] or ok
        return min(healthy, key=lambda s: (s.outstanding + 1) * (1 + s.queue_ms / 10))

    async def infer(
        self,
        request: InferRequest,
        *,
        timeout: float | None = None,
        exclude: frozenset[str] = frozenset(),
    ) -> InferResponse:
        now = time.monotonic()
        await self._refresh(now)
        s = self._pick(request.model_name, exclude, now)
        if s is None:
            have = [x.name for x in self.servers if x.models and request.model_name in x.models]
            refused = [x for x in self.servers if x.refused is not None]
            if not have and refused:
                err = refused[0].refused
                assert err is not None
                names = ", ".join(x.name for x in refused)
                msg = f"server(s) {names} refused this client's credentials: {err.message}"
                raise type(err)(msg, server=refused[0].name)
            msg = (
                f"no server can serve model '{request.model_name}' now (with the model: "
                f"{', '.join(have) or 'none'}; excluded: {', '.join(sorted(exclude)) or 'none'})"
            )
            raise UnavailableError(msg)
        s.outstanding += 1
        s.sent += 1
        start = time.perf_counter()
        try:
            response = await s.transport.infer(request, timeout=timeout)
        except PysonicError as err:
            s.failures += 1
            if isinstance(err, UnavailableError):
                self._eject(s)
            if self.metrics:
                self.metrics.observe(request.model_name, s.name, 0.0, type(err).__name__)
            err.server = s.name
            raise
        finally:
            s.outstanding -= 1
        if self.metrics:
            self.metrics.observe(request.model_name, s.name, time.perf_counter() - start, "ok")
        if time.monotonic() - s.stats_at > self.stats_interval_s:
            s.stats_at = time.monotonic()
            task = asyncio.create_task(self._update_queue(s, request.model_name))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return response

    def _eject(self, s: ServerStatus) -> None:
        period = min(self.eject_base_s * 2**s.ejections, self.eject_max_s)
        s.ejections += 1
        s.ejected_until = time.monotonic() + period
        if self.metrics:
            self.metrics.ejections.labels(s.name).inc()
        log.warning("ejecting server %s for %.1f s after a failure", s.name, period)

    async def _update_queue(self, s: ServerStatus, model: str) -> None:
        """Queue time per execution over the last interval (SuperSONIC's saturation signal)."""
        try:
            stats = await s.transport.model_statistics(model)
        except PysonicError:
            return
        queue = sum(x.inference_stats.queue.ns for x in stats)
        execs = sum(x.execution_count for x in stats)
        prev = s.last_stats.get(model)
        s.last_stats[model] = (queue, execs)
        if prev is not None and execs > prev[1]:
            s.queue_ms = (queue - prev[0]) / (execs - prev[1]) / 1e6

    # ------------------------------------------------------------------ passthrough
    async def model_config(self, model: str, version: str = "") -> model_config_pb2.ModelConfig:
        await self._refresh(time.monotonic())
        return await self._any(model).model_config(model, version)

    async def model_statistics(
        self, model: str, version: str = ""
    ) -> list[service_pb2.ModelStatistics]:
        return await self._any(model).model_statistics(model, version)

    def _any(self, model: str) -> GrpcTransport:
        for s in self.servers:
            if s.models and model in s.models:
                return s.transport
        return self.servers[0].transport

    async def close(self) -> None:
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*(s.transport.close() for s in self.servers))
