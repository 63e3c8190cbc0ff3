"""Scheduling settings, read once from a model's config.pbtxt.

``BatcherConfig.from_model_config`` turns Triton's ``dynamic_batching`` block (preferred sizes,
queue delay, ordering, priority levels and queue policies) into plain frozen values, so the batcher
never touches protobuf on the hot path.

Example::

    cfg = BatcherConfig.from_model_config(model_config)
    cfg.policy_for(priority=0).max_queue_size
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from tritonclient.grpc import model_config_pb2

__all__ = ["DEFAULT_QUEUE_CAP", "BatcherConfig", "QueuePolicy", "TimeoutAction"]

#: Hard cap on queued requests per priority level when config.pbtxt leaves ``max_queue_size`` at 0
#: (Triton's "unbounded"): a queue without a bound turns overload into memory exhaustion.
DEFAULT_QUEUE_CAP = 16384


class TimeoutAction(enum.Enum):
    REJECT = "REJECT"
    DELAY = "DELAY"


@dataclass(frozen=True, slots=True)
class QueuePolicy:
    """One priority level's queue policy (Triton's ``ModelQueuePolicy``)."""

    timeout_action: TimeoutAction = TimeoutAction.REJECT
    default_timeout_ns: int = 0
    allow_timeout_override: bool = False
    max_queue_size: int = DEFAULT_QUEUE_CAP

    @classmethod
    def from_proto(cls, proto: model_config_pb2.ModelQueuePolicy, cap: int) -> QueuePolicy:
        action = (
            TimeoutAction.DELAY
            if proto.timeout_action == model_config_pb2.ModelQueuePolicy.DELAY
            else TimeoutAction.REJECT
        )
        size = proto.max_queue_size if proto.max_queue_size > 0 else cap
        return cls(
            timeout_action=action,
            default_timeout_ns=proto.default_timeout_microseconds * 1000,
            allow_timeout_override=proto.allow_timeout_override,
            max_queue_size=min(size, cap) if cap > 0 else size,
        )


@dataclass(frozen=True, slots=True)
class BatcherConfig:
    """Everything the scheduler needs from config.pbtxt.

    ``dynamic`` is False when the model has no ``dynamic_batching`` block (or cannot batch,
    ``max_batch_size == 0``): each request then runs as sent. Priority levels are 1-based as in
    Triton (1 is the highest); a request's priority 0 means the default level.
    """

    model_name: str = ""
    max_batch_size: int = 0
    dynamic: bool = False
    preferred_batch_sizes: tuple[int, ...] = ()
    max_queue_delay_ns: int = 0
    preserve_ordering: bool = False
    priority_levels: int = 1
    default_priority_level: int = 1
    default_policy: QueuePolicy = field(default_factory=QueuePolicy)
    level_policies: dict[int, QueuePolicy] = field(default_factory=dict)

    @classmethod
    def from_model_config(
        cls, config: model_config_pb2.ModelConfig, *, queue_cap: int = DEFAULT_QUEUE_CAP
    ) -> BatcherConfig:
        if not config.HasField("dynamic_batching") or config.max_batch_size <= 0:
            return cls(
                model_name=config.name,
                max_batch_size=max(config.max_batch_size, 0),
                default_policy=QueuePolicy(max_queue_size=queue_cap),
            )
        db = config.dynamic_batching
        levels = max(db.priority_levels, 1)
        default_level = db.default_priority_level if db.priority_levels > 0 else 1
        default_policy = QueuePolicy.from_proto(db.default_queue_policy, queue_cap)
        level_policies = {
            int(level): QueuePolicy.from_proto(policy, queue_cap)
            for level, policy in db.priority_queue_policy.items()
        }
        return cls(
            model_name=config.name,
            max_batch_size=config.max_batch_size,
            dynamic=True,
            preferred_batch_sizes=tuple(sorted(set(db.preferred_batch_size))),
            max_queue_delay_ns=db.max_queue_delay_microseconds * 1000,
            preserve_ordering=db.preserve_ordering,
            priority_levels=levels,
            default_priority_level=max(1, min(default_level or 1, levels)),
            default_policy=default_policy,
            level_policies=level_policies,
        )

    def level_of(self, priority: int) -> int:
        """Map a request's priority to a level: 0, or a value past the last level, means the
        default level (as Triton's ``InferenceRequest::SetPriority``)."""
        if priority <= 0 or priority > self.priority_levels:
            return self.default_priority_level
        return priority

    def policy_for(self, level: int) -> QueuePolicy:
        return self.level_policies.get(level, self.default_policy)

    @property
    def target_batch_size(self) -> int:
        """The batch size at which waiting for more requests stops paying."""
        if self.preferred_batch_sizes:
            return min(self.preferred_batch_sizes[-1], self.max_batch_size)
        return self.max_batch_size
