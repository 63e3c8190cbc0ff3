"""``pysonic demo``: the miniAOD-like workflow direct vs through SONIC, on the bundled events.

It starts a local pysonic server (``pysonic serve`` in its own process, CPU, 127.0.0.1, free
port) on the bundled model repository, as a server next to a job would run, then runs
the workflow (:mod:`pysonic.workflow`) once with in-process inference and once with every ML
module offloaded through SONIC in async mode, then scans the number of streams for both. It
reports events/s, the inference share p, the server's batch sizes and queue vs compute time
(ModelStatistics deltas), the tagger's top-vs-QCD ROC AUC, where outputs were written, and a
PNG of events/s vs streams. Remote servers or a site configuration replace the local server.

Example::

    result = run_demo(DemoOptions(quick=True))
    result.to_dict()["events_per_s_sonic_async"]
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from pysonic.workflow._config import WorkflowConfig
from pysonic.workflow._miniaod import WorkflowResult, load_payloads, run_workflow

__all__ = [
    "DemoOptions",
    "DemoResult",
    "ServerModelStats",
    "max_output_diff",
    "plot_streams",
    "run_demo",
]

_SERVED = ("particlenet_lite", "part", "deepmet")


@dataclass(frozen=True)
class DemoOptions:
    model_repository: Path = Path("model_repository")
    events: int = 0  #: 0 = 300 (quick: 120)
    streams: int = 4
    threads: int = 2
    scan: tuple[int, ...] = (1, 2, 4)
    quick: bool = False
    server: str | None = None  #: a remote server URL instead of the local one
    site: Path | None = None  #: or a site configuration
    out_dir: Path = Path("out")


@dataclass
class ServerModelStats:
    """One model's server-side numbers over the SONIC run (ModelStatistics deltas)."""

    model: str
    requests: int
    executions: int
    batch_sizes: dict[int, int]  #: rows per execution -> executions
    queue_ms_per_request: float  #: time a request waited in the server's queue
    compute_ms_per_request: float  #: time a request spent in its batch's compute (Triton's sum)

    @property
    def mean_batch(self) -> float:
        total = sum(self.batch_sizes.values())
        return sum(k * v for k, v in self.batch_sizes.items()) / total if total else 0.0


@dataclass
class DemoResult:
    direct: WorkflowResult
    sonic: WorkflowResult
    scan: dict[str, dict[int, float]]  #: mode -> streams -> events/s
    server_stats: list[ServerModelStats]
    plot: Path | None
    seconds: float
    server: str = "local"
    max_output_diff: float = 0.0  #: largest relative difference of ML outputs, direct vs SONIC

    def to_dict(self) -> dict[str, Any]:
        return {
            "n_events": self.direct.report.events,
            "streams": self.direct.config.streams,
            "threads": self.direct.config.threads,
            "events_per_s_direct": self.direct.report.events_per_s,
            "events_per_s_sonic_async": self.sonic.report.events_per_s,
            "async_over_direct": self.sonic.report.events_per_s / self.direct.report.events_per_s,
            "inference_share_direct": self.direct.inference_share,
            "inference_share_sonic_async": self.sonic.inference_share,
            "auc": self.direct.auc,
            "auc_sonic_async": self.sonic.auc,
            "scan": {m: {str(k): v for k, v in s.items()} for m, s in self.scan.items()},
            "server": self.server,
            "server_stats": [
                {
                    **s.__dict__,
                    "batch_sizes": {str(k): v for k, v in s.batch_sizes.items()},
                    "mean_batch": s.mean_batch,
                }
                for s in self.server_stats
            ],
            "outputs": {
                "direct": str(self.direct.output_path),
                "sonic_async": str(self.sonic.output_path),
            },
            "plot": str(self.plot) if self.plot else None,
            "max_output_diff": self.max_output_diff,
            "seconds": self.seconds,
        }


def _statistics(url: str) -> dict[str, Any]:
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(url)
    try:
        return {s.name: s for s in client.get_inference_statistics().model_stats}
    finally:
        client.close()


