"""Validate ``pysonic plan`` (seed 003's t_SONIC model) with real processes on this host.

k client jobs (the miniAOD-like workflow, sonic-async, one stream each) against ONE local CPU
``pysonic serve``; every model input measured (``pysonic.perf.validate``): p and t_CPU from an
all-direct run's timing report, t_GPU from the load generator, t_latency from a ping. Prints
measured vs predicted events/s per job for each k, writes the planner's plot with the measured
points on it.

    python benchmarks/plan_validation.py --quick --json out/plan_validation.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from pysonic.perf.plan import plot_plan
from pysonic.perf.profiler import ProfileSettings
from pysonic.perf.validate import ValidationSettings, validate

ROOT = Path(__file__).resolve().parent.parent
console = Console()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="k = 1, 3; fewer events (about a minute)")
    ap.add_argument("--ks", default="", help="comma-separated job counts (default 1,2,3,4)")
    ap.add_argument("--events", type=int, help="events per job")
    ap.add_argument(
        "--server-instances",
        type=int,
        help="instances per model on the server (default: one per server core)",
    )
    ap.add_argument("--json", type=Path)
    ap.add_argument("--plot", type=Path, default=ROOT / "out" / "plan_validation.png")
    args = ap.parse_args()
    ks = (
        tuple(int(k) for k in args.ks.split(","))
        if args.ks
        else ((1, 3) if args.quick else (1, 2, 3, 4))
    )
    events = args.events or (40 if args.quick else 120)
    perf = ProfileSettings(window_ms=800 if args.quick else 1500, max_trials=4 if args.quick else 6)
    settings = ValidationSettings(
        ks=ks,
        events=events,
        direct_events=events,
        repository=ROOT / "model_repository",
        perf=perf,
        perf_concurrency=(1, 2, 4),
        server_instances=args.server_instances,
    )
    start = time.monotonic()
    result = validate(settings, progress=lambda s: console.print(f"[dim]{s}[/dim]"))
    m = result.model
    console.print(
        f"p = {m.p:.3f}, t_CPU = {m.t_cpu * 1e3:.2f} ms, t_GPU = {m.t_gpu * 1e3:.2f} ms, "
        f"t_latency = {m.t_latency * 1e3:.3f} ms, t_ideal = {m.t_ideal * 1e3:.2f} ms, "
        f"saturation at {m.saturation_jobs:.2f} jobs; server cores "
        f"{result.inputs['server_cores']} ({result.inputs['server_instances']} instance(s) per "
        f"model), client cores {result.inputs['client_cores']}"
    )
    for name, kind in result.inputs["request_kinds"].items():
        console.print(
            f"  {name}: batch {kind['batch']}, {kind['per_event']:.2f} requests/event, "
            f"server {kind['requests_per_s']:.1f} requests/s, "
            f"{kind['server_cpu_ms_per_request']:.2f} ms server CPU/request"
        )
    t_cpu_based = result.inputs["t_gpu_server_cpu_ms"]
    console.print(f"  t_GPU from the server's CPU time per request: {t_cpu_based:.2f} ms")
    mc = result.model_cpu
    console.print(
        f"t_GPU from the server's CPU time: {mc.t_gpu * 1e3:.2f} ms, "
        f"t_ideal {mc.t_ideal * 1e3:.2f} ms, saturation at {mc.saturation_jobs:.2f} jobs"
    )
    table = Table(title="t_SONIC: measured vs predicted events/s per job")
    for col in ("jobs k", "measured", "predicted", "error", "predicted (CPU t_GPU)", "error",
                "per job", "window s", "state",
                "client load", "server CPU ms/ev", "server busy", "its cores busy"):  # fmt: skip
        table.add_column(col, justify="right")
    for r in result.rows:
        table.add_row(
            str(r.k),
            f"{r.measured:.2f}",
            f"{r.predicted:.2f}",
            f"{r.error:+.1%}",
            f"{r.predicted_cpu:.2f}",
            f"{r.error_cpu:+.1%}",
            " ".join(f"{x:.1f}" for x in r.per_job),
            f"{r.window_s:.1f}",
            "saturated" if m.saturated(r.k) else "unsaturated",
            f"{r.client_load:.0%}",
            f"{r.server_cpu_ms_per_event:.1f}",
            f"{r.server_busy:.0%}",
            f"{r.server_cores_busy:.0%}",
        )
    console.print(table)
    for label, errors in (
        ("t_GPU from throughput", [r.error for r in result.rows]),
        ("t_GPU from server CPU time", [r.error_cpu for r in result.rows]),
    ):
        worst = max(abs(e) for e in errors)
        verdict = "within" if worst <= 0.15 else "NOT within"
        console.print(f"{label}: largest |error| {worst:.1%} ({verdict} 15%)")
    console.print(f"{time.monotonic() - start:.0f} s")
    plot = plot_plan(
        m, max(max(ks) + 1, 4), args.plot,
        measured=[(r.k, r.measured) for r in result.rows],
        also=result.model_cpu,
        also_label="t_GPU from server CPU time",
        title="t_SONIC model vs measured (local CPU server)",
    )  # fmt: skip
    console.print(f"plot: {plot}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({**result.to_dict(), "quick": args.quick}, indent=2))
        console.print(f"JSON: {args.json}")


if __name__ == "__main__":
    main()
