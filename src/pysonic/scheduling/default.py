"""Triton's default scheduler: a model without ``dynamic_batching`` runs every request alone.

Triton uses it when a config names no scheduling choice: requests go to the model's instances
first come, first served, each executed as sent. pysonic keeps it apart from the dynamic batcher
because nothing here needs batch formation, priorities or queue timeouts (those live in the
``dynamic_batching`` block): instance threads block in ``queue.SimpleQueue.get`` (one C call)
instead of a Python condition variable, which is most of a tiny model's per-request cost. The
queue is still bounded (``--max-queue-size``): a full queue is an immediate
``ResourceExhaustedError``. A request whose caller went away is skipped, and ``stop`` drains as
the dynamic batcher does.

Example::

    scheduler = DefaultScheduler(BatcherConfig.from_model_config(cfg), [backend.execute], deliver)
    scheduler.start()
    scheduler.submit(PendingRequest(inputs={"x": x}))
"""

from __future__ import annotations

import queue
import time
from collections.abc import Callable, Sequence

from pysonic.errors import ResourceExhaustedError, UnavailableError
from pysonic.scheduling.instances import Deliver, Executor, InstancePool
from pysonic.scheduling.policy import BatcherConfig
from pysonic.scheduling.request import ExecutedBatch, PendingRequest, RequestState

__all__ = ["DefaultScheduler"]

_QUEUED, _RUNNING, _DONE = RequestState.QUEUED, RequestState.RUNNING, RequestState.DONE


class DefaultScheduler(InstancePool):
    """One FIFO queue, N instance threads, no batching."""

    def __init__(
        self,
        config: BatcherConfig,
        executors: Sequence[Executor],
        deliver: Deliver,
        *,
        on_execution: Callable[[ExecutedBatch], None] | None = None,
        name: str = "",
        per_request: bool = False,
    ) -> None:
        super().__init__(name or config.model_name, executors, deliver, on_execution, per_request)
        self.config = config
        self._cap = config.policy_for(config.default_priority_level).max_queue_size
        self._jobs: queue.SimpleQueue[PendingRequest | None] = queue.SimpleQueue()
        self._queued = 0
        self._closed = False

    def start(self) -> None:
        self._start_instances()

    @property
    def pending_count(self) -> int:
        return self._queued

    def submit(self, req: PendingRequest) -> None:
        now = time.monotonic_ns()
        with self._lock:
            if self._closed:
                msg = f"model '{self.name}' is not accepting requests (unloading or shutting down)"
                raise UnavailableError(msg)
            if self._queued >= self._cap:
                msg = f"inference request queue of model '{self.name}' is full ({self._cap})"
                raise ResourceExhaustedError(msg)
            self._queued += 1
            req.enqueue_ns = now
            req.state = _QUEUED
            self._jobs.put(req)  # under the lock: never behind stop()'s sentinels

    def cancel(self, req: PendingRequest) -> bool:
        with self._lock:
            if req.state is not _QUEUED:
                return False
            req.state = _DONE
            self._queued -= 1
        return True

    def _instance_loop(self, execute: Executor) -> None:
        get = self._jobs.get
        while True:
            req = get()
            if req is None:
                return
            with self._lock:
                if req.state is not _QUEUED:  # cancelled, or failed by stop()
                    continue
                req.state = _RUNNING
                self._queued -= 1
                self._running += 1
            self._run([req], execute)
            del req  # idle instances must not pin the last request's tensors (shm views)

    def stop(self, timeout: float = 30.0) -> int:
        deadline = time.monotonic() + timeout
        with self._lock:
            self._closed = True
            for _ in self._threads:  # FIFO: every queued request runs before these
                self._jobs.put(None)
        self._join(deadline)
        cancelled: list[PendingRequest] = []
        with self._lock:  # instances stuck past the deadline: fail what still waits for them
            while True:
                try:
                    req = self._jobs.get_nowait()
                except queue.Empty:
                    break
                if req is not None and req.state is _QUEUED:
                    req.state = _DONE
                    req.error = UnavailableError(
                        f"model '{self.name}' was unloaded before this request ran"
                    )
                    self._queued -= 1
                    cancelled.append(req)
            for _ in self._threads:  # a stuck instance exits once its execution returns
                self._jobs.put(None)
        if cancelled:
            self._complete(cancelled)
        self._join(deadline + 1.0)
        return len(cancelled)
