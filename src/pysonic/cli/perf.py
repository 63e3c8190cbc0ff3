"""``pysonic perf`` (perf_analyzer's common options) and ``pysonic bench-direct`` (seed 001).

Example::

    pysonic perf -m dense_tagger -u 127.0.0.1:8001 -i grpc --concurrency-range 1:4 -f out.csv
    pysonic bench-direct --model particlenet_lite --trials 100 --csv direct.csv
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

__all__ = ["bench_direct", "perf"]

_PROGRESS = (
    TextColumn("{task.description}"),
    BarColumn(),
    MofNCompleteColumn(),
    TimeElapsedColumn(),
)


def _levels(
    concurrency_range: str | None, request_rate_range: str | None, distribution: str
) -> list:
    from pysonic.perf._engine import DISTRIBUTIONS, LoadLevel
    from pysonic.perf.profiler import parse_range

    if distribution not in DISTRIBUTIONS:
        raise typer.BadParameter(
            f"one of {', '.join(DISTRIBUTIONS)}", param_hint="--request-distribution"
        )
    if concurrency_range and request_rate_range:
        raise typer.BadParameter("give --concurrency-range or --request-rate-range, not both")
    try:
        if request_rate_range:
            rates = parse_range(request_rate_range, integer=False)
            return [LoadLevel(rate=r, distribution=distribution) for r in rates]
        values = parse_range(concurrency_range or "1", integer=True)
    except ValueError as err:
        raise typer.BadParameter(str(err)) from None
    return [LoadLevel(concurrency=int(c)) for c in values]


def perf(
    model_name: Annotated[str, typer.Option("-m", "--model-name", help="Model to load.")],
    url: Annotated[
        str | None,
        typer.Option("-u", "--url", help="HOST:PORT (default localhost:8001 gRPC, :8000 HTTP)."),
    ] = None,
    protocol: Annotated[str, typer.Option("-i", "--protocol", help="grpc | http.")] = "grpc",
    model_version: Annotated[
        str, typer.Option("-x", "--model-version", help="Version (default: the server's).")
    ] = "",
    batch_size: Annotated[
        int, typer.Option("-b", "--batch-size", min=1, help="Rows per request (first dim).")
    ] = 1,
    concurrency_range: Annotated[
        str | None,
        typer.Option(help="start[:end[:step]] requests kept in flight (closed loop). Default 1."),
    ] = None,
    request_rate_range: Annotated[
        str | None,
        typer.Option(help="start[:end[:step]] requests/s sent on a schedule (open loop)."),
    ] = None,
    request_distribution: Annotated[
        str, typer.Option(help="Request-rate inter-arrival times: constant | poisson.")
    ] = "constant",
    shape: Annotated[
        list[str] | None,
        typer.Option(
            help="NAME:d1,d2 for an input with variable dims (batch excluded); repeatable."
        ),
    ] = None,
    input_data: Annotated[
        str, typer.Option(help="random | zero | FILE (perf_analyzer's JSON data format).")
    ] = "random",
    shared_memory: Annotated[
        str, typer.Option(help="none | system: inputs and outputs in system shared memory.")
    ] = "none",
    output_shared_memory_size: Annotated[
        int, typer.Option(help="Bytes per output region when the config does not fix its size.")
    ] = 100 * 1024,
    measurement_interval: Annotated[
        int, typer.Option("-p", "--measurement-interval", min=50, help="Window length in ms.")
    ] = 5000,
    stability_percentage: Annotated[
        float,
        typer.Option(
            "-s",
            "--stability-percentage",
            help="Last 3 windows within this % (throughput, latency).",
        ),
    ] = 10.0,
    max_trials: Annotated[int, typer.Option(min=1, help="Most windows per level.")] = 10,
    percentile: Annotated[
        int | None,
        typer.Option(
            min=1, max=99, help="Judge stability on this latency percentile (default: average)."
        ),
    ] = None,
    latency_threshold: Annotated[
        float,
        typer.Option(
            "-l", "--latency-threshold", help="Stop the search past this latency (ms; 0 = off)."
        ),
    ] = 0.0,
    report_file: Annotated[
        Path | None, typer.Option("-f", "--latency-report-file", help="perf_analyzer's CSV here.")
    ] = None,
    processes: Annotated[
        int,
        typer.Option(
            min=1, help="Load generator processes (split the load when one is not enough)."
        ),
    ] = 1,
    plot: Annotated[Path | None, typer.Option(help="Write a latency/throughput PNG here.")] = None,
    json_path: Annotated[
        Path | None, typer.Option("--json", help="Write the results as JSON.")
    ] = None,
    header: Annotated[
        list[str] | None,
        typer.Option(
            "-H",
            "--header",
            help="'Name:Value' sent with every request (repeatable), e.g. "
            "'Authorization:Bearer <token>'.",
        ),
    ] = None,
    ssl_grpc_use_ssl: Annotated[
        bool, typer.Option("--ssl-grpc-use-ssl", help="gRPC over TLS.")
    ] = False,
    ssl_grpc_root_certifications_file: Annotated[
        Path | None, typer.Option(help="CA (PEM) of the server's certificate (gRPC).")
    ] = None,
    ssl_grpc_private_key_file: Annotated[
        Path | None, typer.Option(help="Client private key (PEM) for mutual TLS (gRPC).")
    ] = None,
    ssl_grpc_certificate_chain_file: Annotated[
        Path | None, typer.Option(help="Client certificate chain (PEM) for mutual TLS (gRPC).")
    ] = None,
    ssl_https_verify_peer: Annotated[
        int, typer.Option(min=0, max=1, help="HTTPS: check the server's certificate (1).")
    ] = 1,
    ssl_https_verify_host: Annotated[
        int,
        typer.Option(min=0, max=2, help="HTTPS: check the server's name (2; 0 = don't)."),
    ] = 2,
    ssl_https_ca_certificates_file: Annotated[
        Path | None, typer.Option(help="CA (PEM) of the server's certificate (HTTPS).")
    ] = None,
    ssl_https_client_certificate_file: Annotated[
        Path | None, typer.Option(help="Client certificate (PEM) for mutual TLS (HTTPS).")
    ] = None,
    ssl_https_private_key_file: Annotated[
        Path | None, typer.Option(help="Client private key (PEM) for mutual TLS (HTTPS).")
    ] = None,
) -> None:
    """Measure a served model like perf_analyzer: throughput and latency per load level.

    TLS and tokens take perf_analyzer's options: --ssl-grpc-* for gRPC, an https:// URL or
    --ssl-https-* for HTTPS, -H for headers such as a bearer token."""
    from pysonic.perf._control import Connection, parse_header
    from pysonic.perf._inputs import parse_shape
    from pysonic.perf.profiler import PerfOptions, ProfileSettings, run_perf
    from pysonic.perf.report import perf_table, plot_perf, write_csv

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    if protocol not in ("grpc", "http"):
        raise typer.BadParameter("grpc or http", param_hint="-i")
    if shared_memory not in ("none", "system"):
        raise typer.BadParameter("none or system", param_hint="--shared-memory")
    levels = _levels(concurrency_range, request_rate_range, request_distribution)
    try:
        shapes = dict(parse_shape(s) for s in shape or [])
    except ValueError as err:
        raise typer.BadParameter(str(err), param_hint="--shape") from None
    url = url or ("localhost:8001" if protocol == "grpc" else "localhost:8000")
    grpc_files = (
        ssl_grpc_root_certifications_file,
        ssl_grpc_private_key_file,
        ssl_grpc_certificate_chain_file,
    )
    https_files = (
        ssl_https_ca_certificates_file,
        ssl_https_client_certificate_file,
        ssl_https_private_key_file,
    )
    https = url.startswith("https://") or any(f is not None for f in https_files)
    if protocol == "grpc" and https:
        raise typer.BadParameter("--ssl-https-* and https:// are for -i http; use --ssl-grpc-*")
    if protocol == "http" and (ssl_grpc_use_ssl or any(f is not None for f in grpc_files)):
        raise typer.BadParameter("--ssl-grpc-* are for -i grpc; use --ssl-https-*")
    url = url.removeprefix("https://").removeprefix("http://")
    if protocol == "grpc":
        ca = ssl_grpc_root_certifications_file
        cert, key = ssl_grpc_certificate_chain_file, ssl_grpc_private_key_file
        tls = ssl_grpc_use_ssl or any(f is not None for f in grpc_files)
    else:
        ca, cert, key = https_files
        tls = https
    try:
        connection = Connection(
            tls=tls,
            ca_file=str(ca) if ca else None,
            cert_file=str(cert) if cert else None,
            key_file=str(key) if key else None,
            verify_peer=bool(ssl_https_verify_peer),
            verify_host=bool(ssl_https_verify_host),
            headers=tuple(parse_header(h) for h in header or []),
        )
    except ValueError as err:
        raise typer.BadParameter(str(err)) from None
    options = PerfOptions(
        model=model_name,
        url=url,
        protocol=protocol,
        version=model_version,
        batch=batch_size,
        shapes=shapes,
        input_data=input_data,
        shared_memory=shared_memory,
        output_shm_size=output_shared_memory_size,
        levels=levels,
        settings=ProfileSettings(
            window_ms=measurement_interval,
            stability_pct=stability_percentage,
            max_trials=max_trials,
            percentile=percentile,
            latency_threshold_ms=latency_threshold,
        ),
        processes=processes,
        connection=connection,
    )
    console = Console()
    with Progress(*_PROGRESS, console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task("starting the load generator", total=len(levels))
        done: set[float] = set()

        def progress(level, trial, window) -> None:  # type: ignore[no-untyped-def]
            what = "concurrency" if level.concurrency else "rate"
            bar.update(
                task,
                description=f"{what} {level.value:g}: window {trial}, "
                f"{window.throughput:,.1f} infer/s, {window.avg_latency_us / 1000:.2f} ms",
            )
            if level.value not in done and trial == 1:
                done.add(level.value)
                bar.update(task, completed=len(done) - 1)

        try:
            report = run_perf(options, progress)
        except (ValueError, RuntimeError) as err:
            console.print(f"[red]{err}[/red]")
            raise typer.Exit(1) from None
        except Exception as err:  # noqa: BLE001 - tritonclient's errors: say what failed
            console.print(f"[red]{type(err).__name__}: {err}[/red]")
            raise typer.Exit(1) from None
    console.print(perf_table(report))
    if any(r.generator_cpu > 0.85 for r in report.results):
        console.print(
            "[yellow]a load process was over 85% busy: the generator may be the bottleneck; "
            "add --processes[/yellow]"
        )
    if report_file is not None:
        console.print(f"CSV: {write_csv(report, report_file)}")
    if plot is not None:
        console.print(f"plot: {plot_perf(report, plot)}")
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(report.to_dict(), indent=2))
        console.print(f"JSON: {json_path}")


def bench_direct(
    model: Annotated[
        list[str] | None,
        typer.Option(
            help="Model name in --model-repository, or a path to a model dir / .onnx; repeatable."
        ),
    ] = None,
    model_repository: Annotated[Path, typer.Option(help="Where model names are looked up.")] = Path(
        "model_repository"
    ),
    batch_sizes: Annotated[
        str, typer.Option(help="Comma-separated batch sizes (default 4,8,...,2048).")
    ] = "",
    trials: Annotated[int, typer.Option(min=1, help="Timed calls per batch size.")] = 100,
    provider: Annotated[
        list[str] | None,
        typer.Option(help="cpu | cuda | rocm; repeatable (default: every one present)."),
    ] = None,
    threads: Annotated[
        int | None, typer.Option(help="onnxruntime intra-op threads (default: all cores).")
    ] = None,
    max_seconds_per_point: Annotated[
        float | None, typer.Option(help="Cap the timed calls of one batch size (>= 3 run).")
    ] = None,
    csv_path: Annotated[Path | None, typer.Option("--csv", help="Write the points as CSV.")] = None,
    plot: Annotated[Path | None, typer.Option(help="Write throughput vs batch size (PNG).")] = None,
    json_path: Annotated[
        Path | None, typer.Option("--json", help="Write the points as JSON.")
    ] = None,
) -> None:
    """Direct (in-process) inference throughput vs batch size, seed 001's method.

    Each trial draws fresh random inputs, then times only the inference call; T = N / median
    latency. Every execution provider asked for (default: all present) is measured."""
    from pysonic.perf.direct import (
        DEFAULT_BATCHES,
        PROVIDERS,
        available_providers,
        direct_table,
        plot_direct,
        write_direct_csv,
    )
    from pysonic.perf.direct import bench_direct as run_bench

    console = Console()
    try:
        batches = [int(b) for b in batch_sizes.split(",")] if batch_sizes else list(DEFAULT_BATCHES)
    except ValueError:
        raise typer.BadParameter("comma-separated integers", param_hint="--batch-sizes") from None
    providers = provider or available_providers()
    unknown = [p for p in providers if p not in PROVIDERS]
    if unknown:
        raise typer.BadParameter(
            f"unknown {unknown}; known: {list(PROVIDERS)}", param_hint="--provider"
        )
    paths = []
    for m in model or ["particlenet_lite"]:
        path = Path(m) if Path(m).exists() else model_repository / m
        if not path.exists():
            raise typer.BadParameter(f"{m}: neither a path nor a model in {model_repository}")
        paths.append(path)
    points = []
    with Progress(*_PROGRESS, console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task("direct inference", total=len(paths) * len(providers) * len(batches))
        for path in paths:
            for prov in providers:
                try:
                    points += run_bench(
                        path,
                        batches,
                        trials=trials,
                        provider=prov,
                        threads=threads,
                        max_seconds_per_point=max_seconds_per_point,
                        progress=lambda p: bar.update(
                            task, advance=1, description=f"{p.model} ({p.provider}) batch {p.batch}"
                        ),
                    )
                except RuntimeError as err:  # a provider asked for but absent
                    console.print(f"[red]{err}[/red]")
                    raise typer.Exit(1) from None
    console.print(direct_table(points))
    if csv_path is not None:
        console.print(f"CSV: {write_direct_csv(points, csv_path)}")
    if plot is not None:
        console.print(f"plot: {plot_direct(points, plot)}")
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps([p.as_dict() for p in points], indent=2))
        console.print(f"JSON: {json_path}")
