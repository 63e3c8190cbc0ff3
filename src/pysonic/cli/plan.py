"""``pysonic plan``: seed 003's t_SONIC capacity model from measurements or flags.

Example::

    pysonic plan --timing-json direct.json --perf-csv lite.csv:3.5 --ping 127.0.0.1:8001 \\
        --jobs 1000 --plot plan.png
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

__all__ = ["plan"]


def _perf_part(text: str) -> tuple[Path, float]:
    path, sep, per_event = text.rpartition(":")
    if not sep or not path:
        return Path(text), 1.0
    try:
        return Path(path), float(per_event)
    except ValueError:
        return Path(text), 1.0


def plan(
    p: Annotated[
        float | None, typer.Option("--p", min=0.0, max=1.0, help="p: inference share (0..1).")
    ] = None,
    t_cpu_ms: Annotated[
        float | None, typer.Option(help="t_CPU: all-CPU time per event (ms).")
    ] = None,
    timing_json: Annotated[
        Path | None,
        typer.Option(help="Workflow timing report of an all-direct run: gives p and t_CPU."),
    ] = None,
    ml_modules: Annotated[
        list[str] | None,
        typer.Option(help="Modules counted as inference in --timing-json (default: the ML ones)."),
    ] = None,
    t_gpu_ms: Annotated[
        float | None, typer.Option(help="t_GPU: server time per event (ms).")
    ] = None,
    perf_csv: Annotated[
        list[str] | None,
        typer.Option(
            help="FILE[:INFERENCES_PER_EVENT] from `pysonic perf -f`; t_GPU = sum of "
            "per-event inferences / max Inferences/Second. Repeatable (one per model)."
        ),
    ] = None,
    server_throughput: Annotated[
        float | None, typer.Option(help="Events/s one server sustains: t_GPU = 1 / this.")
    ] = None,
    t_latency_ms: Annotated[
        float | None, typer.Option(help="t_latency: added latency per event (ms).")
    ] = None,
    ping: Annotated[
        str | None, typer.Option(help="HOST:PORT to ping for t_latency (median round trip).")
    ] = None,
    protocol: Annotated[str, typer.Option("-i", "--protocol", help="Ping over grpc | http.")] = (
        "grpc"
    ),
    round_trips: Annotated[
        float, typer.Option(help="Sequential remote calls per event (t_latency = this x ping).")
    ] = 1.0,
    n_gpu: Annotated[int, typer.Option(min=1, help="N_GPU: servers.")] = 1,
    jobs: Annotated[
        int | None, typer.Option(min=1, help="N_CPU to size for: servers needed, events/s.")
    ] = None,
    max_jobs: Annotated[
        int | None, typer.Option(min=1, help="Curve up to this many jobs per server.")
    ] = None,
    plot: Annotated[Path | None, typer.Option(help="Write the curve (PNG) here.")] = None,
    json_path: Annotated[Path | None, typer.Option("--json", help="Write results as JSON.")] = None,
) -> None:
    """Capacity planning with seed 003's t_SONIC model.


    A job handles events one after another. Symbols (times per event):
      p          share of the all-CPU per-event time that is inference (offloaded by SONIC)
      t_CPU      per-event time of the job with all inference on its CPU
      t_GPU      per-event time of the offloaded inference on one server (coprocessor)
      t_latency  per-event latency added by the remote calls (network round trips)
      N_CPU      client jobs;   N_GPU  servers

      t_ideal = (1 - p) t_CPU + t_GPU + t_latency
      t_SONIC = (1 - p) t_CPU + t_GPU [1 + max(0, N_CPU/N_GPU - t_ideal/t_GPU)] + t_latency

    Unsaturated (N_CPU/N_GPU <= t_ideal/t_GPU) each job runs at t_ideal; saturated, t_SONIC =
    t_GPU N_CPU/N_GPU. Prints events/s per job and in total vs jobs per server, the saturation
    point, the servers needed for --jobs, and plots the curve.

    Each input comes from a flag or a measurement: p and t_CPU from --timing-json (a `pysonic
    workflow run --timing-json` report of an all-direct run); t_GPU from --perf-csv (`pysonic perf
    -f`: the highest Inferences/Second) or --server-throughput; t_latency from --ping."""
    from pysonic.perf import plan as planner

    console = Console()
    source: dict[str, str] = {}
    if timing_json is not None:
        from pysonic.workflow import TimingReport
        from pysonic.workflow._miniaod import ML_MODULES

        report = TimingReport.from_json(timing_json)
        p_t, t_cpu_t = planner.timing_inputs(report, ml_modules or list(ML_MODULES))
        if p is None:
            p, source["p"] = p_t, f"{timing_json}"
        if t_cpu_ms is None:
            t_cpu_ms, source["t_CPU"] = t_cpu_t * 1e3, f"{timing_json}"
    if t_gpu_ms is None and perf_csv:
        parts = [_perf_part(x) for x in perf_csv]
        t_gpu = planner.t_gpu_from_throughputs(
            (n, planner.perf_csv_throughput(path)) for path, n in parts
        )
        t_gpu_ms, source["t_GPU"] = t_gpu * 1e3, ", ".join(perf_csv)
    if t_gpu_ms is None and server_throughput:
        t_gpu_ms, source["t_GPU"] = 1e3 / server_throughput, "--server-throughput"
    if t_latency_ms is None and ping:
        t_latency_ms = planner.ping(ping, protocol) * 1e3 * round_trips
        source["t_latency"] = f"ping {ping} x {round_trips:g}"
    missing = [n for n, v in (("p", p), ("t_CPU", t_cpu_ms), ("t_GPU", t_gpu_ms)) if v is None]
    if missing:
        raise typer.BadParameter(f"no value for {', '.join(missing)}: see --help for the sources")
    try:
        model = planner.SonicModel(
            float(p or 0.0),
            float(t_cpu_ms or 0.0) / 1e3,
            float(t_gpu_ms or 0.0) / 1e3,
            (t_latency_ms or 0.0) / 1e3,
            n_gpu,
        )
    except ValueError as err:
        raise typer.BadParameter(str(err)) from None
    inputs = Table(title="t_SONIC inputs")
    for col in ("symbol", "value", "from"):
        inputs.add_column(col)
    inputs.add_row("p", f"{model.p:.3f}", source.get("p", "--p"))
    inputs.add_row("t_CPU", f"{model.t_cpu * 1e3:.3f} ms", source.get("t_CPU", "--t-cpu-ms"))
    inputs.add_row("t_GPU", f"{model.t_gpu * 1e3:.3f} ms", source.get("t_GPU", "--t-gpu-ms"))
    inputs.add_row(
        "t_latency", f"{model.t_latency * 1e3:.3f} ms", source.get("t_latency", "--t-latency-ms")
    )
    inputs.add_row("N_GPU", str(model.n_gpu), "--n-gpu")
    inputs.add_row("t_ideal", f"{model.t_ideal * 1e3:.3f} ms", "(1-p) t_CPU + t_GPU + t_latency")
    console.print(inputs)
    top = max_jobs or max(4, math.ceil(2 * model.saturation_jobs / model.n_gpu))
    curve = model.curve(range(1, top + 1))
    table = Table(title=f"events/s vs client jobs ({model.n_gpu} server(s))")
    for col in ("jobs", "t_SONIC ms", "ev/s per job", "ev/s total", "vs all-CPU", "state"):
        table.add_column(col, justify="right")
    for row in curve:
        n = int(row["jobs"])
        table.add_row(
            str(n),
            f"{row['t_sonic_ms']:.2f}",
            f"{row['events_per_s_per_job']:.2f}",
            f"{row['events_per_s_total']:.2f}",
            f"{model.speedup(n):.2f}x",
            "[red]saturated[/red]" if row["saturated"] else "ok",
        )
    console.print(table)
    console.print(
        f"saturation at {model.saturation_jobs:.2f} jobs for {model.n_gpu} server(s) "
        f"({model.saturation_jobs / model.n_gpu:.2f} per server); the servers top out at "
        f"{model.n_gpu / model.t_gpu:.1f} events/s"
    )
    result = {"model": model.to_dict(), "curve": curve, "sources": source}
    if jobs is not None:
        need = model.servers_needed(jobs)
        sized = planner.SonicModel(model.p, model.t_cpu, model.t_gpu, model.t_latency, need)
        console.print(
            f"{jobs} jobs need {need} server(s) to stay unsaturated: "
            f"{sized.events_per_s(jobs):.2f} events/s per job, "
            f"{sized.total_events_per_s(jobs):.1f} in total"
        )
        result["sizing"] = {"jobs": jobs, "servers_needed": need}
    if plot is not None:
        console.print(f"plot: {planner.plot_plan(model, top, plot)}")
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(result, indent=2))
        console.print(f"JSON: {json_path}")
