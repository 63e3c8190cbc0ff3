"""The small interface every runtime implements, and what the server hands it.

A backend instance is created once per model instance (``instance_group { count: N }`` gives N),
is used from exactly one thread (its instance thread), and only ever sees numpy arrays: it knows
nothing about transports or batching. ``execute`` receives the (possibly batched) inputs and
returns every output the model produces; the server splits and filters them.

A backend that must see a batch as the separate requests it is made of (Triton's Python backend:
``TritonPythonModel.execute(requests)``) sets :attr:`Backend.per_request` and implements
:meth:`Backend.execute_requests`; the scheduler then hands it one :class:`BackendRequest` per
client request instead of concatenated inputs, and each request gets its own result or error.

Example::

    class Doubler(Backend):
        def execute(self, inputs):
            return {"y": inputs["x"] * 2}
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from tritonclient.grpc import model_config_pb2

__all__ = ["Backend", "BackendRequest", "InstanceSpec"]


@dataclass(frozen=True, slots=True)
class InstanceSpec:
    """Where and what one backend instance runs.

    ``kind`` is the instance group's kind name (``KIND_CPU``, ``KIND_GPU``, ...), ``device_id``
    the GPU ordinal for GPU kinds, ``instance_count`` the total number of instances of this model
    version (backends use it to share the cores, e.g. intra-op threads). ``infer``, when a server
    runs the backend, sends a request to another model of that server from an instance thread
    (Triton's Business Logic Scripting): ``infer(model, version, inputs, outputs, parameters)``
    returns ``(outputs, None)`` or ``({}, error)``; it blocks the calling thread, never the loop.
    """

    model_name: str
    version: int
    version_path: Path
    config: model_config_pb2.ModelConfig
    kind: str = "KIND_CPU"
    device_id: int = 0
    instance_index: int = 0
    instance_count: int = 1
    infer: Callable[..., tuple[dict[str, np.ndarray], Exception | None]] | None = None


@dataclass(frozen=True, slots=True)
class BackendRequest:
    """One client request as a per-request backend sees it (numpy only, no transport types).

    ``inputs`` are the validated inputs in config order, ``requested_outputs`` the output names
    the client asked for (empty: all), ``parameters`` the request's parameters.
    """

    inputs: Mapping[str, np.ndarray]
    id: str = ""
    requested_outputs: tuple[str, ...] = ()
    parameters: Mapping[str, Any] = field(default_factory=dict)


class Backend(abc.ABC):
    """One loaded instance of a model on one device."""

    #: True: the scheduler calls :meth:`execute_requests` with the batch's requests one by one
    #: (not concatenated), and a failure can be one request's alone.
    per_request: ClassVar[bool] = False

    def __init__(self, spec: InstanceSpec) -> None:
        self.spec = spec

    @abc.abstractmethod
    def execute(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the model on ``inputs`` (name -> array) and return name -> output array."""

    def execute_requests(
        self, requests: Sequence[BackendRequest]
    ) -> list[dict[str, np.ndarray] | Exception]:
        """Per-request backends: one result per request, in order: its outputs or its error.

        Raising fails the whole batch; returning an exception fails that request only."""
        msg = f"{type(self).__name__} sets per_request but does not implement execute_requests"
        raise NotImplementedError(msg)

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release the runtime's resources (sessions, device memory)."""
