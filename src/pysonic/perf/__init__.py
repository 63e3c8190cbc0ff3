"""Performance toolkit: load generator (perf_analyzer), direct benchmark (seed 001), configuration
search (Model Analyzer) and capacity planner (seed 003's t_SONIC). See docs/perf.md.

Example::

    report = run_perf(PerfOptions(model="dense_tagger", url="127.0.0.1:8001",
                                  levels=[LoadLevel(concurrency=c) for c in (1, 2, 4)]))
    write_csv(report, Path("perf.csv"))
    SonicModel(p=0.85, t_cpu=0.07, t_gpu=0.06).saturation_jobs
    points = bench_direct(Path("model_repository/particlenet_lite"), [16, 64], trials=10)
"""

from __future__ import annotations

from pysonic.perf._engine import LoadLevel
from pysonic.perf.direct import DirectPoint, bench_direct, plot_direct
from pysonic.perf.plan import SonicModel
from pysonic.perf.profiler import PerfOptions, PerfReport, ProfileSettings, run_perf
from pysonic.perf.report import plot_perf, write_csv

__all__ = [
    "DirectPoint",
    "LoadLevel",
    "PerfOptions",
    "PerfReport",
    "ProfileSettings",
    "SonicModel",
    "bench_direct",
    "plot_direct",
    "plot_perf",
    "run_perf",
    "write_csv",
]
