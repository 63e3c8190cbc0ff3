"""A coffea processor that tags AK8 jets with ParticleNet-Lite through pysonic and fills a
``hist`` histogram of the top score by true jet label.

The processor holds a :class:`pysonic.analysis.JetTagger` (configuration only), so the same
processor runs eagerly in one process or lazily on dask workers; where inference runs (in-process,
an embedded local server, or a site's SONIC servers) is the tagger's configuration.

Run it on the shipped sample (converted to a NanoAOD-like ROOT file first)::

    pysonic events convert sample sample.root
    python examples/coffea_tagger.py sample.root                          # embedded local server
    python examples/coffea_tagger.py sample.root --backend direct         # in-process
    python examples/coffea_tagger.py sample.root --servers 127.0.0.1:8001 # SONIC servers
    python examples/coffea_tagger.py sample.root --dask-workers 2         # dask LocalCluster
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import awkward as ak
import hist
import hist.dask
from coffea import processor
from coffea.nanoevents import NanoEventsFactory

from pysonic.analysis import JetTagger
from pysonic.analysis.coffea import PysonicNanoSchema
from pysonic.models import JET_CLASSES

__all__ = ["JetTagProcessor", "run"]


def _dask_awkward() -> Any:
    import dask_awkward

    return dask_awkward


class JetTagProcessor(processor.ProcessorABC):
    """FatJets -> ParticleNet-Lite scores (pysonic) -> histogram of P(top) by jet label."""

    def __init__(self, tagger: JetTagger) -> None:
        self.tagger = tagger

    def process(self, events: Any) -> dict[str, Any]:
        jets = events.FatJet
        tagged = self.tagger(jets, jets.constituents.pf)  # PFNano: each jet's PF candidates
        lazy = type(events).__module__.startswith("dask_awkward")
        lib = _dask_awkward() if lazy else ak  # the same calls, eager or as a dask graph
        axes = (
            hist.axis.IntCategory(
                range(len(JET_CLASSES)), name="label", label="/".join(JET_CLASSES)
            ),
            hist.axis.Regular(20, 0.0, 1.0, name="score", label="ParticleNet-Lite P(top)"),
        )
        h = hist.dask.Hist(*axes) if lazy else hist.Hist(*axes)
        score = tagged[f"{self.tagger.prefix}top"]
        h.fill(label=lib.flatten(tagged.label), score=lib.flatten(score))
        return {"score_by_label": h}

    def postprocess(self, accumulator: dict[str, Any]) -> dict[str, Any]:
        return accumulator


def run(path: Path, tagger: JetTagger, *, dask_client: Any = None, steps: int = 4) -> dict:
    """Process one ROOT file: eagerly here, or (``dask_client``) as a dask graph on its workers."""
    proc = JetTagProcessor(tagger)
    if dask_client is None:
        events = NanoEventsFactory.from_root(
            {str(path): "Events"}, schemaclass=PysonicNanoSchema, mode="eager"
        ).events()
        return proc.process(events)
    import dask
    import uproot

    with uproot.open(path) as f:
        n = f["Events"].num_entries
    step = max(-(-n // steps), 1)  # explicit chunks: dask knows each partition's length
    chunks = [[start, min(start + step, n)] for start in range(0, n, step)]
    files = {str(path): {"object_path": "Events", "steps": chunks}}
    events = NanoEventsFactory.from_root(files, schemaclass=PysonicNanoSchema, mode="dask").events()
    (out,) = dask.compute(proc.process(events), scheduler=dask_client.get)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("file", type=Path, help="NanoAOD-like ROOT file (pysonic events convert)")
    parser.add_argument("--backend", choices=("local", "direct", "site"), default="local")
    parser.add_argument("--servers", default="", help="host:port,... (implies --backend site)")
    parser.add_argument("--model-repository", default="model_repository")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--dask-workers", type=int, default=0, help="run on a LocalCluster")
    args = parser.parse_args()
    tagger = JetTagger(
        backend="site" if args.servers else args.backend,
        servers=args.servers,
        model_repository=args.model_repository,
        batch_size=args.batch_size,
    )
    if args.dask_workers:
        from distributed import Client, LocalCluster

        with (
            LocalCluster(n_workers=args.dask_workers, threads_per_worker=1) as cluster,
            Client(cluster) as client,
        ):
            out = run(args.file, tagger, dask_client=client)
    else:
        out = run(args.file, tagger)
    h = out["score_by_label"]
    print(f"{int(h.sum())} jets")
    for i, name in enumerate(JET_CLASSES):
        counts = h[{"label": i}].values()
        print(f"{name:>6}: {int(counts.sum()):5d} jets, P(top) {counts.astype(int).tolist()}")


if __name__ == "__main__":
    main()
