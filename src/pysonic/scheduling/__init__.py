"""Scheduling: the dynamic batcher, Triton's default scheduler, queue policies and priorities,
and the instance threads they share."""

from __future__ import annotations

from pysonic.scheduling.batcher import DynamicBatcher
from pysonic.scheduling.default import DefaultScheduler
from pysonic.scheduling.instances import (
    Executor,
    InstancePool,
    RequestsExecutor,
    make_scheduler,
)
from pysonic.scheduling.policy import DEFAULT_QUEUE_CAP, BatcherConfig, QueuePolicy, TimeoutAction
from pysonic.scheduling.request import ExecutedBatch, PendingRequest, RequestState

__all__ = [
    "DEFAULT_QUEUE_CAP",
    "BatcherConfig",
    "DefaultScheduler",
    "DynamicBatcher",
    "ExecutedBatch",
    "Executor",
    "InstancePool",
    "PendingRequest",
    "QueuePolicy",
    "RequestState",
    "RequestsExecutor",
    "TimeoutAction",
    "make_scheduler",
]
