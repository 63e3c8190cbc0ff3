"""HEP models (ParticleNet, ParticleNet-Lite; ParT and DeepMET to come): definitions in torch
(an optional extra), input specs without torch, and deterministic ONNX export.

Example::

    from pysonic.models import PARTICLENET
    [t.name for t in PARTICLENET.inputs]
"""

from __future__ import annotations

from pysonic.models.specs import JET_CLASSES, PARTICLENET, PARTICLENET_LITE, ModelSpec, TensorSpec

__all__ = ["JET_CLASSES", "PARTICLENET", "PARTICLENET_LITE", "ModelSpec", "TensorSpec"]
