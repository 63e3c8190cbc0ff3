"""Transport-neutral request and response objects (what codecs produce and consume).

Tensors are numpy arrays: views over the received bytes for fixed-size datatypes, object arrays
of ``bytes`` for BYTES. The codecs build these; the server core validates them against the
model's configuration.

Example::

    req = InferRequest(
        model_name="particlenet_lite",
        inputs=[InferTensor("pf_points", "FP32", (1, 2, 100), np.zeros((1, 2, 100), "f4"))],
    )
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from pysonic.protocol.shm import SharedMemoryTarget

__all__ = ["InferRequest", "InferResponse", "InferTensor", "RequestedOutput"]


@dataclass(slots=True)
class InferTensor:
    """One named tensor: wire datatype, declared shape and the data as a numpy array."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    data: np.ndarray
    parameters: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class RequestedOutput:
    """An output the client asked for (with per-output parameters such as ``classification``).

    ``shm`` is set when the output goes to a registered shared-memory region: the core writes
    the result there (:func:`pysonic.protocol.shm.write_outputs`) instead of the response."""

    name: str
    parameters: dict[str, Any] = field(default_factory=dict)
    shm: SharedMemoryTarget | None = None


@dataclass(slots=True)
class InferRequest:
    """A decoded inference request; ``model_version`` is ``""`` for the default version."""

    model_name: str
    inputs: list[InferTensor]
    model_version: str = ""
    id: str = ""
    outputs: list[RequestedOutput] = field(default_factory=list)
    parameters: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class InferResponse:
    """A computed response; output arrays may be views into the batch's output buffers."""

    model_name: str
    model_version: str
    outputs: list[InferTensor]
    id: str = ""
    parameters: dict[str, Any] = field(default_factory=dict)
