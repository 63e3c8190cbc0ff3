"""HEP models (ParticleNet, ParticleNet-Lite, ParT, DeepMET): definitions in torch (an optional
extra), input specs without torch, deterministic ONNX export, training.

Example::

    from pysonic.models import PARTICLENET
    [t.name for t in PARTICLENET.inputs]
"""

from __future__ import annotations

from pysonic.models.specs import (
    DEEPMET,
    DEEPMET_FEATURES,
    JET_CLASSES,
    MODELS,
    PART,
    PARTICLENET,
    PARTICLENET_LITE,
    ModelSpec,
    TensorSpec,
)

__all__ = [
    "DEEPMET",
    "DEEPMET_FEATURES",
    "JET_CLASSES",
    "MODELS",
    "PART",
    "PARTICLENET",
    "PARTICLENET_LITE",
    "ModelSpec",
    "TensorSpec",
]
