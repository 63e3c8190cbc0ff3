"""SONIC inference for analysis facilities: awkward arrays, coffea processors, dask workers.

Jagged jets and their constituents in, the same jets with model scores attached out; the model's
padded, masked inputs are built for all jets at once (no Python loop over jets or events), sent in
requests of a configurable size with many in flight, and the answers come back in jet order.
Where inference runs is configuration only: in-process (``direct``), an embedded local server
(``local``) or a site's SONIC servers (``site``). A tagger is picklable configuration; each
process (a dask worker, say) connects on first use.

Heavy packages (uproot, hist, coffea, dask) are the ``analysis`` extra:
``pip install 'pysonic[analysis]'``; this module itself needs only awkward.

Example::

    from pysonic.analysis import JetTagger, jet_constituents
    from pysonic.events import read_events, sample_path

    events = read_events(sample_path())
    tagger = JetTagger("particlenet_lite", backend="local")
    jets = tagger(events.ak8, jet_constituents(events, "ak8"))
    jets.score_top

coffea: ``tagger(events.FatJet, events.FatJet.constituents.pf)``; a drop-in for coffea's
``triton_wrapper`` is :class:`pysonic.analysis.coffea.triton_wrapper`.
"""

from __future__ import annotations

from pysonic.analysis._columns import (
    FlatJets,
    attach_outputs,
    flatten_jets,
    jet_constituents,
    pad_jagged,
)
from pysonic.analysis._engine import BACKENDS, EngineSpec, close_engines, engine
from pysonic.analysis._tagger import JET_INPUTS, JetTagger

__all__ = [
    "BACKENDS",
    "JET_INPUTS",
    "EngineSpec",
    "FlatJets",
    "JetTagger",
    "attach_outputs",
    "close_engines",
    "engine",
    "flatten_jets",
    "jet_constituents",
    "pad_jagged",
]
