"""A discrete-event simulator of SONIC at scale (``pysonic simulate``), see docs/cluster.md.

Jobs arrive in batches, each event's inference goes to a server chosen per request, servers
saturate along their measured throughput curve, and KEDA adds or removes replicas on the average
queue time. Plain Python (``heapq``), deterministic by seed.

Example::

    from pysonic.simulate import ServerProfile, seed000, simulate
    result = simulate(seed000(ServerProfile.from_perf_json(Path("perf.json"))))
    plot_simulation(result, Path("out/simulate.png"))
"""

from __future__ import annotations

from pysonic.simulate._engine import SimResult, simulate
from pysonic.simulate._model import (
    Arrivals,
    JobProfile,
    KedaPolicy,
    Scenario,
    ServerProfile,
    scenario_presets,
    seed000,
    seed002,
    t4_tagger,
)
from pysonic.simulate._plot import plot_simulation

__all__ = [
    "Arrivals",
    "JobProfile",
    "KedaPolicy",
    "Scenario",
    "ServerProfile",
    "SimResult",
    "plot_simulation",
    "scenario_presets",
    "seed000",
    "seed002",
    "simulate",
    "t4_tagger",
]
