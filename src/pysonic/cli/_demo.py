"""Rendering of ``pysonic demo``'s result as rich tables (no logic of its own)."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from pysonic.demo import DemoResult

__all__ = ["print_demo"]


def print_demo(result: DemoResult, console: Console) -> None:
    d = result.to_dict()
    runs = Table(
        title=f"miniAOD-like workflow: {d['n_events']} events, {d['streams']} streams, "
        f"{d['threads']} threads (server: {result.server})"
    )
    for col in ("inference", "events/s", "vs direct", "inference share p", "top-vs-QCD AUC"):
        runs.add_column(col, justify="right")
    for name, run in (("direct (in-process)", result.direct), ("SONIC async", result.sonic)):
        auc = "n/a" if run.auc is None else f"{run.auc:.4f}"
        runs.add_row(
            name,
            f"{run.report.events_per_s:.1f}",
            f"{run.report.events_per_s / result.direct.report.events_per_s:.3f}",
            f"{run.inference_share:.2f}",
            auc,
        )
    console.print(runs)
    console.print(
        f"ML outputs direct vs SONIC: max relative difference {result.max_output_diff:.1e}"
    )
    if result.server_stats:
        server = Table(title="server during the SONIC run (ModelStatistics deltas)")
        for col in (
            "model",
            "requests",
            "executions",
            "mean batch",
            "batch sizes (size x n)",
            "queue ms/req",
            "compute ms/req",
        ):
            server.add_column(col, justify="right")
        for s in result.server_stats:
            sizes = " ".join(f"{k}x{v}" for k, v in list(s.batch_sizes.items())[:8])
            if len(s.batch_sizes) > 8:
                sizes += " ..."
            server.add_row(
                s.model,
                str(s.requests),
                str(s.executions),
                f"{s.mean_batch:.1f}",
                sizes,
                f"{s.queue_ms_per_request:.2f}",
                f"{s.compute_ms_per_request:.2f}",
            )
        console.print(server)
    scan = Table(title="events/s vs streams")
    scan.add_column("streams", justify="right")
    for mode in result.scan:
        scan.add_column(mode, justify="right")
    for streams in sorted(next(iter(result.scan.values()))):
        scan.add_row(str(streams), *(f"{result.scan[m][streams]:.1f}" for m in result.scan))
    console.print(scan)
    console.print(f"outputs: {result.direct.output_path}, {result.sonic.output_path}")
    console.print(f"plot: {result.plot}    ({result.seconds:.0f} s)")
