"""What each server is given for a model, read once from its Triton ``config.pbtxt``.

Every peer serves the same ONNX file with the same instance count, ORT threads per instance,
maximum batch size and queue delay. :class:`ModelPlan` is that common ground, in plain types, so
it can be handed as JSON to the scripts that run in the peers' own environments (which have no
pysonic to parse a config with).

Example::

    plans = model_plans(Path("model_repository"), ["particlenet_lite"])
    plans[0].instances, plans[0].intra_op_threads   # (2, 1)
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

__all__ = ["ModelPlan", "model_plans"]


@dataclass(frozen=True)
class ModelPlan:
    """One model as every peer must serve it (dims without the batch dimension)."""

    name: str
    onnx: str
    inputs: list[tuple[str, str, list[int]]]
    outputs: list[tuple[str, str, list[int]]]
    max_batch_size: int
    dynamic_batching: bool
    preferred_batch_sizes: list[int]
    max_queue_delay_us: int
    instances: int
    intra_op_threads: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        """The settings in one line, for the table's notes."""
        batching = (
            f"dynamic batching (preferred {self.preferred_batch_sizes}, "
            f"max queue delay {self.max_queue_delay_us} us)"
            if self.dynamic_batching
            else "no dynamic batching"
        )
        return (
            f"{self.name}: {self.instances} instance(s) x {self.intra_op_threads} ORT thread(s), "
            f"max_batch_size {self.max_batch_size}, {batching}"
        )


def _cores() -> int:
    return len(os.sched_getaffinity(0))


def model_plans(repository: Path, names: Sequence[str]) -> list[ModelPlan]:
    """Plans for ``names``, following pysonic's (= Triton's) defaults for unset fields."""
    from tritonclient.grpc.model_config_pb2 import DataType

    from pysonic.protocol.datatypes import config_to_wire
    from pysonic.repository import ModelRepository

    def wire(t: Any) -> str:
        return config_to_wire(DataType.Name(t.data_type))

    repo = ModelRepository(repository)
    plans = []
    for name in names:
        model = repo.load(name)
        cfg = model.config
        instances = sum(g.count or 1 for g in cfg.instance_group) or 1
        params = {k: v.string_value for k, v in cfg.parameters.items()}
        # pysonic's ORT backend: unset intra_op_thread_count = cores // instance count
        threads = int(params.get("intra_op_thread_count", max(1, _cores() // instances)))
        batching = cfg.HasField("dynamic_batching")
        plans.append(
            ModelPlan(
                name=name,
                onnx=str(model.model_file().resolve()),
                inputs=[(t.name, wire(t), list(t.dims)) for t in cfg.input],
                outputs=[(t.name, wire(t), list(t.dims)) for t in cfg.output],
                max_batch_size=cfg.max_batch_size,
                dynamic_batching=batching,
                preferred_batch_sizes=list(cfg.dynamic_batching.preferred_batch_size),
                max_queue_delay_us=cfg.dynamic_batching.max_queue_delay_microseconds,
                instances=instances,
                intra_op_threads=threads or _cores(),
            )
        )
    return plans
