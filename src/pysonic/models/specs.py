"""Input and output specifications of the shipped HEP models (no torch needed).

The single source for export configs, the events package and tests. Shapes exclude the batch axis.

Example::

    [t.name for t in PARTICLENET.inputs]
    # ['pf_points', 'pf_features', 'pf_mask', 'sv_points', 'sv_features', 'sv_mask']
"""

from __future__ import annotations

from dataclasses import dataclass

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

#: Jet-truth classes, in output order.
JET_CLASSES = ("top", "W", "b", "light", "gluon")

#: DeepMET's continuous per-particle features (``pf_features`` last axis), in order.
DEEPMET_FEATURES = ("px", "py", "pt", "eta", "phi", "d0", "dz", "mass")


@dataclass(frozen=True)
class TensorSpec:
    """One tensor; ``vocab`` is the number of categories of a categorical (integer) input."""

    name: str
    shape: tuple[int, ...]
    dtype: str = "FP32"
    vocab: int | None = None


@dataclass(frozen=True)
class ModelSpec:
    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    max_batch_size: int = 256
    preferred_batch_sizes: tuple[int, ...] = (16, 64, 256)
    max_queue_delay_us: int = 2000
    #: where the padded (particle) axis is: last for jets ([C, P]), first for events ([P, C])
    points_first: bool = False
    #: CPU serving defaults, chosen by measurement on a 2-core host shared with the job
    #: (benchmarks/workflow.py): single-threaded instances (no intra-op spinning against the
    #: job's threads), two of them so one model's long batch does not idle a core
    instances: int = 2
    intra_op_threads: int = 1


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
#: per-jet cost on one CPU thread is lowest at batches of 8-16
PARTICLENET_LITE = ModelSpec(
    "particlenet_lite", _PN_INPUTS, _JET_OUT, preferred_batch_sizes=(8, 16, 64)
)

#: Particle Transformer: features plus four-vectors (px, py, pz, E) for the pairwise interactions.
PART = ModelSpec(
    "part",
    (
        TensorSpec("pf_features", (20, 100)),
        TensorSpec("pf_vectors", (4, 100)),
        TensorSpec("pf_mask", (1, 100)),
        TensorSpec("sv_features", (11, 10)),
        TensorSpec("sv_vectors", (4, 10)),
        TensorSpec("sv_mask", (1, 10)),
    ),
    _JET_OUT,
    max_batch_size=256,
    # on one CPU thread ParT's per-jet cost grows with the batch (10.0 ms at 1, 11.5 at 16):
    # batch little on a CPU server (a GPU server's config would prefer large batches)
    preferred_batch_sizes=(2, 4),
)

#: DeepMET-like: every particle of the event (padded to 4,500, padding all zero / category 0).
#: Categories: charge index (0 pad, 1 negative, 2 neutral, 3 positive); particle class (0 pad,
#: 1 charged hadron, 2 neutral hadron, 3 photon, 4 electron, 5 muon, 6 forward hadronic,
#: 7 forward EM); fromPV (0 pad or neutral, 1 displaced track, 2 unused, 3 prompt track).
DEEPMET = ModelSpec(
    "deepmet",
    (
        TensorSpec("pf_features", (4500, len(DEEPMET_FEATURES))),
        TensorSpec("pf_charge", (4500, 1), "INT32", vocab=4),
        TensorSpec("pf_pdgid", (4500, 1), "INT32", vocab=8),
        TensorSpec("pf_frompv", (4500, 1), "INT32", vocab=4),
    ),
    (TensorSpec("met", (2,)),),
    max_batch_size=64,
    preferred_batch_sizes=(1, 2),  # per-event cost grows with the batch on a CPU thread
    points_first=True,
)

#: Every exportable model by its repository name.
MODELS: dict[str, ModelSpec] = {s.name: s for s in (PARTICLENET, PARTICLENET_LITE, PART, DEEPMET)}
