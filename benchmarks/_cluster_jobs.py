"""SONIC-like jobs for the cluster benchmarks: one process per job, run as a script.

A job processes ``events`` events on ``streams`` streams. Per event: ``cpu_s`` of work before the
inference (gamma-distributed, coefficient of variation ``cpu_cv``; a sleep, because the 2 cores
here belong to the servers), then one inference call through the site's servers, during which
``overlap_s`` more of the event's work runs when the mode is ``async`` (CMSSW's ExternalWork: the
thread does other modules' work while the request is in flight) and after the response when it is
``sync``. The job prints one JSON line: start and end (wall clock), events, errors.

    python benchmarks/_cluster_jobs.py --url 127.0.0.1:8001 --model particlenet_lite --events 200
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time

import numpy as np

from pysonic.client import AsyncSonicClient, GrpcTransport, SiteConfig, SonicConfig, build_transport
from pysonic.client._site import ServerEntry

_DTYPES = {"TYPE_FP32": np.float32, "TYPE_FP16": np.float16, "TYPE_INT64": np.int64}


async def _inputs(url: str, model: str) -> dict[str, np.ndarray]:
    from tritonclient.grpc import model_config_pb2

    transport = GrpcTransport(url)
    try:
        config = await transport.model_config(model)
    finally:
        await transport.close()
    rng = np.random.default_rng(0)
    out = {}
    for inp in config.input:
        dtype = _DTYPES[model_config_pb2.DataType.Name(inp.data_type)]
        dims = [d if d > 0 else 4 for d in inp.dims]
        shape = ([1] if config.max_batch_size > 0 else []) + dims
        out[inp.name] = rng.standard_normal(shape).astype(dtype)
    return out


async def run_job(args: argparse.Namespace) -> dict[str, float]:
    host, _, port = args.url.rpartition(":")
    site = SiteConfig(servers=(ServerEntry(host, int(port), name="lb"),))
    config = SonicConfig(args.model, timeout=60.0, allowed_tries=3)
    inputs = await _inputs(args.url, args.model)
    client = AsyncSonicClient(config, build_transport(config, site))
    rng = random.Random(args.seed)
    k = 1 / args.cpu_cv**2 if args.cpu_cv > 0 else 0.0
    left = [args.events]
    errors = [0]

    def cpu() -> float:
        return rng.gammavariate(k, args.cpu_s / k) if k else args.cpu_s

    async def stream() -> None:
        while left[0] > 0:
            left[0] -= 1
            await asyncio.sleep(cpu())
            call = asyncio.ensure_future(client.infer(inputs))
            if args.mode == "async":
                await asyncio.sleep(args.overlap_s)
            try:
                await call
            except Exception:  # a benchmark counts failures, it does not stop
                errors[0] += 1
            if args.mode == "sync":
                await asyncio.sleep(args.overlap_s)

    delay = args.start_at - time.time()
    if delay > 0:
        await asyncio.sleep(delay)
    start = time.time()
    try:
        await asyncio.gather(*(stream() for _ in range(args.streams)))
    finally:
        await client.close()
    return {"start": start, "end": time.time(), "events": args.events, "errors": errors[0]}


async def calibrate(args: argparse.Namespace) -> dict[str, object]:
    """Closed loops with no CPU time at each stream count in ``--calibrate``: what the servers
    deliver to these very clients (their own CPU cost included), ``--seconds`` per level."""
    host, _, port = args.url.rpartition(":")
    site = SiteConfig(servers=(ServerEntry(host, int(port), name="lb"),))
    config = SonicConfig(args.model, timeout=60.0, allowed_tries=3)
    inputs = await _inputs(args.url, args.model)
    client = AsyncSonicClient(config, build_transport(config, site))
    levels = []
    delay = args.start_at - time.time()
    if delay > 0:
        await asyncio.sleep(delay)
    try:
        for k, streams in enumerate(int(x) for x in args.calibrate.split(",")):
            end = args.start_at + (k + 1) * args.seconds
            done = [0]

            async def loop(end: float = end, done: list[int] = done) -> None:
                while time.time() < end:
                    await client.infer(inputs)
                    done[0] += 1

            await asyncio.gather(*(loop() for _ in range(streams)))
            levels.append({"streams": streams, "requests": done[0], "seconds": args.seconds})
    finally:
        await client.close()
    return {"levels": levels}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--url", required=True)
    p.add_argument("--model", default="particlenet_lite")
    p.add_argument("--events", type=int, default=200)
    p.add_argument("--streams", type=int, default=1)
    p.add_argument("--cpu-s", type=float, default=0.01)
    p.add_argument("--cpu-cv", type=float, default=0.3)
    p.add_argument("--overlap-s", type=float, default=0.0)
    p.add_argument("--mode", choices=["sync", "async"], default="sync")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--start-at", type=float, default=0.0)
    p.add_argument("--calibrate", default="", help="stream counts: closed loops, no CPU time")
    p.add_argument("--seconds", type=float, default=2.0, help="per calibration level")
    args = p.parse_args()
    if not args.start_at:
        args.start_at = time.time()
    result = asyncio.run(calibrate(args) if args.calibrate else run_job(args))
    sys.stdout.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
