"""What sits in a scheduler queue, and the record of the batch it ran in.

The server core builds a :class:`PendingRequest` per inference request (inputs already validated,
in the model's input order) and gets it back through the scheduler's ``deliver`` callback with
either ``outputs`` (views into the batch's output arrays) or ``error`` set, plus the timestamps
that ModelStatistics and the Prometheus metrics are made of.

Example::

    req = PendingRequest(inputs={"x": x}, rows=x.shape[0])
    scheduler.submit(req)
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["ExecutedBatch", "PendingRequest", "RequestState"]


class RequestState(enum.Enum):
    QUEUED = 0
    DELAYED = 1  # timed out under a DELAY policy: runs after every non-delayed request
    RUNNING = 2
    DONE = 3


@dataclass(slots=True, eq=False)
class ExecutedBatch:
    """One backend execution: its size and monotonic timestamps (ns)."""

    rows: int
    request_count: int
    start_ns: int = 0
    input_end_ns: int = 0
    infer_end_ns: int = 0
    end_ns: int = 0

    @property
    def compute_input_ns(self) -> int:
        return self.input_end_ns - self.start_ns

    @property
    def compute_infer_ns(self) -> int:
        return self.infer_end_ns - self.input_end_ns

    @property
    def compute_output_ns(self) -> int:
        return self.end_ns - self.infer_end_ns


@dataclass(slots=True, eq=False)
class PendingRequest:
    """A request waiting for, or done with, execution.

    ``rows`` is the request's size on the batch axis (1 for models that do not batch).
    ``priority`` 0 means the model's default level; ``timeout_ns`` 0 means the queue policy's
    default. ``shape_key`` groups requests that may share a batch (equal non-batch shapes).
    ``context`` is opaque to the scheduler (the core keeps its future and timing there), and so
    is ``origin`` (what a per-request backend needs to know of the request: id, parameters).
    """

    inputs: dict[str, np.ndarray]
    rows: int = 1
    priority: int = 0
    timeout_ns: int = 0
    context: Any = None
    origin: Any = None
    shape_key: tuple[Any, ...] = ()
    outputs: dict[str, np.ndarray] | None = None
    error: BaseException | None = None
    batch: ExecutedBatch | None = None
    state: RequestState = RequestState.QUEUED
    level: int = 1
    seq: int = 0
    enqueue_ns: int = 0
    deadline_ns: int = 0

    @property
    def queue_ns(self) -> int:
        """Time spent queued (until its batch started, or until it was rejected)."""
        if self.batch is not None:
            return self.batch.start_ns - self.enqueue_ns
        return 0
