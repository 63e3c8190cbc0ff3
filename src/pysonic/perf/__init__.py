"""Performance toolkit: direct (in-process) benchmarks; load generator, configuration search
and capacity planner to come.

Example::

    points = bench_direct(Path("model_repository/particlenet_lite"), [16, 64], trials=10)
"""

from __future__ import annotations

from pysonic.perf.direct import DirectPoint, bench_direct, plot_direct

__all__ = ["DirectPoint", "bench_direct", "plot_direct"]
