"""Event generation (Pythia8 via ``pythia8mc``), jets (FastJet), datasets and model inputs.

Generation needs the ``events`` extra (``pip install 'pysonic[events]'``); reading the shipped
sample needs only awkward. See :mod:`.dataset` (the on-disk schema), :mod:`.inputs` (ParticleNet
/ ParT / DeepMET inputs), :mod:`.vectorized` (every jet's inputs at once), :mod:`.nanoaod`
(NanoAOD-like ROOT files; the ``analysis`` extra), :mod:`.sample` (the shipped sample) and
:mod:`.features`.

Example::

    events = read_events(sample_path())
    jets = jet_inputs(events, "ak8")
"""

from __future__ import annotations

from pysonic.events.dataset import (
    JET_COLLECTIONS,
    concatenate,
    file_checksum,
    read_events,
    simulate,
    write_events,
)
from pysonic.events.inputs import deepmet_inputs, jet_inputs
from pysonic.events.nanoaod import read_root, write_root
from pysonic.events.sample import SAMPLE, make_sample, sample_path, verify_sample

__all__ = [
    "JET_COLLECTIONS",
    "SAMPLE",
    "concatenate",
    "deepmet_inputs",
    "file_checksum",
    "jet_inputs",
    "make_sample",
    "read_events",
    "read_root",
    "sample_path",
    "simulate",
    "verify_sample",
    "write_events",
    "write_root",
]
