"""``pysonic cluster up|down|status``: a local cluster behind HAProxy (see docs/cluster.md).

Example::

    pysonic cluster up --servers 3 --model particlenet_lite
    export PYSONIC_SITE_CONFIG=.pysonic-cluster/site.toml
    pysonic cluster status
    pysonic cluster down
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

__all__ = ["app"]

app = typer.Typer(help="A local multi-server cluster behind HAProxy, scraped by Prometheus.")
console = Console()

StateDir = Annotated[
    Path, typer.Option(help="Where the cluster's state, configurations and logs live.")
]
DEFAULT_STATE = Path(".pysonic-cluster")


@app.command()
def up(
    servers: Annotated[int, typer.Option(help="Number of pysonic servers.", min=1)] = 3,
    model: Annotated[
        list[str] | None, typer.Option(help="Model to load on every server (repeatable).")
    ] = None,
    model_repository: Annotated[Path, typer.Option(help="Model repository.")] = Path(
        "model_repository"
    ),
    port: Annotated[int, typer.Option(help="Load balancer's gRPC port (0 = a free one).")] = 8001,
    prometheus: Annotated[
        bool | None,
        typer.Option(help="Start Prometheus (default: when installed)."),
    ] = None,
    state_dir: StateDir = DEFAULT_STATE,
) -> None:
    """Start N servers, HAProxy in front of them and Prometheus; return once all are ready."""
    from pysonic.cluster import ClusterError, LocalCluster

    cluster = LocalCluster(
        model_repository,
        servers=servers,
        models=model or [],
        state_dir=state_dir,
        port=port,
        prometheus=prometheus,
    )
    try:
        state = cluster.up()
    except ClusterError as err:
        console.print(f"[red]{err}[/red]")
        raise typer.Exit(1) from None
    console.print(
        f"cluster up: {len(state.servers)} server(s) behind HAProxy on [bold]{state.url}[/bold]"
    )
    console.print(f"site: export PYSONIC_SITE_CONFIG={(state_dir / 'site.toml').resolve()}")


@app.command()
def down(state_dir: StateDir = DEFAULT_STATE) -> None:
    """Stop Prometheus, HAProxy and the servers (SIGTERM: each drains) started by ``up``."""
    from pysonic.cluster import ClusterError, load_state, stop_cluster

    try:
        state = load_state(state_dir)
    except ClusterError as err:
        console.print(f"[yellow]{err}[/yellow]")
        raise typer.Exit(1) from None
    stop_cluster(state)
    (state_dir / "state.json").unlink(missing_ok=True)
    console.print(f"cluster down ({len(state.servers)} server(s), HAProxy, Prometheus)")


@app.command()
def status(
    state_dir: StateDir = DEFAULT_STATE,
    json_out: Annotated[
        bool, typer.Option("--json", help="Print JSON instead of a table.")
    ] = False,
    site: Annotated[bool, typer.Option(help="Print the site configuration snippet.")] = False,
) -> None:
    """Each process's liveness and HAProxy's view of each server (status, in flight, total)."""
    from pysonic.cluster import ClusterError, cluster_status, load_state, site_toml

    try:
        state = load_state(state_dir)
    except ClusterError as err:
        console.print(f"[yellow]{err}[/yellow]")
        raise typer.Exit(1) from None
    info = cluster_status(state)
    if json_out:
        print(json.dumps(info, indent=2))
        return
    table = Table(title=f"pysonic cluster on {info['url']}")
    for col in ("server", "pid", "alive", "gRPC", "HTTP", "metrics", "LB", "in flight", "requests"):
        table.add_column(col)
    for s in info["servers"]:
        table.add_row(
            s["name"], str(s["pid"]), "yes" if s["alive"] else "[red]no[/red]", s["grpc"],
            s["http"], s["metrics"] or "-", s["lb_status"], str(s["in_flight"]), str(s["requests"]),
        )  # fmt: skip
    console.print(table)
    ha = info["haproxy"]
    alive = "alive" if ha["alive"] else "dead"
    console.print(f"HAProxy pid {ha['pid']} ({alive}): {info['stats']}")
    if info["prometheus"]:
        console.print(f"Prometheus: {info['prometheus']['url']}")
    if site:
        console.print(site_toml(state), markup=False, highlight=False)
