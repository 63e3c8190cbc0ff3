"""Scheduling: the dynamic batcher, queue policies and priorities, and the instance threads."""

from __future__ import annotations

from pysonic.scheduling.batcher import DynamicBatcher, Executor
from pysonic.scheduling.policy import DEFAULT_QUEUE_CAP, BatcherConfig, QueuePolicy, TimeoutAction
from pysonic.scheduling.request import ExecutedBatch, PendingRequest, RequestState

__all__ = [
    "DEFAULT_QUEUE_CAP",
    "BatcherConfig",
    "DynamicBatcher",
    "ExecutedBatch",
    "Executor",
    "PendingRequest",
    "QueuePolicy",
    "RequestState",
    "TimeoutAction",
]
