"""The small interface every runtime implements, and what the server hands it.

A backend instance is created once per model instance (``instance_group { count: N }`` gives N),
is used from exactly one thread (its instance thread), and only ever sees numpy arrays: it knows
nothing about transports or batching. ``execute`` receives the (possibly batched) inputs and
returns every output the model produces; the server splits and filters them.

Example::

    class Doubler(Backend):
        def execute(self, inputs):
            return {"y": inputs["x"] * 2}
"""

from __future__ import annotations

import abc
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tritonclient.grpc import model_config_pb2

__all__ = ["Backend", "InstanceSpec"]


@dataclass(frozen=True, slots=True)
class InstanceSpec:
    """Where and what one backend instance runs.

    ``kind`` is the instance group's kind name (``KIND_CPU``, ``KIND_GPU``, ...), ``device_id``
    the GPU ordinal for GPU kinds, ``instance_count`` the total number of instances of this model
    version (backends use it to share the cores, e.g. intra-op threads).
    """

    model_name: str
    version: int
    version_path: Path
    config: model_config_pb2.ModelConfig
    kind: str = "KIND_CPU"
    device_id: int = 0
    instance_index: int = 0
    instance_count: int = 1


class Backend(abc.ABC):
    """One loaded instance of a model on one device."""

    def __init__(self, spec: InstanceSpec) -> None:
        self.spec = spec

    @abc.abstractmethod
    def execute(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the model on ``inputs`` (name -> array) and return name -> output array."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release the runtime's resources (sessions, device memory)."""
