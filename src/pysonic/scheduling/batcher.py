"""The dynamic batcher: one queue per model, N instance threads pulling batches from it.

Semantics follow Triton's ``dynamic_batching``:

* Requests are queued per priority level (1 is highest); batches are formed from the front of the
  queue in priority order, counting **rows** (the batch axis), never requests.
* A batch is sent at once when it reaches the largest preferred size (or ``max_batch_size``
  without preferred sizes), or when a prefix of the queued requests forms a preferred size.
  Otherwise the batcher waits up to ``max_queue_delay`` from the oldest queued request for more,
  then sends what it has. It also sends at once when the batch cannot grow: the next request has
  different non-batch shapes or would pass ``max_batch_size``.
* ``max_queue_size`` is enforced at submit time: a full queue is an immediate
  ``ResourceExhaustedError``, never a wait. Queue timeouts (policy default or the request's
  override when allowed) reject the request (REJECT) or move it behind every other request (DELAY).
* ``preserve_ordering`` delivers responses in arrival order whatever instance finishes first.
* Without dynamic batching every request runs alone, as sent (the server uses the lighter
  :class:`~pysonic.scheduling.DefaultScheduler` for such models; this class behaves the same).

Execution is :class:`~pysonic.scheduling.instances.InstancePool`'s: one thread per instance,
inputs concatenated once per batch, views of the outputs per request, one ``deliver`` call per
batch from the instance thread.

Example::

    batcher = DynamicBatcher(BatcherConfig.from_model_config(cfg), [backend.execute], deliver)
    batcher.start()
    batcher.submit(PendingRequest(inputs={"x": x}, rows=len(x)))
"""

from __future__ import annotations

import heapq
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence

from pysonic.errors import ResourceExhaustedError, UnavailableError
from pysonic.scheduling.instances import Deliver, Executor, InstancePool
from pysonic.scheduling.policy import BatcherConfig, TimeoutAction
from pysonic.scheduling.request import ExecutedBatch, PendingRequest, RequestState

__all__ = ["DynamicBatcher", "Executor"]

_QUEUED, _DELAYED, _RUNNING, _DONE = (
    RequestState.QUEUED,
    RequestState.DELAYED,
    RequestState.RUNNING,
    RequestState.DONE,
)


