"""Whole-workflow throughput: direct vs SONIC (sync / async / pseudo-async) with a local server.

The miniAOD-like workflow (`pysonic.workflow`) on the shipped events, for 1, 2 and 4 streams
and 2 framework threads, with every ML module in one inference mode. The SONIC server is a
local `pysonic serve` process on the same 2 cores, as a job next to a local server runs. Modes
alternate within each round and each point is the median of the rounds, so machine drift hits
every mode alike. Target (the seeds' "no throughput decrease"): sonic-async >= 0.97 x direct.

    python benchmarks/workflow.py --quick --json out/workflow.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import replace
from pathlib import Path

from rich.console import Console
from rich.table import Table

from pysonic.server import ServerProcess
from pysonic.workflow._config import DEFAULT_MODULES, WorkflowConfig
from pysonic.workflow._miniaod import load_payloads, run_workflow

ROOT = Path(__file__).resolve().parent.parent
MODES = ("direct", "sonic-async", "sonic-sync", "sonic-pseudoasync")
console = Console()


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
    start = time.monotonic()
    with ServerProcess(args.server_repository or args.repository, models=models) as server:
        for mode in MODES:  # warm-up: sessions, server instances, connections
            run_workflow(base.with_mode(mode), payloads=payloads[:6], server_url=server.grpc_url)
        for _ in range(rounds):
            for streams in args.streams:
                for mode in MODES:
                    cfg = replace(base.with_mode(mode), streams=streams)
                    r = run_workflow(cfg, payloads=payloads, server_url=server.grpc_url)
                    results[mode][streams].append(r.report.events_per_s)
                    shares[mode] = r.inference_share
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
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
