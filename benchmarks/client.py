"""Client benchmark: pysonic's client overhead vs raw tritonclient, and balancing vs round robin.

1. Overhead: requests/s and p50 of batch-1 requests on `identity_fp32` at concurrency 8 against
   one `pysonic serve` subprocess, pysonic's AsyncSonicClient vs tritonclient.grpc.aio, windows
   alternating (median of per-round ratios) -> `client_over_tritonclient`.
2. Balancing: three `pysonic serve` subprocesses, one 4x slower (execute_delay_ms), one client at
   fixed concurrency: per-request balancing vs round robin -> `balanced_over_round_robin`.

    python benchmarks/client.py --quick --json out.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import tritonclient.grpc.aio as aioclient
from rich.console import Console
from rich.table import Table

from pysonic.client import AsyncSonicClient, Balanced, GrpcTransport, SonicConfig

ROOT = Path(__file__).resolve().parent.parent
console = Console()


class Serve:
    """A `pysonic serve` subprocess on a free port."""

    def __init__(self, repo: Path) -> None:
        self.log = tempfile.NamedTemporaryFile("w+")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "pysonic",
                "serve",
                "--model-repository",
                str(repo),
                "--host",
                "127.0.0.1",
                "--grpc-port",
                "0",
                "--metrics-port",
                "0",
            ],
            stdout=subprocess.DEVNULL,
            stderr=self.log,
            env={**os.environ, "COLUMNS": "250"},
        )
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            self.log.seek(0)
            m = re.search(r"gRPC on 127\.0\.0\.1:(\d+)", self.log.read())
            if m:
                self.url = f"127.0.0.1:{m.group(1)}"
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise RuntimeError("server did not start")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(60)


async def _drive(call, concurrency: int, seconds: float) -> dict:
    lat: list[float] = []
    stop = time.perf_counter() + seconds

    async def worker() -> None:
        while time.perf_counter() < stop:
            t0 = time.perf_counter()
            await call()
            lat.append(time.perf_counter() - t0)

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - t0
    return {
        "req_per_s": len(lat) / elapsed,
        "p50_ms": 1000 * float(np.percentile(lat, 50)),
        "requests": len(lat),
    }


async def overhead(url: str, concurrency: int, seconds: float, rounds: int) -> dict:
    x = np.ones((1, 16), np.float32)
    ours = AsyncSonicClient(SonicConfig("identity_fp32"), GrpcTransport(url))
    async with aioclient.InferenceServerClient(url) as theirs:
        inp = aioclient.InferInput("INPUT0", [1, 16], "FP32")
        inp.set_data_from_numpy(x)

        async def tc() -> None:
            await theirs.infer("identity_fp32", [inp])

        async def ps() -> None:
            await ours.infer({"INPUT0": x})

        await _drive(tc, concurrency, 0.5)
        await _drive(ps, concurrency, 0.5)
        runs = [
            (await _drive(tc, concurrency, seconds), await _drive(ps, concurrency, seconds))
            for _ in range(rounds)
        ]
    await ours.close()
    ratio = float(np.median([p["req_per_s"] / t["req_per_s"] for t, p in runs]))
    return {
        "tritonclient": runs[len(runs) // 2][0],
        "pysonic": runs[len(runs) // 2][1],
        "client_over_tritonclient": ratio,
    }


async def balancing(urls: list[str], concurrency: int, seconds: float) -> dict:
    x = np.ones((1, 16), np.float32)
    out = {}
    for policy in ("least_loaded", "round_robin"):
        balanced = Balanced([GrpcTransport(u) for u in urls], policy=policy)  # type: ignore[arg-type]
        client = AsyncSonicClient(SonicConfig("identity_fp32"), balanced)

        async def call(c: AsyncSonicClient = client) -> None:
            await c.infer({"INPUT0": x})

        await _drive(call, concurrency, 0.5)
        result = await _drive(call, concurrency, seconds)
        result["share"] = {s.name: s.sent for s in balanced.servers}
        out[policy] = result
        await client.close()
    out["balanced_over_round_robin"] = (
        out["least_loaded"]["req_per_s"] / out["round_robin"]["req_per_s"]
    )
    return out


def _repo_with_delay(tmp: Path, name: str, delay_ms: int) -> Path:
    repo = tmp / name
    shutil.copytree(ROOT / "model_repository" / "identity_fp32", repo / "identity_fp32")
    cfg = repo / "identity_fp32" / "config.pbtxt"
    text = cfg.read_text().replace("count: 1 kind", "count: 8 kind")
    cfg.write_text(
        text + f'parameters {{ key: "execute_delay_ms" value {{ string_value: "{delay_ms}" }} }}\n'
    )
    return repo


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--fast-ms", type=int, default=5)
    args = ap.parse_args()
    seconds, rounds = (3.0, 2) if args.quick else (8.0, 3)

    server = Serve(ROOT / "model_repository")
    try:
        over = asyncio.run(overhead(server.url, args.concurrency, seconds, rounds))
    finally:
        server.stop()
    with tempfile.TemporaryDirectory() as tmp:
        delays = [args.fast_ms, args.fast_ms, 4 * args.fast_ms]
        servers = [Serve(_repo_with_delay(Path(tmp), f"r{i}", d)) for i, d in enumerate(delays)]
        try:
            bal = asyncio.run(balancing([s.url for s in servers], 12, seconds))
        finally:
            for s in servers:
                s.stop()
    result = {
        "client_over_tritonclient": over["client_over_tritonclient"],
        "balanced_over_round_robin": bal["balanced_over_round_robin"],
        "overhead": over,
        "balancing": bal,
        "delays_ms": delays,
    }
    table = Table(title="pysonic client benchmark")
    for col in ("case", "req/s", "p50 ms", "ratio"):
        table.add_column(col, justify="left" if col == "case" else "right")
    table.add_row(
        "tritonclient.grpc.aio, identity, c8",
        f"{over['tritonclient']['req_per_s']:.0f}",
        f"{over['tritonclient']['p50_ms']:.2f}",
        "1.00",
    )
    table.add_row(
        "pysonic AsyncSonicClient, identity, c8",
        f"{over['pysonic']['req_per_s']:.0f}",
        f"{over['pysonic']['p50_ms']:.2f}",
        f"{over['client_over_tritonclient']:.3f}",
    )
    table.add_row(
        f"round robin, 3 servers ({delays} ms), c12",
        f"{bal['round_robin']['req_per_s']:.0f}",
        f"{bal['round_robin']['p50_ms']:.2f}",
        "1.00",
    )
    table.add_row(
        f"least loaded, 3 servers ({delays} ms), c12",
        f"{bal['least_loaded']['req_per_s']:.0f}",
        f"{bal['least_loaded']['p50_ms']:.2f}",
        f"{bal['balanced_over_round_robin']:.3f}",
    )
    console.print(table)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
