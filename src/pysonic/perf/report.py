"""perf_analyzer's outputs for pysonic's load generator: the ``-f`` CSV, a table and a plot.

The CSV has perf_analyzer's columns, names, units (latencies in usec, integers) and row order
(increasing ``Inferences/Second``), with its ``--verbose-csv`` tail::

    Concurrency,Inferences/Second,Client Send,Network+Server Send/Recv,Server Queue,
    Server Compute Input,Server Compute Infer,Server Compute Output,Client Recv,
    p50 latency,p90 latency,p95 latency,p99 latency,Avg latency,request/response,response wait

(``Request Rate`` replaces ``Concurrency`` in request-rate mode; ``--percentile N`` adds
``pN latency`` among the percentiles and, as in perf_analyzer, drops ``Avg latency``.)

Example::

    write_csv(report, Path("perf.csv"))
    Console().print(perf_table(report))
    plot_perf(report, Path("perf.png"))
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from pathlib import Path

from rich.table import Table

from pysonic.perf.profiler import LevelResult, PerfReport

__all__ = ["csv_header", "perf_table", "plot_perf", "write_csv"]

_MIDDLE = (
    "Client Send",
    "Network+Server Send/Recv",
    "Server Queue",
    "Server Compute Input",
    "Server Compute Infer",
    "Server Compute Output",
    "Client Recv",
)


def _us(value: float) -> int:
    return 0 if math.isnan(value) else int(value)


def csv_header(mode: str, percentiles: Sequence[int], extra_percentile: bool) -> list[str]:
    head = ["Concurrency" if mode == "concurrency" else "Request Rate", "Inferences/Second"]
    head += list(_MIDDLE) + [f"p{q} latency" for q in percentiles]
    if not extra_percentile:
        head.append("Avg latency")
    return [*head, "request/response", "response wait"]


def _row(r: LevelResult) -> list[str]:
    s = r.server
    send, recv = _us(r.client_send_us), _us(r.client_recv_us)
    avg = _us(r.avg_latency_us)
    row = [
        format(r.level.concurrency if r.level.concurrency else r.level.rate, "g"),
        format(r.throughput, "g"),
        str(send),
        str(_us(r.network_us)),
        str(_us(s.avg_queue_us)),
        str(_us(s.avg_compute_input_us)),
        str(_us(s.avg_compute_infer_us)),
        str(_us(s.avg_compute_output_us)),
        str(recv),
    ]
    row += [str(_us(v)) for v in r.percentiles().values()]
    if r.percentile is None:
        row.append(str(avg))
    return [*row, str(send + recv), str(max(0, avg - send - recv))]


def write_csv(report: PerfReport, path: Path) -> Path:
    """perf_analyzer's ``-f`` file for ``report`` (rows by increasing throughput)."""
    results = sorted(report.results, key=lambda r: r.throughput)
    percentile = report.options.settings.percentile
    qs = list(results[0].percentiles()) if results else [50, 90, 95, 99]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(csv_header(report.mode, qs, percentile is not None))
        writer.writerows(_row(r) for r in results)
    return path


def perf_table(report: PerfReport) -> Table:
    """A rich table in level order: throughput, latency percentiles and where the time went."""
    o = report.options
    title = (
        f"{o.model} over {o.protocol} at {o.url}: batch {o.batch}, "
        f"{o.processes} load process(es), shared memory {o.shared_memory}"
    )
    table = Table(title=title, caption="times in ms (latency) and usec (components)")
    first = "concurrency" if report.mode == "concurrency" else "rate /s"
    cols = [first, "infer/s", "req/s", "p50", "p90", "p95", "p99", "avg", "send", "net",
            "queue", "compute", "recv", "srv batch", "gen CPU", "stable"]  # fmt: skip
    for c in cols:
        table.add_column(c, justify="right")
    for r in report.results:
        s = r.server
        compute = s.avg_compute_input_us + s.avg_compute_infer_us + s.avg_compute_output_us
        p = r.percentiles()
        note = "yes" if r.stable else "[yellow]no[/yellow]"
        if r.errors:
            note += f" [red]{r.errors} errors[/red]"
        cpu = f"{r.generator_cpu:.0%}"
        if r.generator_cpu > 0.85:
            cpu = f"[red]{cpu}[/red]"
        table.add_row(
            format(r.level.value, "g"),
            f"{r.throughput:,.1f}",
            f"{r.requests_per_s:,.1f}",
            *(f"{p[q] / 1000:.2f}" for q in (50, 90, 95, 99)),
            f"{r.avg_latency_us / 1000:.2f}",
            f"{r.client_send_us:.0f}",
            f"{r.network_us:.0f}",
            f"{s.avg_queue_us:.0f}",
            f"{compute:.0f}",
            f"{r.client_recv_us:.0f}",
            f"{s.avg_batch:.1f}",
            cpu,
            note,
        )
    return table


def plot_perf(report: PerfReport, path: Path) -> Path:
    """Latency (p50, p99) vs throughput, and each level's average latency split into parts."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = report.results
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    thr = [r.throughput for r in results]
    for q, style in ((50, "o-"), (99, "s--")):
        ax1.plot(thr, [r.percentile_us(q) / 1000 for r in results], style, label=f"p{q}")
    for r, x in zip(results, thr, strict=True):
        ax1.annotate(format(r.level.value, "g"), (x, r.percentile_us(50) / 1000), fontsize=8)
    ax1.set_xlabel("inferences / s")
    ax1.set_ylabel("latency (ms)")
    ax1.set_title(f"{report.options.model}: latency vs throughput ({report.mode})")
    ax1.grid(alpha=0.3)
    ax1.legend()
    labels = [format(r.level.value, "g") for r in results]
    parts = {
        "client send": [r.client_send_us for r in results],
        "network + server send/recv": [r.network_us for r in results],
        "server queue": [r.server.avg_queue_us for r in results],
        "server compute": [
            r.server.avg_compute_input_us + r.server.avg_compute_infer_us
            + r.server.avg_compute_output_us
            for r in results
        ],
        "client recv": [r.client_recv_us for r in results],
    }  # fmt: skip
    bottom = [0.0] * len(results)
    for name, values in parts.items():
        ms = [v / 1000 for v in values]
        ax2.bar(labels, ms, bottom=bottom, label=name)
        bottom = [b + v for b, v in zip(bottom, ms, strict=True)]
    ax2.set_xlabel(report.mode)
    ax2.set_ylabel("average latency (ms)")
    ax2.set_title("where the time goes")
    ax2.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
