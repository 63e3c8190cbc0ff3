"""Whole-workflow throughput: direct vs SONIC (sync / async / pseudo-async) with a local server.

The miniAOD-like workflow (`pysonic.workflow`) on the shipped events, for 1, 2 and 4 streams
and 2 framework threads, with every ML module in one inference mode. The SONIC server is a
local `pysonic serve` process on the same 2 cores, as a job next to a local server runs. Modes
alternate within each round and each point is the median of the rounds, so machine drift hits
every mode alike. Target (the seeds' "no throughput decrease"): sonic-async >= 0.97 x direct.

It also measures what bounds that ratio on these cores whatever the server: the bare Python gRPC
floor (``_peers/echo_server.py`` on uvloop, which answers ModelInfer by echoing, against a bare
grpc.aio stub; 1 KB requests at concurrency 4), as CPU per request in the client and the server.
With ``r`` requests per event (from the server's statistics) and the direct job's CPU per event
``t``, async / direct can reach at most ``t / (t + r x floor)`` when job and server share every
core: the "ceiling" it prints.

    python benchmarks/workflow.py --quick --json out/workflow.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import grpc
import tritonclient.grpc as triton
from rich.console import Console
from rich.table import Table
from tritonclient.grpc import service_pb2, service_pb2_grpc

from _peers import servers
from _proc import cpu_seconds
from pysonic.server import ServerProcess
from pysonic.workflow._config import DEFAULT_MODULES, WorkflowConfig
from pysonic.workflow._miniaod import load_payloads, run_workflow

ROOT = Path(__file__).resolve().parent.parent
MODES = ("direct", "sonic-async", "sonic-sync", "sonic-pseudoasync")
console = Console()


def grpc_floor(requests: int = 3000, concurrency: int = 4) -> dict[str, float]:
    """CPU microseconds per request of the bare Python gRPC floor, client and server side."""
    request = service_pb2.ModelInferRequest(model_name="floor")
    request.inputs.add(name="x", datatype="FP32", shape=[1, 256])  # one 1 KB tensor
    request.raw_input_contents.append(bytes(1024))

    async def load(url: str, n: int) -> None:
        async with grpc.aio.insecure_channel(url) as channel:
            stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
            left = [n]

            async def worker() -> None:
                while left[0] > 0:
                    left[0] -= 1
                    await stub.ModelInfer(request)

            await asyncio.gather(*(worker() for _ in range(concurrency)))

    with tempfile.TemporaryDirectory() as tmp, servers.echo_server(Path(tmp), uvloop=True) as echo:
        asyncio.run(load(echo.url, 300))  # warm-up
        mine, theirs = time.process_time(), cpu_seconds(echo.proc.pid)
        asyncio.run(load(echo.url, requests))
        client = (time.process_time() - mine) / requests * 1e6
        server = (cpu_seconds(echo.proc.pid) - theirs) / requests * 1e6
    return {"client_us": client, "server_us": server, "total_us": client + server}


def _served_requests(url: str) -> int:
    with triton.InferenceServerClient(url) as client:
        stats = client.get_inference_statistics(as_json=True)
    return sum(int(m["inference_stats"]["success"].get("count", 0)) for m in stats["model_stats"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a run of about a minute")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--events", type=int, help="events per point")
    parser.add_argument("--rounds", type=int, help="alternating rounds per point")
    parser.add_argument("--streams", type=int, nargs="*", default=[1, 2, 4])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repository", type=Path, default=ROOT / "model_repository")
    parser.add_argument(
        "--server-repository", type=Path, help="serve this repository (default: --repository)"
    )
    args = parser.parse_args()
    n = args.events or (60 if args.quick else 300)
    rounds = args.rounds or (1 if args.quick else 3)
    payloads = load_payloads("sample", n, spread=True)
    base = WorkflowConfig(threads=args.threads, output=None).with_inference(
        model_repository=args.repository
    )
    models = sorted(set(DEFAULT_MODULES.values()))
    results: dict[str, dict[int, list[float]]] = {m: {s: [] for s in args.streams} for m in MODES}
    shares: dict[str, float] = {}
    direct_cpu: list[float] = []  # the direct job's CPU seconds per event, per run
    async_requests: list[float] = []  # requests per event of the sonic-async runs
    start = time.monotonic()
    with ServerProcess(args.server_repository or args.repository, models=models) as server:
        for mode in MODES:  # warm-up: sessions, server instances, connections
            run_workflow(base.with_mode(mode), payloads=payloads[:6], server_url=server.grpc_url)
        for _ in range(rounds):
            for streams in args.streams:
                for mode in MODES:
                    cfg = replace(base.with_mode(mode), streams=streams)
                    served0 = _served_requests(server.grpc_url) if mode == "sonic-async" else 0
                    cpu0 = time.process_time()
                    r = run_workflow(cfg, payloads=payloads, server_url=server.grpc_url)
                    if mode == "direct":
                        direct_cpu.append((time.process_time() - cpu0) / n)
                    if mode == "sonic-async":
                        async_requests.append((_served_requests(server.grpc_url) - served0) / n)
                    results[mode][streams].append(r.report.events_per_s)
                    shares[mode] = r.inference_share
    floor = grpc_floor(1500 if args.quick else 4000)
    t_direct = statistics.median(direct_cpu)
    per_event = statistics.median(async_requests)
    ceiling = t_direct / (t_direct + per_event * floor["total_us"] * 1e-6)
    median = {m: {s: statistics.median(v) for s, v in pts.items()} for m, pts in results.items()}
    table = Table(
        title=f"workflow events/s ({n} events, {args.threads} threads, median of {rounds})"
    )
    table.add_column("streams", justify="right")
    for mode in MODES:
        table.add_column(mode, justify="right")
    table.add_column("async / direct", justify="right")
    for s in args.streams:
        ratio = median["sonic-async"][s] / median["direct"][s]
        table.add_row(str(s), *(f"{median[m][s]:.1f}" for m in MODES), f"{ratio:.3f}")
    console.print(table)
    top = max(args.streams)
    async_over_direct = median["sonic-async"][top] / median["direct"][top]
    console.print(
        f"async_over_direct at {top} streams: {async_over_direct:.3f} (target >= 0.97); "
        f"inference share p (direct): {shares['direct']:.2f}; {time.monotonic() - start:.0f} s"
    )
    console.print(
        f"bare Python gRPC floor: {floor['client_us']:.0f} us client + {floor['server_us']:.0f} us "
        f"server CPU per request; {per_event:.2f} requests per event, direct {t_direct * 1e3:.1f} "
        f"ms CPU per event: async / direct can reach at most {ceiling:.3f} on shared cores"
    )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(
            json.dumps(
                {
                    "events": n,
                    "threads": args.threads,
                    "rounds": rounds,
                    "streams": args.streams,
                    "events_per_s": {
                        m: {str(s): v for s, v in pts.items()} for m, pts in median.items()
                    },
                    "async_over_direct": async_over_direct,
                    "async_over_direct_by_streams": {
                        str(s): median["sonic-async"][s] / median["direct"][s] for s in args.streams
                    },
                    "inference_share": shares,
                    "grpc_floor_us_per_request": floor,
                    "requests_per_event": per_event,
                    "direct_cpu_ms_per_event": t_direct * 1e3,
                    "async_over_direct_ceiling": ceiling,
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
