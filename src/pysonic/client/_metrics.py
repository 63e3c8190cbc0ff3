"""Client-side Prometheus metrics, in a registry of their own (never the global one).

Example::

    metrics = ClientMetrics()
    server, _ = metrics.serve(9100)   # /metrics for the job's monitoring
"""

from __future__ import annotations

import logging
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server

__all__ = ["ClientMetrics"]

log = logging.getLogger("pysonic.client")


class ClientMetrics:
    """Latency, outcomes per server, retries and fallbacks of one client process."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.latency = Histogram(
            "pysonic_client_request_duration_seconds",
            "Client-side inference latency.",
            ["model", "server"],
            registry=self.registry,
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
        )
        self.requests = Counter(
            "pysonic_client_requests",
            "Inference requests sent, by server and outcome.",
            ["model", "server", "outcome"],
            registry=self.registry,
        )
        self.retries = Counter(
            "pysonic_client_retries", "Retried inference calls.", ["model"], registry=self.registry
        )
        self.fallbacks = Counter(
            "pysonic_client_fallbacks",
            "Calls served by the local fallback server.",
            ["model"],
            registry=self.registry,
        )
        self.ejections = Counter(
            "pysonic_client_ejections",
            "Servers ejected after failures.",
            ["server"],
            registry=self.registry,
        )

    def observe(self, model: str, server: str, seconds: float, outcome: str) -> None:
        self.requests.labels(model, server, outcome).inc()
        if outcome == "ok":
            self.latency.labels(model, server).observe(seconds)

    def value(self, name: str, **labels: str) -> float:
        """A sample's current value (0 if absent): handy for tests and reports."""
        v = self.registry.get_sample_value(name, labels)
        return 0.0 if v is None else v

    def serve(self, port: int, addr: str = "127.0.0.1") -> tuple[Any, Any]:
        """Expose /metrics on ``port`` (0 = free port; ``server.server_port`` tells)."""
        return start_http_server(port, addr, registry=self.registry)
