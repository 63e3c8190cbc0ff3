"""Prometheus metrics with Triton's names and labels, read from the same counters as
ModelStatistics at scrape time, so the two always agree and the hot path pays nothing extra.

Triton exposes its cumulative counters without the ``_total`` suffix
(``nv_inference_request_success{model="m",version="1"}``); dashboards and autoscalers (KEDA's
queue-latency query) use those exact names. prometheus_client appends ``_total`` to anything typed
``counter``, so these families are exposed as ``untyped`` with Triton's sample names.

Example::

    registry = CollectorRegistry()
    registry.register(TritonMetricsCollector(core))
    server, thread = start_http_server(0, registry=registry)
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric

from pysonic.server.stats import LATENCY_BUCKETS_US

if TYPE_CHECKING:
    from pysonic.server.core import InferenceCore

__all__ = ["COUNTERS", "TritonMetricsCollector"]

_LABELS = ("model", "version")

#: Triton metric name -> (stats key, divisor to reach the unit, help text)
COUNTERS: dict[str, tuple[str, int, str]] = {
    "nv_inference_request_success": ("success_count", 1, "Number of successful inference requests"),
    "nv_inference_request_failure": ("fail_count", 1, "Number of failed inference requests"),
    "nv_inference_count": ("inference_count", 1, "Number of inferences performed (batch rows)"),
    "nv_inference_exec_count": ("execution_count", 1, "Number of model executions performed"),
    "nv_inference_request_duration_us": (
        "success_ns",
        1000,
        "Cumulative inference request duration in microseconds",
    ),
    "nv_inference_queue_duration_us": (
        "queue_ns",
        1000,
        "Cumulative inference queuing duration in microseconds",
    ),
    "nv_inference_compute_input_duration_us": (
        "compute_input_ns",
        1000,
        "Cumulative compute input duration in microseconds",
    ),
    "nv_inference_compute_infer_duration_us": (
        "compute_infer_ns",
        1000,
        "Cumulative compute inference duration in microseconds",
    ),
    "nv_inference_compute_output_duration_us": (
        "compute_output_ns",
        1000,
        "Cumulative inference compute output duration in microseconds",
    ),
}


class TritonMetricsCollector:
    """A prometheus_client collector over every loaded model version of an InferenceCore."""

    def __init__(self, core: InferenceCore) -> None:
        self.core = core

    def describe(self) -> list[Metric]:
        return []  # dynamic labels: no pre-registration checks

    def collect(self) -> Iterator[Metric]:
        versions = [v for r in list(self.core.models.values()) for v in list(r.versions.values())]
        families = {
            name: Metric(name, help_, "unknown") for name, (_, _, help_) in COUNTERS.items()
        }
        pending = GaugeMetricFamily(
            "nv_inference_pending_request_count",
            "Instantaneous number of pending requests awaiting execution per-model.",
            labels=_LABELS,
        )
        latency = HistogramMetricFamily(
            "pysonic_inference_request_duration_us",
            "Successful inference request duration in the server, in microseconds.",
            labels=_LABELS,
        )
        bounds = [*(f"{b:g}" for b in LATENCY_BUCKETS_US), "+Inf"]
        for mv in versions:
            labels = {"model": mv.name, "version": mv.version_str}
            snap = mv.stats.snapshot()
            for name, (key, div, _) in COUNTERS.items():
                value = snap[key] / div if div != 1 else snap[key]
                families[name].add_sample(name, labels, value)
            batcher = mv.batcher
            pending.add_metric([mv.name, mv.version_str], batcher.pending_count if batcher else 0)
            cumulative, total_ns = mv.stats.latency_histogram()
            latency.add_metric(
                [mv.name, mv.version_str],
                list(zip(bounds, cumulative, strict=True)),
                total_ns / 1000,
            )
        yield from families.values()
        yield pending
        yield latency
