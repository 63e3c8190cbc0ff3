"""The ``pysonic`` command line: thin Typer commands over the packages.

Example::

    pysonic serve --model-repository model_repository --grpc-port 8001 --metrics-port 8002
    pysonic demo
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.logging import RichHandler

from pysonic._version import __version__

__all__ = ["app", "main"]

app = typer.Typer(
    name="pysonic",
    help="SONIC inference as a service for HEP: a Triton-compatible server and tools.",
    no_args_is_help=True,
    add_completion=False,
)
console = Console()


def _register_subcommands() -> None:
    from pysonic.cli import events, models, workflow

    app.add_typer(models.app, name="models")
    app.add_typer(events.app, name="events")
    app.add_typer(workflow.app, name="workflow")
    _register_perf()
    _register_cluster()


def _register_cluster() -> None:
    """Scale-out: ``cluster up|down|status`` and ``simulate``."""
    from pysonic.cli import cluster, simulate

    app.add_typer(cluster.app, name="cluster")
    app.command(name="simulate")(simulate.simulate)


def _register_perf() -> None:
    """The performance toolkit: ``perf``, ``bench-direct``, ``tune``, ``plan``."""
    from pysonic.cli import perf, plan, tune

    app.command(name="perf")(perf.perf)
    app.command(name="bench-direct")(perf.bench_direct)
    app.command(name="tune")(tune.tune)
    app.command(name="plan")(plan.plan)


_register_subcommands()


def _setup_logging(verbose: int) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose > 0 else logging.INFO,
        format="%(message)s",
        datefmt="[%X]",
        handlers=[RichHandler(console=Console(stderr=True), show_path=False)],
    )


def _version(value: bool) -> None:
    if value:
        console.print(f"pysonic {__version__}")
        raise typer.Exit


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """pysonic: SONIC for Python."""


@app.command()
def serve(
    model_repository: Annotated[
        Path, typer.Option(help="Triton model repository directory.")
    ] = Path("model_repository"),
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "0.0.0.0",
    grpc_port: Annotated[int, typer.Option(help="gRPC port (0 = pick a free one).")] = 8001,
    http_port: Annotated[
        int | None, typer.Option(help="HTTP/REST port (0 = free; not served if not given).")
    ] = None,
    metrics_port: Annotated[int, typer.Option(help="Prometheus /metrics port (0 = free).")] = 8002,
    allow_metrics: Annotated[bool, typer.Option(help="Serve Prometheus metrics.")] = True,
    strict_model_config: Annotated[
        bool,
        typer.Option(help="Require complete config.pbtxt files (no auto-complete from the model)."),
    ] = False,
    model_control_mode: Annotated[str, typer.Option(help="none | poll | explicit")] = "none",
    repository_poll_secs: Annotated[
        float, typer.Option(help="Seconds between repository scans in poll mode.", min=0.01)
    ] = 15.0,
    load_model: Annotated[
        list[str] | None,
        typer.Option(help="Model to load at startup in explicit mode ('*' = all); repeatable."),
    ] = None,
    exit_on_error: Annotated[
        bool, typer.Option(help="Exit if a model fails to load at startup.")
    ] = True,
    grpc_max_message_bytes: Annotated[
        int, typer.Option(help="Largest gRPC message accepted or sent.")
    ] = 256 * 1024 * 1024,
    http_max_body_bytes: Annotated[
        int, typer.Option(help="Largest HTTP request body accepted (checked before reading it).")
    ] = 256 * 1024 * 1024,
    max_queue_size: Annotated[
        int,
        typer.Option(
            help="Cap on queued requests per model and priority level when config leaves it 0."
        ),
    ] = 16384,
    drain_timeout: Annotated[
        float, typer.Option(help="Seconds in-flight requests get to finish on shutdown.")
    ] = 30.0,
    shared_memory_max_bytes: Annotated[
        int, typer.Option(help="Cap on the bytes all registered shared-memory regions map.")
    ] = 64 << 30,
    shm_allowed_prefix: Annotated[
        list[str] | None,
        typer.Option(
            help="Only shared-memory keys starting with this prefix may be registered "
            "(repeatable; default: any key)."
        ),
    ] = None,
    tls_cert: Annotated[
        Path | None, typer.Option(help="TLS certificate chain (PEM) for gRPC and HTTPS.")
    ] = None,
    tls_key: Annotated[Path | None, typer.Option(help="TLS private key (PEM).")] = None,
    tls_client_ca: Annotated[
        Path | None,
        typer.Option(help="CA (PEM) that signs client certificates: require mutual TLS."),
    ] = None,
    auth_policy: Annotated[
        Path | None,
        typer.Option(
            help="Bearer-token auth policy (YAML or JSON): tokens, JWT keys, per-model rules "
            "(docs/security.md). Tokens are never taken on the command line."
        ),
    ] = None,
    max_request_bytes: Annotated[
        int,
        typer.Option(
            help="Largest request (declared bytes, both protocols, shared memory included; "
            "0 = the gRPC/HTTP limits above).",
            min=0,
        ),
    ] = 0,
    max_inflight_bytes: Annotated[
        int | None,
        typer.Option(
            help="Bytes all in-flight requests may hold together; over it new requests get "
            "RESOURCE_EXHAUSTED / 503 (default: a quarter of RAM; 0 = no limit).",
            min=0,
        ),
    ] = None,
    max_inflight_per_client: Annotated[
        int,
        typer.Option(
            help="Requests in flight per client (pysonic-client-id header, else IP address); "
            "0 = no limit.",
            min=0,
        ),
    ] = 0,
    log_verbose: Annotated[int, typer.Option(help="Verbose logging level (0 = info).")] = 0,
    event_loop: Annotated[
        str, typer.Option(help="auto (uvloop when installed) | asyncio | uvloop")
    ] = "auto",
) -> None:
    """Serve a Triton model repository over Triton's gRPC and HTTP/REST protocols."""
    from pysonic._loop import EVENT_LOOPS, run
    from pysonic.server import Server, ServerOptions, StartupError
    from pysonic.server.state import MODEL_CONTROL_MODES

    _setup_logging(log_verbose)
    if event_loop not in EVENT_LOOPS:
        raise typer.BadParameter(
            f"must be one of {', '.join(EVENT_LOOPS)}", param_hint="--event-loop"
        )
    if model_control_mode not in MODEL_CONTROL_MODES:
        raise typer.BadParameter(
            f"must be one of {', '.join(MODEL_CONTROL_MODES)}", param_hint="--model-control-mode"
        )
    options = ServerOptions(
        model_repository=model_repository,
        host=host,
        grpc_port=grpc_port,
        http_port=http_port,
        metrics_port=metrics_port if allow_metrics else None,
        strict_model_config=strict_model_config,
        model_control_mode=model_control_mode,
        load_models=list(load_model or []),
        exit_on_error=exit_on_error,
        grpc_max_message_bytes=grpc_max_message_bytes,
        http_max_body_bytes=http_max_body_bytes,
        queue_cap=max_queue_size,
        drain_timeout=drain_timeout,
        repository_poll_secs=repository_poll_secs,
        shared_memory_max_bytes=shared_memory_max_bytes,
        shared_memory_key_prefixes=list(shm_allowed_prefix) if shm_allowed_prefix else None,
        tls_cert_file=tls_cert,
        tls_key_file=tls_key,
        tls_client_ca_file=tls_client_ca,
        auth_policy=auth_policy,
        max_request_bytes=max_request_bytes,
        max_inflight_bytes=max_inflight_bytes,
        max_inflight_per_client=max_inflight_per_client,
    )
    try:
        run(Server(options).serve(), loop=event_loop)
    except StartupError as err:
        logging.getLogger("pysonic").error("%s", err.message)
        raise typer.Exit(1) from None


