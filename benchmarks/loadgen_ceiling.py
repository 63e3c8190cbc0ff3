"""The load generator's ceiling: requests/s against a trivial model, per process and with several.

A load generator must not be what limits a measurement. Against a trivial model (identity, batch
1, 16 bytes) this measures, for 1, 2 (and 4) load processes at a fixed concurrency:

* requests/s reached (what the server and generator together manage on these cores),
* the generator's CPU per request (all its processes' CPU time / requests) and from it the
  generator's own ceiling per process, ``1e6 / (CPU us per request)``: the requests/s one load
  process sustains with a core to itself,
* each load process's busy fraction and the server's CPU use over the window.

Two servers: ``pysonic serve`` (identity_fp32) and the bare grpc.aio echo floor on uvloop
(``_peers/echo_server.py``, the cheapest Python server of Triton's protocol), both subprocesses on
the same cores as the generator. On a 2-core host the measured requests/s is bounded by the cores
shared with the server; the per-process ceiling is what shows the generator's own limit.

    python benchmarks/loadgen_ceiling.py --quick --json out/loadgen_ceiling.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from _peers import servers
from _proc import cpu_seconds
from pysonic.perf._engine import LoadLevel, LoadRunner
from pysonic.perf._senders import TargetSpec
from pysonic.server.process import ServerProcess

ROOT = Path(__file__).resolve().parent.parent
console = Console()


def window(url: str, pid: int, processes: int, concurrency: int, seconds: float) -> dict[str, Any]:
    spec = TargetSpec(
        "grpc", url, "identity_fp32", ({"INPUT0": np.ones((1, 4), np.float32)},), batch_size=1
    )
    with LoadRunner(spec, processes=processes, slots=concurrency) as runner:
        runner.set_level(LoadLevel(concurrency=concurrency))
        time.sleep(max(0.5, seconds / 4))
        first = runner.take()
        begin, server0 = time.monotonic_ns(), cpu_seconds(pid)
        time.sleep(seconds)
        end, server1 = time.monotonic_ns(), cpu_seconds(pid)
        last = runner.take()
        runner.set_level(None)
    recs = last.ended_between(begin, end)
    wall = (end - begin) / 1e9
    cpu = [(c1 - c0) / 1e9 for (c0, _), (c1, _) in zip(first.cpu, last.cpu, strict=True)]
    walls = [(w1 - w0) / 1e9 for (_, w0), (_, w1) in zip(first.cpu, last.cpu, strict=True)]
    us_per_request = sum(cpu) / max(1, recs.count) * 1e6
    lat = np.sort(recs.latency_ns) / 1e3
    return {
        "processes": processes,
        "concurrency": concurrency,
        "seconds": wall,
        "requests": recs.count,
        "errors": len(recs.error_end_ns),
        "requests_per_s": recs.count / wall,
        "p50_us": float(lat[len(lat) // 2]) if len(lat) else None,
        "generator_cpu_us_per_request": us_per_request,
        "ceiling_per_process_rps": 1e6 / us_per_request if us_per_request else None,
        "generator_busy": [c / w for c, w in zip(cpu, walls, strict=True)],
        "server_cpu_cores": (server1 - server0) / wall,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="short windows, 1 and 2 processes")
    ap.add_argument("--json", type=Path, help="write the results here")
    ap.add_argument("--concurrency", type=int, default=16)
    args = ap.parse_args()
    seconds = 2.0 if args.quick else 6.0
    counts = (1, 2) if args.quick else (1, 2, 4)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in ("echo-uvloop", "pysonic"):
            if name == "pysonic":
                server: Any = ServerProcess(ROOT / "model_repository", models=["identity_fp32"])
            else:
                server = servers.echo_server(Path(tmp), uvloop=True)
            with server:
                url = server.grpc_url if name == "pysonic" else server.url
                for n in counts:
                    row = {
                        "server": name,
                        **window(url, server.proc.pid, n, args.concurrency, seconds),
                    }
                    rows.append(row)
                    console.print(
                        f"{name} x{n}: {row['requests_per_s']:,.0f} req/s, "
                        f"{row['generator_cpu_us_per_request']:.0f} us CPU/request"
                    )
    table = Table(
        title=f"load generator ceiling: identity b1, concurrency {args.concurrency}, "
        f"{os.cpu_count()} cores ({platform.processor() or platform.machine()})"
    )
    cols = ("server", "load procs", "req/s", "p50 us", "gen CPU us/req",
            "ceiling/proc req/s", "gen busy", "server cores")  # fmt: skip
    for c in cols:
        table.add_column(c, justify="right")
    for r in rows:
        table.add_row(
            r["server"],
            str(r["processes"]),
            f"{r['requests_per_s']:,.0f}",
            f"{r['p50_us']:,.0f}" if r["p50_us"] else "-",
            f"{r['generator_cpu_us_per_request']:.0f}",
            f"{r['ceiling_per_process_rps']:,.0f}" if r["ceiling_per_process_rps"] else "-",
            " ".join(f"{b:.0%}" for b in r["generator_busy"]),
            f"{r['server_cpu_cores']:.2f}",
        )
    console.print(table)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        doc = {"quick": args.quick, "cores": os.cpu_count(), "windows": rows}
        args.json.write_text(json.dumps(doc, indent=2))
        console.print(f"JSON: {args.json}")


if __name__ == "__main__":
    main()
