"""Served vs direct: how much of the machine does pysonic leave to the model?

One run measures, on the same cores:
  * direct onnxruntime throughput at batch B (and at batch 64), in-process;
  * served throughput of batch-B requests at concurrency C over gRPC (tritonclient.grpc.aio, the
    load generator sharing the cores as a job next to a local server does);
  * served throughput of batch-1 requests at concurrency 64 with dynamic batching, vs direct at 64.
The server is a real `pysonic serve` subprocess on the bundled model repository.

    python benchmarks/serve_vs_direct.py --quick --json out.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import tritonclient.grpc.aio as aioclient
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
console = Console()


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def make_inputs(meta: dict, batch: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    out = {}
    for name, (dtype, dims) in meta.items():
        out[name] = rng.standard_normal([batch, *dims]).astype(dtype)
        if "mask" in name:
            out[name] = (out[name] > -0.5).astype(dtype)
    return out


def direct_throughput(model_path: Path, feeds: dict[str, np.ndarray], seconds: float) -> dict:
    so = ort.SessionOptions()
    so.intra_op_num_threads = _cores()
    so.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(model_path), so, providers=["CPUExecutionProvider"])
    for _ in range(3):
        sess.run(None, feeds)
    batch = next(iter(feeds.values())).shape[0]
    lat = []
    t_end = time.perf_counter() + seconds
    while time.perf_counter() < t_end:
        t0 = time.perf_counter()
        sess.run(None, feeds)
        lat.append(time.perf_counter() - t0)
    total = sum(lat)
    return {
        "batch": batch,
        "jets_per_s": batch * len(lat) / total,
        "calls": len(lat),
        "p50_ms": 1000 * float(np.percentile(lat, 50)),
        "p99_ms": 1000 * float(np.percentile(lat, 99)),
    }


async def served_throughput(
    url: str, model: str, meta: dict, batch: int, concurrency: int, seconds: float, warmup: float
) -> dict:
    rng = np.random.default_rng(1)
    pool = [make_inputs(meta, batch, rng) for _ in range(8)]
    async with aioclient.InferenceServerClient(url) as client:

        def build(arrays: dict[str, np.ndarray]) -> list:
            inputs = []
            for name, arr in arrays.items():
                i = aioclient.InferInput(name, list(arr.shape), "FP32")
                i.set_data_from_numpy(arr)
                inputs.append(i)
            return inputs

        prepared = [build(a) for a in pool]
        lat: list[float] = []
        measuring = False
        stop_at = 0.0

        async def worker(k: int) -> None:
            i = k
            while time.perf_counter() < stop_at:
                t0 = time.perf_counter()
                await client.infer(model, prepared[i % len(prepared)])
                if measuring:
                    lat.append(time.perf_counter() - t0)
                i += 1

        stop_at = time.perf_counter() + warmup
        await asyncio.gather(*(worker(k) for k in range(concurrency)))
        before = (await client.get_inference_statistics(model)).model_stats[0]
        measuring = True
        t_start = time.perf_counter()
        stop_at = t_start + seconds
        await asyncio.gather(*(worker(k) for k in range(concurrency)))
        elapsed = time.perf_counter() - t_start
        stats = (await client.get_inference_statistics(model)).model_stats[0]
    prior = {b.batch_size: b.compute_infer.count for b in before.batch_stats}
    batches = {
        b.batch_size: b.compute_infer.count - prior.get(b.batch_size, 0) for b in stats.batch_stats
    }
    avg_batch = sum(k * v for k, v in batches.items()) / max(sum(batches.values()), 1)
    return {
        "batch": batch,
        "concurrency": concurrency,
        "jets_per_s": batch * len(lat) / elapsed,
        "requests": len(lat),
        "p50_ms": 1000 * float(np.percentile(lat, 50)),
        "p99_ms": 1000 * float(np.percentile(lat, 99)),
        "avg_server_batch": avg_batch,
    }


class ServerProcess:
    def __init__(self, repo: Path, model: str) -> None:
        self.repo, self.model = repo, model
        self.proc: subprocess.Popen | None = None
        self.port = 0

    def __enter__(self) -> ServerProcess:
        env = {**os.environ, "COLUMNS": "250"}
        self.log = tempfile.TemporaryFile("w+")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "pysonic",
                "serve",
                "--model-repository",
                str(self.repo),
                "--host",
                "127.0.0.1",
                "--grpc-port",
                "0",
                "--metrics-port",
                "0",
                "--model-control-mode",
                "explicit",
                "--load-model",
                self.model,
            ],
            stdout=subprocess.DEVNULL,
            stderr=self.log,
            text=True,
            env=env,
        )
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            self.log.seek(0)
            m = re.search(r"gRPC on 127\.0\.0\.1:(\d+)", self.log.read())
            if m:
                self.port = int(m.group(1))
                return self
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        self.log.seek(0)
        raise RuntimeError(f"server did not start:\n{self.log.read()}")

    def __exit__(self, *exc: object) -> None:
        assert self.proc is not None
        self.proc.terminate()
        self.proc.wait(60)


def model_meta(repo: Path, model: str) -> dict:
    from pysonic.repository import ModelRepository

    cfg = ModelRepository(repo).load(model).config
    return {t.name: (np.float32, list(t.dims)) for t in cfg.input}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--model", default="dense_tagger")
    ap.add_argument("--model-repository", type=Path, default=ROOT / "model_repository")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--dyn-concurrency", type=int, default=64)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--quick", action="store_true", help="short windows (about a minute in all)")
    ap.add_argument("--json", type=Path, help="write the results here")
    args = ap.parse_args()
    seconds = 5.0 if args.quick else args.seconds
    warmup = 1.0 if args.quick else 2.0

    repo = args.model_repository
    meta = model_meta(repo, args.model)
    from pysonic.repository import ModelRepository, model_file_path

    d = ModelRepository(repo).load(args.model)
    path = model_file_path(d.config, d.versions[max(d.versions)])
    rng = np.random.default_rng(0)
    dyn_batch = min(64, d.config.max_batch_size)

    rounds = 2 if args.quick else 3
    per = seconds / rounds
    feeds_b = make_inputs(meta, args.batch, rng)
    feeds_64 = make_inputs(meta, dyn_batch, rng)
    runs: dict[str, list[dict]] = {
        k: [] for k in ("direct_b", "served_b", "direct_64", "served_1", "direct_same")
    }
    with ServerProcess(repo, args.model) as server:
        url = f"127.0.0.1:{server.port}"
        # Alternate direct and served windows so machine drift hits both sides alike.
        for r in range(rounds):
            runs["direct_b"].append(direct_throughput(path, feeds_b, per))
            runs["served_b"].append(
                asyncio.run(
                    served_throughput(
                        url,
                        args.model,
                        meta,
                        args.batch,
                        args.concurrency,
                        per,
                        warmup if r == 0 else 0.3,
                    )
                )
            )
            runs["direct_64"].append(direct_throughput(path, feeds_64, per))
            runs["served_1"].append(
                asyncio.run(
                    served_throughput(
                        url,
                        args.model,
                        meta,
                        1,
                        args.dyn_concurrency,
                        per,
                        warmup if r == 0 else 0.3,
                    )
                )
            )
            same = max(1, round(runs["served_1"][-1]["avg_server_batch"]))
            runs["direct_same"].append(direct_throughput(path, make_inputs(meta, same, rng), per))

    def merged(key: str) -> dict:
        items = runs[key]
        out = dict(items[len(items) // 2])
        out["jets_per_s"] = float(np.median([i["jets_per_s"] for i in items]))
        return out

    direct_b, served_b = merged("direct_b"), merged("served_b")
    direct_64, served_1, direct_same = (
        merged("direct_64"),
        merged("served_1"),
        merged("direct_same"),
    )
    ratio_b = float(
        np.median(
            [
                s["jets_per_s"] / d["jets_per_s"]
                for s, d in zip(runs["served_b"], runs["direct_b"], strict=True)
            ]
        )
    )
    ratio_dyn = float(
        np.median(
            [
                s["jets_per_s"] / d["jets_per_s"]
                for s, d in zip(runs["served_1"], runs["direct_64"], strict=True)
            ]
        )
    )
    ratio_same = float(
        np.median(
            [
                s["jets_per_s"] / d["jets_per_s"]
                for s, d in zip(runs["served_1"], runs["direct_same"], strict=True)
            ]
        )
    )
    result = {
        "model": args.model,
        "cores": _cores(),
        "seconds": seconds,
        "rounds": rounds,
        "direct_batch": direct_b,
        "served_batch": served_b,
        "direct_dynbatch": direct_64,
        "served_dynbatch": served_1,
        "direct_at_server_batch": direct_same,
        "served_over_direct": ratio_b,
        "dynbatch_over_direct": ratio_dyn,
        "dynbatch_over_direct_at_server_batch": ratio_same,
        "runs": runs,
    }
    table = Table(title=f"pysonic served vs direct onnxruntime: {args.model} ({_cores()} cores)")
    for col in ("case", "jets/s", "p50 ms", "p99 ms", "server avg batch", "ratio"):
        table.add_column(col, justify="left" if col == "case" else "right")
    table.add_row(
        f"direct batch {args.batch}",
        f"{direct_b['jets_per_s']:.0f}",
        f"{direct_b['p50_ms']:.2f}",
        f"{direct_b['p99_ms']:.2f}",
        "",
        "1.00",
    )
    table.add_row(
        f"served batch {args.batch}, concurrency {args.concurrency}",
        f"{served_b['jets_per_s']:.0f}",
        f"{served_b['p50_ms']:.2f}",
        f"{served_b['p99_ms']:.2f}",
        f"{served_b['avg_server_batch']:.1f}",
        f"{result['served_over_direct']:.3f}",
    )
    table.add_row(
        f"direct batch {dyn_batch}",
        f"{direct_64['jets_per_s']:.0f}",
        f"{direct_64['p50_ms']:.2f}",
        f"{direct_64['p99_ms']:.2f}",
        "",
        "1.00",
    )
    table.add_row(
        f"served batch 1, concurrency {args.dyn_concurrency} (dynamic batching)",
        f"{served_1['jets_per_s']:.0f}",
        f"{served_1['p50_ms']:.2f}",
        f"{served_1['p99_ms']:.2f}",
        f"{served_1['avg_server_batch']:.1f}",
        f"{result['dynbatch_over_direct']:.3f}",
    )
    table.add_row(
        f"direct batch {direct_same['batch']} (the server's average batch above)",
        f"{direct_same['jets_per_s']:.0f}",
        f"{direct_same['p50_ms']:.2f}",
        f"{direct_same['p99_ms']:.2f}",
        "",
        f"served b1 / this: {ratio_same:.3f}",
    )
    console.print(table)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