@app.command()
def demo(
    quick: Annotated[bool, typer.Option(help="A shorter run (fewer events).")] = False,
    events: Annotated[int, typer.Option(help="Events per run (0 = 300, quick: 120).")] = 0,
    streams: Annotated[int, typer.Option(help="Concurrent events (streams).", min=1)] = 4,
    threads: Annotated[int, typer.Option(help="Framework threads.", min=1)] = 2,
    server: Annotated[
        str | None, typer.Option(help="Use this server (HOST:PORT) instead of a local one.")
    ] = None,
    site: Annotated[
        Path | None, typer.Option(help="Use a site configuration (TOML) for the servers.")
    ] = None,
    model_repository: Annotated[
        Path, typer.Option(help="Model repository (local server and direct inference).")
    ] = Path("model_repository"),
    out_dir: Annotated[Path, typer.Option(help="Where outputs and the plot go.")] = Path("out"),
    json_path: Annotated[
        Path | None, typer.Option("--json", help="Write the results as JSON here.")
    ] = None,
) -> None:
    """Run the miniAOD-like workflow on the bundled events, direct and through SONIC (async)."""
    from pysonic.cli._demo import print_demo
    from pysonic.demo import DemoOptions, run_demo

    logging.basicConfig(level=logging.WARNING)
    if not (model_repository / "particlenet_lite").is_dir():
        console.print(
            f"[red]model repository {model_repository} not found[/red] "
            "(run from the pysonic checkout or pass --model-repository)"
        )
        raise typer.Exit(2)
    options = DemoOptions(
        model_repository=model_repository,
        events=events,
        streams=streams,
        threads=threads,
        quick=quick,
        server=server,
        site=site,
        out_dir=out_dir,
    )
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    columns = (TextColumn("{task.description:<28}"), BarColumn(), MofNCompleteColumn())
    with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
        tasks: dict[str, int] = {}

        def progress(stage: str, done: int, total: int) -> None:
            if stage not in tasks:
                tasks[stage] = bar.add_task(stage, total=total)
            bar.update(tasks[stage], completed=done)

        result = run_demo(options, progress)
    print_demo(result, console)
    if json_path is not None:
        import json

        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(result.to_dict(), indent=2))
        console.print(f"results: {json_path}")


def main() -> None:
    app()
