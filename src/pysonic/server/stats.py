"""Per model-version statistics: the single source for ModelStatistics and Prometheus metrics.

Triton's semantics: ``success``/``fail`` count requests and their end-to-end time in the server;
``queue`` and ``compute_*`` are per request (each request in a batch is charged its batch's
compute time); ``inference_count`` counts inferences (rows on the batch axis) and
``execution_count`` backend executions; ``batch_stats`` has one entry per executed batch size.
Updates come from instance threads and the event loop, so they take a lock (tens of ns).

Example::

    stats = ModelStats("dense_tagger", 1)
    stats.record_success(total_ns=1_000_000, req=pending)
    stats.to_proto().inference_stats.success.count
"""

from __future__ import annotations

import bisect
import threading
import time

from tritonclient.grpc import service_pb2

from pysonic.scheduling import ExecutedBatch, PendingRequest

__all__ = ["LATENCY_BUCKETS_US", "ModelStats"]

#: Upper bounds (us) of the request latency histogram's buckets.
LATENCY_BUCKETS_US: tuple[float, ...] = (
    100,
    250,
    500,
    1_000,
    2_500,
    5_000,
    10_000,
    25_000,
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
)


class ModelStats:
    """Accumulators for one model version (all times in ns)."""

    def __init__(self, name: str, version: int) -> None:
        self.name = name
        self.version = version
        self._lock = threading.Lock()
        self.success_count = self.success_ns = 0
        self.fail_count = self.fail_ns = 0
        self.queue_count = self.queue_ns = 0
        self.compute_input_ns = self.compute_infer_ns = self.compute_output_ns = 0
        self.compute_count = 0
        self.inference_count = 0
        self.execution_count = 0
        self.last_inference_ms = 0
        # batch size -> [executions, input_ns, infer_ns, output_ns]
        self.batch_stats: dict[int, list[int]] = {}
        self.latency_buckets = [0] * (len(LATENCY_BUCKETS_US) + 1)

    def record_execution(self, batch: ExecutedBatch) -> None:
        """One successful backend execution (called from an instance thread)."""
        with self._lock:
            self.execution_count += 1
            self.inference_count += batch.rows
            entry = self.batch_stats.get(batch.rows)
            if entry is None:
                entry = self.batch_stats[batch.rows] = [0, 0, 0, 0]
            entry[0] += 1
            entry[1] += batch.compute_input_ns
            entry[2] += batch.compute_infer_ns
            entry[3] += batch.compute_output_ns
            self.last_inference_ms = time.time_ns() // 1_000_000

    def record_success(self, total_ns: int, req: PendingRequest) -> None:
        batch = req.batch
        with self._lock:
            self.success_count += 1
            self.success_ns += total_ns
            self.latency_buckets[bisect.bisect_left(LATENCY_BUCKETS_US, total_ns / 1000)] += 1
            if batch is not None:
                self.queue_count += 1
                self.queue_ns += batch.start_ns - req.enqueue_ns
                self.compute_count += 1
                self.compute_input_ns += batch.compute_input_ns
                self.compute_infer_ns += batch.compute_infer_ns
                self.compute_output_ns += batch.compute_output_ns

    def record_ensemble(self, total_ns: int, rows: int, step_ns: list[int]) -> None:
        """One successful ensemble request: ``step_ns`` sums its steps' queue, compute input,
        compute infer and compute output times (an ensemble has no executions of its own)."""
        queue_ns, input_ns, infer_ns, output_ns = step_ns
        with self._lock:
            self.success_count += 1
            self.success_ns += total_ns
            self.latency_buckets[bisect.bisect_left(LATENCY_BUCKETS_US, total_ns / 1000)] += 1
            self.queue_count += 1
            self.queue_ns += queue_ns
            self.compute_count += 1
            self.compute_input_ns += input_ns
            self.compute_infer_ns += infer_ns
            self.compute_output_ns += output_ns
            self.execution_count += 1
            self.inference_count += rows
            self.last_inference_ms = time.time_ns() // 1_000_000

    def record_failure(self, total_ns: int) -> None:
        with self._lock:
            self.fail_count += 1
            self.fail_ns += total_ns

    def snapshot(self) -> dict[str, int]:
        """A consistent copy of the scalar counters (for metrics)."""
        with self._lock:
            return {
                "success_count": self.success_count,
                "success_ns": self.success_ns,
                "fail_count": self.fail_count,
                "fail_ns": self.fail_ns,
                "queue_count": self.queue_count,
                "queue_ns": self.queue_ns,
                "compute_count": self.compute_count,
                "compute_input_ns": self.compute_input_ns,
                "compute_infer_ns": self.compute_infer_ns,
                "compute_output_ns": self.compute_output_ns,
                "inference_count": self.inference_count,
                "execution_count": self.execution_count,
            }

    def latency_histogram(self) -> tuple[list[int], int]:
        """Cumulative bucket counts (aligned with LATENCY_BUCKETS_US plus +Inf) and sum (ns)."""
        with self._lock:
            counts = list(self.latency_buckets)
            total = self.success_ns
        cumulative = []
        running = 0
        for c in counts:
            running += c
            cumulative.append(running)
        return cumulative, total

    def to_proto(self) -> service_pb2.ModelStatistics:
        with self._lock:
            msg = service_pb2.ModelStatistics(
                name=self.name,
                version=str(self.version),
                last_inference=self.last_inference_ms,
                inference_count=self.inference_count,
                execution_count=self.execution_count,
            )
            s = msg.inference_stats
            s.success.count, s.success.ns = self.success_count, self.success_ns
            s.fail.count, s.fail.ns = self.fail_count, self.fail_ns
            s.queue.count, s.queue.ns = self.queue_count, self.queue_ns
            s.compute_input.count, s.compute_input.ns = self.compute_count, self.compute_input_ns
            s.compute_infer.count, s.compute_infer.ns = self.compute_count, self.compute_infer_ns
            s.compute_output.count, s.compute_output.ns = (
                self.compute_count,
                self.compute_output_ns,
            )
            for size in sorted(self.batch_stats):
                n, ci, cinf, co = self.batch_stats[size]
                b = msg.batch_stats.add(batch_size=size)
                b.compute_input.count, b.compute_input.ns = n, ci
                b.compute_infer.count, b.compute_infer.ns = n, cinf
                b.compute_output.count, b.compute_output.ns = n, co
        return msg
