"""dask-awkward support: tag each partition on whichever worker runs it.

The graph holds the :class:`~pysonic.analysis.JetTagger` (its configuration, a few hundred bytes)
and the input collections, nothing live: each worker process builds its own client on its first
partition and reuses it for the rest (:func:`pysonic.analysis._engine.engine`). During dask's
column optimization the partition function sees typetracers; it then marks only the fields the
input builder reads, so coffea reads just those branches from the file.

Example::

    events = NanoEventsFactory.from_root({path: "Events"}, mode="dask").events()
    jets = tagger(events.FatJet, events.FatJet.constituents.pf)      # lazy
    hist.dask.Hist(...).fill(score=ak.flatten(jets.score_top))       # computed on the workers
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pysonic._extras import require
from pysonic.analysis._columns import touch_columns

if TYPE_CHECKING:
    from pysonic.analysis._tagger import JetTagger

__all__ = ["tag_dask"]


def _typetracer_result(tagger: JetTagger, jets: Any) -> Any:
    """What a tagged partition looks like, built from the jets' structure alone."""
    import awkward as ak

    index = ak.local_index(jets, axis=jets.ndim - 1)
    for name, values in tagger.output_fields(tagger._empty_outputs()).items():
        jets = ak.with_field(jets, ak.values_astype(index, values.dtype), name)
    return jets


def _partition(tagger: JetTagger, jets: Any, constituents: Any) -> Any:
    import awkward as ak

    if "typetracer" in (ak.backend(jets), ak.backend(constituents)):
        touch_columns(jets, constituents)
        return _typetracer_result(tagger, jets)
    return tagger.tag(jets, constituents)


def tag_dask(tagger: JetTagger, jets: Any, constituents: Any) -> Any:
    """Lazy tagging: one task per partition, the jets' partitions with scores attached."""
    dak = require("dask_awkward")
    if not (isinstance(jets, dak.Array) and isinstance(constituents, dak.Array)):
        msg = "jets and constituents must both be dask-awkward arrays (or both awkward)"
        raise TypeError(msg)
    meta = _typetracer_result(tagger, jets._meta)
    return dak.map_partitions(
        _partition, tagger, jets, constituents, label="pysonic-jet-tagger", meta=meta
    )
