"""What every scheduler shares: N instance threads that execute batches and hand them back.

A scheduler owns one thread per model instance (one ``Executor`` each: a backend's ``execute``).
:meth:`InstancePool._run` is the one execution path: concatenate the batch's inputs once (not at
all for a batch of one), execute, give every request views of its own output rows, stamp the
timestamps that statistics are made of, and deliver the whole batch with one ``deliver`` call from
the instance thread (the server core moves it to its event loop in one wake-up). A pool built with
``per_request=True`` skips the concatenation: its executors take the batch's requests as they are
and return one result per request (outputs or an exception), for backends that must see requests
one by one (Triton's Python backend).

Two schedulers build on it, as in Triton: :class:`~pysonic.scheduling.DynamicBatcher` (priority
queues, batch formation, queue policies) and :class:`~pysonic.scheduling.DefaultScheduler` (the
default scheduler of a model without ``dynamic_batching``: every request runs alone, first come
first served). :func:`make_scheduler` picks the one a configuration asks for.

Example::

    scheduler = make_scheduler(BatcherConfig.from_model_config(cfg), [backend.execute], deliver)
    scheduler.start()
"""

from __future__ import annotations

import abc
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from pysonic.errors import InternalError, PysonicError
from pysonic.scheduling.policy import BatcherConfig
from pysonic.scheduling.request import ExecutedBatch, PendingRequest, RequestState

__all__ = ["Executor", "InstancePool", "RequestsExecutor", "make_scheduler"]

log = logging.getLogger(__name__)

Executor = Callable[[Mapping[str, np.ndarray]], dict[str, np.ndarray]]
#: A per-request executor: the batch's requests in, one outputs-or-exception per request out.
RequestsExecutor = Callable[[list[PendingRequest]], list[dict[str, np.ndarray] | Exception]]
Deliver = Callable[[list[PendingRequest]], None]


