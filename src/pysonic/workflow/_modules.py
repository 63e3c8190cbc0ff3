"""The miniAOD-like workflow's modules: real CPU work and ML steps that offload through SONIC.

CPU producers (never sleep loops): particle selection (acceptance), FastJet clustering (AK4,
AK8), jet feature building, DeepMET inputs, a boosted-top selection. ML modules are
:class:`~pysonic.workflow.ExternalWork`: ``acquire`` builds the request from products and hands
it to an :class:`~pysonic.workflow._inference.InferenceBackend`; the backend decides where the
inference runs (in-process, or a SONIC server in sync / async / pseudo-async mode) and the
module's code is the same for all of them.

Example::

    tagger = JetTagger("particlenet_ak8", backend, MODELS["particlenet_lite"], jets="ak8")
"""

from __future__ import annotations

import concurrent.futures
from typing import Any

import numpy as np

from pysonic.events.features import _dphi, _kinematics, cluster, jet_features
from pysonic.events.inputs import deepmet_event_inputs
from pysonic.models.specs import JET_CLASSES, ModelSpec
from pysonic.workflow._event import Event, ExternalWork, Producer, WaitingTaskHolder
from pysonic.workflow._inference import InferenceBackend

__all__ = [
    "ClusterJets",
    "DeepMETInputs",
    "JetFeatures",
    "JetTagger",
    "MetRegressor",
    "SelectParticles",
    "TopSelection",
]

#: name -> (radius, pT min GeV, |eta| max), as the generated files (pysonic.events.dataset)
_JETS = {"ak4": (0.4, 20.0, 2.5), "ak8": (0.8, 200.0, 2.0)}


class SelectParticles(Producer):
    """Particles in the detector acceptance (|eta| < 4.7, pT > 0.1 GeV) as float64 arrays."""

    produces = ("particles",)

    def produce(self, event: Event) -> None:
        p = event.payload["particles"]
        px, py, pz, e = (np.asarray(p[k], np.float64) for k in ("px", "py", "pz", "e"))
        pt, eta, _, _ = _kinematics(px, py, pz, e)
        keep = (np.abs(eta) < 4.7) & (pt > 0.1)
        event.put("particles", {k: np.asarray(v)[keep] for k, v in p.items()})


class ClusterJets(Producer):
    """Anti-kt jets with FastJet; truth labels by matching (dR < R/2) to the file's jets."""

    def __init__(self, collection: str) -> None:
        super().__init__(f"cluster_{collection}", consumes=("particles",), produces=(collection,))
        self.collection = collection

    def produce(self, event: Event) -> None:
        radius, pt_min, eta_max = _JETS[self.collection]
        particles = event.get("particles")
        jets = []
        for p4, idx in cluster(particles, radius, pt_min):
            pt, eta, phi, _ = _kinematics(*p4)
            if abs(eta) <= eta_max:
                jets.append(
                    {"p4": p4, "idx": idx, "pt": float(pt), "eta": float(eta), "phi": float(phi)}
                )
        truth = event.payload[self.collection]
        for jet in jets:
            dr = np.hypot(truth["eta"] - jet["eta"], _dphi(truth["phi"], jet["phi"]))
            best = int(np.argmin(dr)) if len(dr) else -1
            jet["label"] = int(truth["label"][best]) if best >= 0 and dr[best] < radius / 2 else -1
        event.put(self.collection, jets)


class JetFeatures(Producer):
    """Padded ParticleNet / ParT inputs of every jet of a collection, stacked on the batch axis."""

    def __init__(self, collection: str) -> None:
        super().__init__(
            f"features_{collection}",
            consumes=("particles", collection),
            produces=(f"{collection}_inputs",),
        )
        self.collection = collection

    def produce(self, event: Event) -> None:
        particles = event.get("particles")
        rows = [jet_features(particles, j["p4"], j["idx"]) for j in event.get(self.collection)]
        out = {k: np.stack([r[k] for r in rows]) for k in rows[0]} if rows else {}
        event.put(f"{self.collection}_inputs", out)


class DeepMETInputs(Producer):
    """Every selected particle of the event, padded to 4,500 (a batch of one)."""

    consumes = ("particles",)
    produces = ("deepmet_inputs",)

    def produce(self, event: Event) -> None:
        event.put("deepmet_inputs", deepmet_event_inputs(event.get("particles")))


class _Inference(ExternalWork):
    """Shared ExternalWork logic: send ``request(event)``, store the outputs in ``produce``."""

    def __init__(self, name: str, backend: InferenceBackend, spec: ModelSpec, source: str) -> None:
        super().__init__(name, consumes=(source,), produces=(name,))
        self.backend, self.spec, self.source = backend, spec, source
        self._inputs = [t.name for t in spec.inputs]
        self._output = spec.outputs[0].name
        self._results: dict[int, Any] = {}

    def acquire(self, event: Event, holder: WaitingTaskHolder) -> None:
        data = event.get(self.source)
        if not data:  # no jets: nothing to infer
            self._results[event.id] = None
            holder.done()
            return
        inputs = {k: np.ascontiguousarray(data[k]) for k in self._inputs}

        def finished(future: concurrent.futures.Future[dict[str, np.ndarray]]) -> None:
            err = future.exception()
            if err is None:
                self._results[event.id] = future.result()[self._output]
            holder.done(err)

        self.backend.submit(inputs).add_done_callback(finished)

    def produce(self, event: Event) -> None:
        event.put(self.name, self._results.pop(event.id))


class JetTagger(_Inference):
    """A jet tagger (ParticleNet, ParticleNet-Lite, ParT) on one jet collection: [n_jets, 5]."""

    def __init__(self, name: str, backend: InferenceBackend, spec: ModelSpec, *, jets: str) -> None:
        super().__init__(name, backend, spec, f"{jets}_inputs")

    def produce(self, event: Event) -> None:
        probs = self._results.pop(event.id)
        event.put(
            self.name, np.zeros((0, len(JET_CLASSES)), np.float32) if probs is None else probs
        )


class MetRegressor(_Inference):
    """DeepMET on the event's particles: MET (px, py)."""

    def __init__(self, name: str, backend: InferenceBackend, spec: ModelSpec) -> None:
        super().__init__(name, backend, spec, "deepmet_inputs")

    def produce(self, event: Event) -> None:
        event.put(self.name, self._results.pop(event.id)[0])


class TopSelection(Producer):
    """Boosted-top candidate: an AK8 jet with the tagger's top-vs-QCD discriminant above cut."""

    def __init__(self, tagger: str, cut: float = 0.5) -> None:
        super().__init__("top_selection", consumes=(tagger,), produces=("top_candidate",))
        self.tagger, self.cut = tagger, cut

    def produce(self, event: Event) -> None:
        probs = event.get(self.tagger)
        top = probs[:, 0] / np.maximum(probs[:, 0] + probs[:, 2:].sum(axis=1), 1e-12)
        event.put("top_candidate", bool((top > self.cut).any()))
