"""Input and output specifications of the shipped HEP models (no torch needed).

The single source for export configs, the events package and tests. Shapes exclude the batch axis.

Example::

    [t.name for t in PARTICLENET.inputs]
    # ['pf_points', 'pf_features', 'pf_mask', 'sv_points', 'sv_features', 'sv_mask']
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["JET_CLASSES", "PARTICLENET", "PARTICLENET_LITE", "ModelSpec", "TensorSpec"]

#: Jet-truth classes, in output order.
JET_CLASSES = ("top", "W", "b", "light", "gluon")


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int, ...]
    dtype: str = "FP32"


@dataclass(frozen=True)
class ModelSpec:
    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    max_batch_size: int = 256
    preferred_batch_sizes: tuple[int, ...] = (16, 64, 256)
    max_queue_delay_us: int = 2000


_PN_INPUTS = (
    TensorSpec("pf_points", (2, 100)),
    TensorSpec("pf_features", (20, 100)),
    TensorSpec("pf_mask", (1, 100)),
    TensorSpec("sv_points", (2, 10)),
    TensorSpec("sv_features", (11, 10)),
    TensorSpec("sv_mask", (1, 10)),
)
_JET_OUT = (TensorSpec("softmax", (len(JET_CLASSES),)),)

PARTICLENET = ModelSpec("particlenet", _PN_INPUTS, _JET_OUT)
PARTICLENET_LITE = ModelSpec("particlenet_lite", _PN_INPUTS, _JET_OUT)