class InstancePool(abc.ABC):
    """Instance threads and the execution path; subclasses own the queue."""

    def __init__(
        self,
        name: str,
        executors: Sequence[Executor],
        deliver: Deliver,
        on_execution: Callable[[ExecutedBatch], None] | None,
        per_request: bool = False,
    ) -> None:
        if not executors:
            raise ValueError("a batcher needs at least one executor")
        self.name = name
        self._executors = list(executors)
        self._deliver = deliver
        self._on_execution = on_execution
        self._per_request = per_request
        self._lock = threading.Lock()
        self._running = 0
        self._threads: list[threading.Thread] = []

    # ------------------------------------------------------------------ subclass interface
    @abc.abstractmethod
    def submit(self, req: PendingRequest) -> None:
        """Queue ``req``; a full queue raises ResourceExhaustedError at once."""

    @abc.abstractmethod
    def cancel(self, req: PendingRequest) -> bool:
        """Drop ``req`` if it is still queued (its caller went away)."""

    @abc.abstractmethod
    def stop(self, timeout: float = 30.0) -> int:
        """Refuse new work, drain for up to ``timeout`` s, fail the rest; how many failed."""

    @property
    @abc.abstractmethod
    def pending_count(self) -> int:
        """Requests queued and not yet executing."""

    @abc.abstractmethod
    def _instance_loop(self, execute: Executor) -> None:
        """One instance thread: take work, :meth:`_run` it, until stopped."""

    # ------------------------------------------------------------------ shared
    @property
    def in_flight(self) -> int:
        """Requests queued or executing."""
        return self.pending_count + self._running

    def _start_instances(self) -> None:
        for i, execute in enumerate(self._executors):
            t = threading.Thread(
                target=self._instance_loop,
                args=(execute,),
                name=f"pysonic-{self.name}-{i}",
                daemon=True,
            )
            t.start()
            self._threads.append(t)

    def _join(self, deadline: float) -> None:
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))

    def _run(self, batch: list[PendingRequest], execute: Executor) -> None:
        rows = sum(r.rows for r in batch)
        executed = ExecutedBatch(rows=rows, request_count=len(batch))
        executed.start_ns = time.monotonic_ns()
        ok = False
        try:
            if self._per_request:
                self._execute_requests(batch, execute, executed)  # type: ignore[arg-type]
            else:
                self._execute_batch(batch, execute, executed)
            ok = True
        except PysonicError as err:
            for r in batch:
                r.error = err
        except Exception as err:  # a backend bug must not kill the instance thread
            log.exception("model '%s' failed on a batch of %d rows", self.name, rows)
            wrapped = InternalError(f"model '{self.name}' failed: {type(err).__name__}: {err}")
            for r in batch:
                r.error = wrapped
        now = time.monotonic_ns()
        executed.input_end_ns = executed.input_end_ns or now
        executed.infer_end_ns = executed.infer_end_ns or now
        executed.end_ns = now
        for r in batch:
            r.batch = executed
            r.state = RequestState.DONE
        with self._lock:
            self._running -= len(batch)
        if ok and self._on_execution is not None:
            self._on_execution(executed)
        self._complete(batch)

    def _execute_batch(
        self, batch: list[PendingRequest], execute: Executor, executed: ExecutedBatch
    ) -> None:
        if len(batch) == 1:
            inputs = batch[0].inputs
        else:
            inputs = {
                name: np.concatenate([r.inputs[name] for r in batch], axis=0)
                for name in batch[0].inputs
            }
        executed.input_end_ns = time.monotonic_ns()
        outputs = execute(inputs)
        executed.infer_end_ns = time.monotonic_ns()
        self._split(batch, outputs, executed.rows)

    def _execute_requests(
        self, batch: list[PendingRequest], execute: RequestsExecutor, executed: ExecutedBatch
    ) -> None:
        """Per-request executors: no concatenation; each request gets its own result."""
        executed.input_end_ns = time.monotonic_ns()
        results = execute(batch)
        executed.infer_end_ns = time.monotonic_ns()
        if len(results) != len(batch):
            msg = (
                f"model '{self.name}' returned {len(results)} responses for a batch of "
                f"{len(batch)} requests"
            )
            raise InternalError(msg)
        for r, result in zip(batch, results, strict=True):
            if isinstance(result, PysonicError):
                r.error = result
            elif isinstance(result, BaseException):
                r.error = InternalError(f"model '{self.name}': {type(result).__name__}: {result}")
            else:
                r.outputs = result

    def _split(
        self, batch: list[PendingRequest], outputs: dict[str, np.ndarray], rows: int
    ) -> None:
        if len(batch) == 1:
            batch[0].outputs = outputs
            return
        for name, arr in outputs.items():
            if arr.ndim == 0 or arr.shape[0] != rows:
                msg = (
                    f"model '{self.name}' output '{name}' has shape {list(arr.shape)}; "
                    f"expected {rows} rows on the batch axis"
                )
                raise InternalError(msg)
        offset = 0
        for r in batch:
            end = offset + r.rows
            r.outputs = {name: arr[offset:end] for name, arr in outputs.items()}
            offset = end

    def _complete(self, done: list[PendingRequest]) -> None:
        """Hand finished requests to ``deliver`` (the dynamic batcher may reorder them)."""
        self._deliver(done)


def make_scheduler(
    config: BatcherConfig,
    executors: Sequence[Executor],
    deliver: Deliver,
    *,
    on_execution: Callable[[ExecutedBatch], None] | None = None,
    name: str = "",
    per_request: bool = False,
) -> InstancePool:
    """The scheduler Triton would use: the dynamic batcher when the config has a
    ``dynamic_batching`` block (and can batch), else the default scheduler.

    ``per_request=True``: ``executors`` are :data:`RequestsExecutor` s (see the module doc)."""
    from pysonic.scheduling.batcher import DynamicBatcher
    from pysonic.scheduling.default import DefaultScheduler

    cls = DynamicBatcher if config.dynamic else DefaultScheduler
    return cls(
        config, executors, deliver, on_execution=on_execution, name=name, per_request=per_request
    )
