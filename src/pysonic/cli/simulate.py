"""``pysonic simulate``: the continuous-flow simulator (see docs/cluster.md).

Example::

    pysonic perf -m particlenet_lite -u 127.0.0.1:8001 --concurrency-range 1:16:2 --json perf.json
    pysonic simulate --scenario seed000 --profile perf.json --out-dir out/sim
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table

__all__ = ["simulate"]

console = Console()
T = TypeVar("T")


def simulate(
    scenario: Annotated[str, typer.Option(help="Preset: seed000 | seed002.")] = "seed000",
    profile: Annotated[
        Path | None,
        typer.Option(help="Server throughput curve: `pysonic perf --json` output (concurrency)."),
    ] = None,
    startup_s: Annotated[
        float | None, typer.Option(help="Replica start-up delay, seconds.")
    ] = None,
    jobs: Annotated[int | None, typer.Option(help="Jobs in all.")] = None,
    batch: Annotated[int | None, typer.Option(help="Jobs submitted together.")] = None,
    interval_s: Annotated[float | None, typer.Option(help="Seconds between batches.")] = None,
    events: Annotated[int | None, typer.Option(help="Events per job.")] = None,
    cpu_s: Annotated[float | None, typer.Option(help="CPU seconds per event (mean).")] = None,
    streams: Annotated[int | None, typer.Option(help="Streams per job.")] = None,
    servers: Annotated[int | None, typer.Option(help="Servers at t = 0.")] = None,
    keda: Annotated[bool | None, typer.Option(help="Autoscale with the KEDA policy.")] = None,
    min_replicas: Annotated[int | None, typer.Option(help="KEDA minimum replicas.")] = None,
    max_replicas: Annotated[int | None, typer.Option(help="KEDA maximum replicas.")] = None,
    threshold_ms: Annotated[
        float | None, typer.Option(help="KEDA threshold: average queue time, ms.")
    ] = None,
    polling_s: Annotated[float | None, typer.Option(help="KEDA polling interval, s.")] = None,
    cooldown_s: Annotated[
        float | None, typer.Option(help="Scale-down stabilization window, s.")
    ] = None,
    balancing: Annotated[
        str | None, typer.Option(help="least_request | round_robin | per_job")
    ] = None,
    network_ms: Annotated[float, typer.Option(help="Added network round trip, ms.")] = 0.0,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    out_dir: Annotated[Path, typer.Option(help="Where the plot and JSON go.")] = Path("out"),
    json_path: Annotated[
        Path | None, typer.Option("--json", help="JSON output (default OUT_DIR/simulate.json).")
    ] = None,
) -> None:
    """Simulate jobs, per-request balancing, saturating servers and KEDA autoscaling."""
    from pysonic.simulate import ServerProfile, plot_simulation, scenario_presets
    from pysonic.simulate import simulate as run

    presets = scenario_presets()
    if scenario not in presets:
        raise typer.BadParameter(f"one of {', '.join(presets)}", param_hint="--scenario")
    sc = presets[scenario]()
    server = sc.server
    if profile is not None:
        server = ServerProfile.from_perf_json(profile, startup_s=server.startup_s)
    if startup_s is not None:
        server = replace(server, startup_s=startup_s)
    job = _override(sc.job, events=events, cpu_s=cpu_s, streams=streams)
    arrivals = _override(sc.arrivals, jobs=jobs, batch=batch, interval_s=interval_s)
    policy = _override(
        sc.keda,
        enabled=keda,
        min_replicas=min_replicas,
        max_replicas=max_replicas,
        threshold_ms=threshold_ms,
        polling_s=polling_s,
        cooldown_s=cooldown_s,
    )
    sc = replace(
        sc,
        server=server,
        job=job,
        arrivals=arrivals,
        keda=policy,
        initial_servers=servers if servers is not None else sc.initial_servers,
        balancing=balancing or sc.balancing,  # type: ignore[arg-type]
        network_s=network_ms / 1000,
        seed=seed,
    )
    with console.status(f"simulating {sc.name}: {arrivals.jobs} jobs x {job.events} events"):
        result = run(sc)
    t = result.totals
    table = Table(title=f"pysonic simulate: {sc.name} ({server.name}, {server.peak:.0f} req/s)")
    table.add_column("quantity")
    table.add_column("value", justify="right")
    for key, label, fmt in (
        ("jobs_finished", "jobs finished", "{:d}"),
        ("events", "events", "{:d}"),
        ("makespan_s", "makespan (min)", "{:.1f}"),
        ("events_per_s", "events/s (mean)", "{:.1f}"),
        ("mean_latency_ms", "request latency (ms)", "{:.1f}"),
        ("mean_queue_ms", "server queue (ms)", "{:.1f}"),
        ("servers_created", "servers created", "{:d}"),
        ("max_replicas", "max replicas", "{:d}"),
    ):
        value = t[key] / 60 if key == "makespan_s" else t[key]
        table.add_row(label, fmt.format(value))
    busy = [u for series in result.utilization.values() for u in series if u]
    if busy:
        table.add_row("utilization while up (%)", f"{100 * sum(busy) / len(busy):.1f}")
    console.print(table)
    png = plot_simulation(result, out_dir / "simulate.png")
    json_path = json_path or out_dir / "simulate.json"
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(result.to_dict()))
    console.print(f"plot: {png}\nJSON: {json_path}")


def _override(obj: T, **values: Any) -> T:
    """``obj`` (a dataclass) with the options the user gave."""
    return replace(obj, **{k: v for k, v in values.items() if v is not None})  # type: ignore[type-var]