def _stats_delta(before: dict[str, Any], after: dict[str, Any]) -> list[ServerModelStats]:
    rows = []
    for name in sorted(after):
        a, b = after[name], before.get(name)
        req = a.inference_stats.success.count - (b.inference_stats.success.count if b else 0)
        if req <= 0:
            continue
        execs = a.execution_count - (b.execution_count if b else 0)
        queue = a.inference_stats.queue.ns - (b.inference_stats.queue.ns if b else 0)
        compute = a.inference_stats.compute_infer.ns - (
            b.inference_stats.compute_infer.ns if b else 0
        )
        old = {x.batch_size: x.compute_infer.count for x in b.batch_stats} if b else {}
        sizes = {
            x.batch_size: x.compute_infer.count - old.get(x.batch_size, 0) for x in a.batch_stats
        }
        rows.append(
            ServerModelStats(
                name,
                req,
                execs,
                {k: v for k, v in sorted(sizes.items()) if v > 0},
                queue / req / 1e6,
                compute / req / 1e6,
            )
        )
    return rows


@contextlib.contextmanager
def _server(options: DemoOptions) -> Iterator[str | None]:
    if options.site is not None:
        yield None
        return
    if options.server is not None:
        yield options.server
        return
    from pysonic.server import ServerProcess

    with ServerProcess(options.model_repository, models=_SERVED) as server:
        yield server.grpc_url


def plot_streams(scan: dict[str, dict[int, float]], path: Path) -> Path:
    """Events/s vs number of streams, one line per inference mode (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for mode, points in scan.items():
        xs = sorted(points)
        ax.plot(xs, [points[x] for x in xs], marker="o", label=mode)
    ax.set_xlabel("streams (concurrent events)")
    ax.set_ylabel("events / s")
    ax.set_xticks(sorted({x for p in scan.values() for x in p}))
    ax.set_ylim(bottom=0)
    ax.set_title("miniAOD-like workflow: direct vs SONIC (local CPU server)")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def run_demo(
    options: DemoOptions, progress: Callable[[str, int, int], None] | None = None
) -> DemoResult:
    """Run the demo; ``progress(stage, done, total)`` is called once per processed event."""
    start = time.monotonic()
    n = options.events or (120 if options.quick else 300)
    n_scan = max(n // 3, 24)
    payloads = load_payloads("sample", n, spread=True)
    base = WorkflowConfig(streams=options.streams, threads=options.threads, events=n)
    sonic_overrides: dict[str, Any] = {"model_repository": options.model_repository}
    if options.site is not None:
        sonic_overrides["site"] = options.site
    direct_cfg = base.with_mode("direct", output=options.out_dir / "workflow_direct.parquet")
    direct_cfg = direct_cfg.with_inference(model_repository=options.model_repository)
    sonic_cfg = base.with_mode(
        "sonic-async", output=options.out_dir / "workflow_sonic_async.parquet"
    )
    sonic_cfg = sonic_cfg.with_inference(**sonic_overrides)
    scan: dict[str, dict[int, float]] = {"direct": {}, "sonic-async": {}}
    with _server(options) as url:

        def run(cfg: WorkflowConfig, stage: str, events: list[dict[str, Any]]) -> WorkflowResult:
            def tick(done: int) -> None:
                if progress is not None:
                    progress(stage, done, len(events))

            return run_workflow(cfg, payloads=events, server_url=url, progress=tick)

        run(replace(sonic_cfg, output=None), "warm-up", payloads[:8])
        run(replace(direct_cfg, output=None), "warm-up", payloads[:8])
        direct = run(direct_cfg, "direct", payloads)
        before = _statistics(url) if url else {}
        sonic = run(sonic_cfg, "sonic-async", payloads)
        stats = _stats_delta(before, _statistics(url)) if url else []
        for streams in options.scan:
            for mode, cfg in (("direct", direct_cfg), ("sonic-async", sonic_cfg)):
                result = run(
                    replace(cfg, streams=streams, output=None),
                    f"{mode}, {streams} streams",
                    payloads[:n_scan],
                )
                scan[mode][streams] = result.report.events_per_s
    plot = plot_streams(scan, options.out_dir / "demo_streams.png")
    where = "site" if options.site else (options.server or "local")
    diff = max_output_diff(direct, sonic)
    return DemoResult(direct, sonic, scan, stats, plot, time.monotonic() - start, where, diff)


def max_output_diff(a: WorkflowResult, b: WorkflowResult) -> float:
    """Largest difference between two runs' ML outputs on the same events, relative to
    max(|value|, 1): probabilities compare absolutely, MET in GeV relatively."""
    worst = 0.0
    for x, y in zip(a.outputs, b.outputs, strict=True):
        for key in ("ak8_particlenet", "ak8_part", "ak4_particlenet", "met"):
            if len(x[key]):
                scale = np.maximum(np.abs(x[key]), 1.0)
                worst = max(worst, float(np.max(np.abs(x[key] - y[key]) / scale)))
    return worst