class DynamicBatcher(InstancePool):
    """Queue + batch formation + instance threads for one model version."""

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
        self._work = threading.Condition(self._lock)
        self._timer = threading.Condition(self._lock)
        self._queues: list[deque[PendingRequest]] = [deque() for _ in range(config.priority_levels)]
        self._delayed: deque[PendingRequest] = deque()
        self._level_counts = [0] * config.priority_levels
        self._queued = 0
        self._seq = 0
        self._deadlines: list[tuple[int, int, PendingRequest]] = []
        self._closed = False
        self._preferred = frozenset(config.preferred_batch_sizes)
        self._order_lock = threading.Lock()
        self._next_seq = 1
        #: preserve_ordering: finished requests by arrival seq (None: dropped, nobody to tell)
        self._finished: dict[int, PendingRequest | None] = {}

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        """Start one thread per executor, and the timer thread for queue timeouts."""
        self._start_instances()
        timer = threading.Thread(
            target=self._timer_loop, name=f"pysonic-{self.name}-timer", daemon=True
        )
        timer.start()
        self._threads.append(timer)

    def stop(self, timeout: float = 30.0) -> int:
        """Refuse new work, let queued and running requests finish for up to ``timeout``
        seconds, then fail what is still queued with UnavailableError. Returns that number."""
        deadline = time.monotonic() + timeout
        with self._lock:
            self._closed = True
            self._work.notify_all()
            self._timer.notify_all()
        self._join(deadline)
        cancelled: list[PendingRequest] = []
        with self._lock:
            for req in self._iter_live():
                req.state = _DONE
                req.error = UnavailableError(
                    f"model '{self.name}' was unloaded before this request ran"
                )
                cancelled.append(req)
            for q in self._queues:
                q.clear()
            self._delayed.clear()
            self._queued = 0
            self._work.notify_all()
        if cancelled:
            self._complete(cancelled)
        self._join(deadline + 1.0)
        return len(cancelled)

    @property
    def pending_count(self) -> int:
        """Requests queued and not yet executing."""
        return self._queued

    # ------------------------------------------------------------------ submit
    def submit(self, req: PendingRequest) -> None:
        """Queue ``req``; raises ResourceExhaustedError at once if its level's queue is full."""
        cfg = self.config
        level = cfg.level_of(req.priority)
        policy = cfg.policy_for(level)
        timeout_ns = policy.default_timeout_ns
        if req.timeout_ns > 0 and policy.allow_timeout_override:
            timeout_ns = req.timeout_ns
        now = time.monotonic_ns()
        with self._lock:
            if self._closed:
                msg = f"model '{self.name}' is not accepting requests (unloading or shutting down)"
                raise UnavailableError(msg)
            if self._level_counts[level - 1] >= policy.max_queue_size:
                msg = (
                    f"inference request queue of model '{self.name}' is full "
                    f"(priority level {level}, max_queue_size {policy.max_queue_size})"
                )
                raise ResourceExhaustedError(msg)
            self._seq += 1
            req.seq = self._seq
            req.level = level
            req.enqueue_ns = now
            req.state = _QUEUED
            self._queues[level - 1].append(req)
            self._level_counts[level - 1] += 1
            self._queued += 1
            if timeout_ns > 0:
                req.deadline_ns = now + timeout_ns
                heapq.heappush(self._deadlines, (req.deadline_ns, req.seq, req))
                if self._deadlines[0][2] is req:
                    self._timer.notify()
            self._work.notify()

    def cancel(self, req: PendingRequest) -> bool:
        """Drop ``req`` if it is still queued (its caller went away); True if it was dropped.

        A request already running is left to finish; nobody is told about a dropped one."""
        with self._lock:
            if req.state is not _QUEUED and req.state is not _DELAYED:
                return False
            req.state = _DONE
            self._level_counts[req.level - 1] -= 1
            self._queued -= 1
        if self.config.preserve_ordering:
            with self._order_lock:  # keep the delivery sequence moving past the dropped one
                self._finished[req.seq] = None
        return True

    # ------------------------------------------------------------------ queue internals
    def _iter_live(self) -> Iterator[PendingRequest]:
        for q in self._queues:
            for req in q:
                if req.state is _QUEUED:
                    yield req
        for req in self._delayed:
            if req.state is _DELAYED:
                yield req

    def _purge_heads(self) -> None:
        for q in self._queues:
            while q and q[0].state is not _QUEUED:
                q.popleft()
        while self._delayed and self._delayed[0].state is not _DELAYED:
            self._delayed.popleft()

    def _collect(self, now: int) -> tuple[list[PendingRequest] | None, int | None]:
        """Form a batch (lock held). Returns (batch, None), or (None, wake_at_ns or None)."""
        self._purge_heads()
        live = self._iter_live()
        head = next(live, None)
        if head is None:
            return None, None
        cfg = self.config
        if not cfg.dynamic:
            return self._take([head]), None
        batch = [head]
        rows = head.rows
        best = 1 if rows in self._preferred else 0
        target = cfg.target_batch_size
        blocked = False
        if rows < target:
            for req in live:
                if req.shape_key != head.shape_key or rows + req.rows > cfg.max_batch_size:
                    blocked = True
                    break
                batch.append(req)
                rows += req.rows
                if rows in self._preferred:
                    best = len(batch)
                if rows >= target:
                    break
        if best:  # the largest preferred prefix wins, even over a batch that overshot the target
            return self._take(batch[:best]), None
        if rows >= target or blocked:
            return self._take(batch), None
        wake_at = head.enqueue_ns + cfg.max_queue_delay_ns
        if now >= wake_at or self._closed:
            return self._take(batch), None
        return None, wake_at

    def _take(self, batch: list[PendingRequest]) -> list[PendingRequest]:
        for req in batch:
            self._level_counts[req.level - 1] -= 1
            req.state = _RUNNING
        self._queued -= len(batch)
        self._running += len(batch)
        self._purge_heads()
        return batch

    # ------------------------------------------------------------------ threads
    def _instance_loop(self, execute: Executor) -> None:
        while True:
            with self._lock:
                while True:
                    now = time.monotonic_ns()
                    batch, wake_at = self._collect(now)
                    if batch is not None:
                        if self._queued:
                            self._work.notify()  # another idle instance may take the rest
                        break
                    if self._closed:
                        return
                    self._work.wait(None if wake_at is None else (wake_at - now) / 1e9)
            self._run(batch, execute)

    def _timer_loop(self) -> None:
        """Apply queue timeouts: REJECT fails the request, DELAY moves it behind the others."""
        while True:
            expired: list[PendingRequest] = []
            with self._lock:
                if self._closed:
                    return
                now = time.monotonic_ns()
                while self._deadlines and self._deadlines[0][0] <= now:
                    _, _, req = heapq.heappop(self._deadlines)
                    if req.state is not _QUEUED:
                        continue
                    policy = self.config.policy_for(req.level)
                    if policy.timeout_action is TimeoutAction.DELAY:
                        req.state = _DELAYED
                        self._delayed.append(req)
                        continue
                    req.state = _DONE
                    req.error = UnavailableError(
                        f"request timeout expired: queued longer than "
                        f"{(req.deadline_ns - req.enqueue_ns) // 1000} us in model '{self.name}'"
                    )
                    self._level_counts[req.level - 1] -= 1
                    self._queued -= 1
                    expired.append(req)
                if not expired:
                    wait = (self._deadlines[0][0] - now) / 1e9 if self._deadlines else None
                    self._timer.wait(wait)
                    continue
            self._complete(expired)

    # ------------------------------------------------------------------ delivery
    def _complete(self, done: list[PendingRequest]) -> None:
        if not self.config.preserve_ordering:
            self._deliver(done)
            return
        with self._order_lock:
            for r in done:
                self._finished[r.seq] = r
            ready: list[PendingRequest] = []
            while self._next_seq in self._finished:
                r = self._finished.pop(self._next_seq)
                if r is not None:  # a dropped request is never delivered
                    ready.append(r)
                self._next_seq += 1
            if ready:
                self._deliver(ready)
