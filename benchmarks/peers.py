"""Python inference servers side by side: same model files, same load generator, same machine.

What it measures, in one run: requests/s, items/s and p50/p99 latency of Triton-protocol gRPC
requests (``pysonic.perf.loadgen``: closed loop, grpc.aio + pysonic's codec, on the same cores as
the server) against

  * pysonic (``pysonic serve`` on ``model_repository/``),
  * PyTriton 0.7 (a real tritonserver; onnxruntime inside its Python infer functions),
  * MLServer 1.7.1 (a small onnxruntime runtime; ``parallel_workers`` 1, its default, and 0),
  * the bare grpc.aio echo floor (ModelInfer echoes its inputs; asyncio loop, and on uvloop),
    and that echo after a round trip through a worker thread running the identity model (the
    floor of any server that keeps compute off its event loop),

next to direct in-process onnxruntime (batch 16, batch 64 for the concurrency-64 point, all
cores). Points: identity b1 at c1 and c8; ParticleNet-Lite b16 c4 and b1 c16; ParticleNet b16 c4
and b1 c64. Every peer gets the model's config.pbtxt settings (instances, ORT threads per
instance, max batch size, queue delay); the table's notes say what each got.

Ratio: served items/s over direct onnxruntime items/s for the HEP models, served requests/s over
the asyncio echo floor's for identity. The reference is measured just before each served window
(the adjacent pair gives the ratio; the median over rounds is shown), so machine drift hits both.

PyTriton (numpy < 2) and MLServer (uvloop < 0.22) run in their own virtual environments, created
here on first use under ``.peer-envs/`` (creation time is reported apart from the run). A peer
that cannot be installed or started shows up in the table with the reason.

    python benchmarks/peers.py --quick --json out/peers.json     # about a minute once envs exist

``--quick`` runs the identity and ParticleNet-Lite points only (a full-ParticleNet request takes
0.2-0.8 s on 2 cores, too few per short window); ``--points`` brings them back.
    python benchmarks/peers.py --servers pysonic,echo --skip-peers
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from _peers import envs, servers
from _peers.plan import ModelPlan, model_plans
from _peers.report import Cell, Point, plot_ratios, print_table
from _peers.windows import Workload, check_outputs, direct_window, served_window

ROOT = Path(__file__).resolve().parent.parent
MODELS = ("identity_fp32", "particlenet_lite", "particlenet")
POINTS = (
    Point("identity b1 c1", "identity_fp32", 1, 1),
    Point("identity b1 c8", "identity_fp32", 1, 8),
    Point("lite b16 c4", "particlenet_lite", 16, 4, direct_batch=16),
    Point("lite b1 c16", "particlenet_lite", 1, 16, direct_batch=16),
    Point("particlenet b16 c4", "particlenet", 16, 4, direct_batch=16),
    Point("particlenet b1 c64", "particlenet", 1, 64, direct_batch=64),
)
#: served rows, in table order (direct onnxruntime is always measured: it is the reference)
SERVERS = {
    "echo": "echo floor (grpc.aio, asyncio)",
    "echo-uvloop": "echo floor (grpc.aio, uvloop)",
    "echo-hop": "echo + thread hop + ORT (uvloop)",
    "pysonic": "pysonic",
    "pytriton": "PyTriton 0.7",
    "mlserver": "MLServer 1.7.1 (parallel_workers=1, default)",
    "mlserver-w0": "MLServer 1.7.1 (parallel_workers=0)",
}
ENV_OF = {"pytriton": "pytriton", "mlserver": "mlserver", "mlserver-w0": "mlserver"}
ECHO_ONLY = {"echo", "echo-uvloop", "echo-hop"}  # no model: identity points only
QUICK = {"seconds": 0.5, "warmup": 0.25, "direct_seconds": 0.4, "rounds": 1}
FULL = {"seconds": 5.0, "warmup": 1.0, "direct_seconds": 3.0, "rounds": 2}


def _notes(key: str, plans: list[ModelPlan]) -> str:
    """What a server was given, in words, for the table's notes."""
    hep = next(p for p in plans if p.dynamic_batching)
    mlserver = (
        "OrtRuntime (_peers/mlserver_ort.py): N ORT sessions on an N-thread pool; adaptive "
        f"batching max_batch_size {hep.max_batch_size} (MLServer counts requests, not rows), "
        f"max_batch_time {hep.max_queue_delay_us / 1e6:g} s; none for identity; debug=false "
        "(no per-request access log); other settings default"
    )
    return {
        "direct": "one InferenceSession per window, intra_op threads = all cores, "
        "the timed run() call only (serve_vs_direct.direct_throughput)",
        "echo": "ModelInfer echoes inputs as outputs; grpc.so_reuseport 0; asyncio's default loop",
        "echo-uvloop": "the same echo servicer on uvloop",
        "echo-hop": "the echo on uvloop, each request first through one worker thread that "
        "runs identity_fp32 with onnxruntime (1 thread): the floor of keeping compute off the "
        "event loop",
        "pysonic": "pysonic serve on model_repository/ as it is (the configs below)",
        "pytriton": "one @batch infer function per instance, each its own ORT session; Triton's "
        f"dynamic batcher with the config's preferred sizes and delay; max_batch_size "
        f"{hep.max_batch_size}; no batcher for identity",
        "mlserver": f"{mlserver}; parallel_workers=1 (one inference worker process)",
        "mlserver-w0": f"{mlserver}; parallel_workers=0 (inference in the server process)",
    }[key]


def _ensure_envs(keys: list[str], log: Path) -> dict[str, envs.EnvResult]:
    needed = sorted({ENV_OF[k] for k in keys if k in ENV_OF})
    results = {}
    for name in needed:
        print(f"peer environment {name}: checking (.peer-envs/{name}) ...", flush=True)
        results[name] = envs.ensure(name, ROOT / ".peer-envs", log=log)
        r = results[name]
        what = f"built in {r.seconds:.0f} s" if r.created else "reused"
        print(f"  {what}: {r.versions or r.error}", flush=True)
    return results


def _start_server(
    key: str, plans: list[ModelPlan], env: envs.EnvResult | None, work: Path
) -> servers.Server:
    if key in ECHO_ONLY:
        hop = ROOT / "model_repository" / "identity_fp32" / "1" / "model.onnx"
        return servers.echo_server(
            work, uvloop=key != "echo", hop=hop if key == "echo-hop" else None
        )
    if key == "pysonic":
        return servers.pysonic(ROOT / "model_repository", MODELS)
    if env is None or env.python is None:
        msg = f"environment '{ENV_OF[key]}' unusable: {env.error if env else 'not built'}"
        raise RuntimeError(msg)
    if key == "pytriton":
        return servers.pytriton(env.python, plans, work)
    return servers.mlserver(env.python, plans, work, workers=0 if key == "mlserver-w0" else 1)


class Bench:
    """The measurement loop: for each server, for each round and point, reference then served."""

    def __init__(
        self,
        args: argparse.Namespace,
        plans: list[ModelPlan],
        env_results: dict[str, envs.EnvResult],
        skipped: dict[str, str],
    ) -> None:
        self.points: list[Point] = args.point_list
        self.plans = plans
        self.env_results = env_results
        self.timing = {**(QUICK if args.quick else FULL)}
        if args.seconds:
            self.timing["seconds"] = args.seconds
        if args.rounds:
            self.timing["rounds"] = args.rounds
        self.work = {m: Workload(ROOT / "model_repository", m) for m in MODELS}
        self.cells: dict[tuple[str, str], Cell] = {}
        #: per server: label, error ("" when it ran), start_seconds, stop_seconds
        self.servers: dict[str, dict[str, Any]] = {
            k: {"label": SERVERS[k], "error": why} for k, why in skipped.items()
        }
        self.echo: servers.Server | None = None

    def cell(self, point: Point, server: str) -> Cell:
        return self.cells.setdefault((point.name, server), Cell(point.name, server))

    def reference(self, point: Point) -> dict[str, Any] | None:
        """The adjacent reference window: direct onnxruntime, or the asyncio echo floor."""
        if point.direct_batch:
            ref = direct_window(
                self.work[point.model], point.direct_batch, self.timing["direct_seconds"]
            )
            self.cell(point, "direct").windows.append(ref)
            return ref
        if self.echo is None:
            self.cell(point, "echo").error = self.servers["echo"]["error"]
            return None
        ref = self.served(self.echo.url, point)
        self.cell(point, "echo").windows.append(ref)
        return ref

    def served(self, url: str, point: Point) -> dict[str, Any]:
        t = self.timing
        work = self.work[point.model]
        return served_window(url, work, point.batch, point.concurrency, t["seconds"], t["warmup"])

    def start(self, key: str, work: Path) -> servers.Server | None:
        """The started server, or None with the reason in ``self.servers[key]``."""
        info = self.servers.setdefault(key, {"label": SERVERS[key], "error": ""})
        print(f"{SERVERS[key]}: starting ...", flush=True)
        try:
            env = self.env_results.get(ENV_OF.get(key, ""))
            server = _start_server(key, self.plans, env, work)
        except Exception as err:
            info["error"] = f"could not start: {err}"
            print(f"  {info['error']}", flush=True)
            return None
        info["start_seconds"] = server.start_seconds
        print(f"  ready in {server.start_seconds:.1f} s at {server.url}", flush=True)
        return server

    def check(self, key: str, server: servers.Server, points: list[Point]) -> None:
        """One request per model, compared with in-process onnxruntime before it is timed."""
        if key in ECHO_ONLY:
            return
        checks = self.servers[key].setdefault("output_check", {})
        for model in dict.fromkeys(p.model for p in points):
            why = check_outputs(server.url, self.work[model])
            checks[model] = why or "ok"
            for point in (p for p in points if p.model == model and why):
                self.cell(point, key).error = f"output check: {why}"
        print(f"  outputs vs onnxruntime: {checks}", flush=True)

    def run_server(self, key: str, server: servers.Server) -> None:
        points = [p for p in self.points if key not in ECHO_ONLY or not p.direct_batch]
        try:
            self.check(key, server, points)
            for _ in range(int(self.timing["rounds"])):
                for point in points:
                    cell = self.cell(point, key)
                    try:
                        ref = self.reference(point)
                        window = self.served(server.url, point)
                    except Exception as err:  # a window that cannot run is a table entry
                        cell.error = f"{type(err).__name__}: {err}"
                        continue
                    cell.add(window, ref)
                    print(f"  {point.name:<20} {key:<12} {cell.last_line()}", flush=True)
        finally:
            stopping = time.monotonic()
            server.stop()
            self.servers[key]["stop_seconds"] = time.monotonic() - stopping

    def run(self, keys: list[str]) -> bool:
        """Every server in ``keys``, one after the other; True when interrupted (Ctrl-C, TERM)."""
        with tempfile.TemporaryDirectory(prefix="peers-") as tmp, ExitStack() as stack:
            work = Path(tmp)
            try:
                if any(not p.direct_batch for p in self.points):
                    self.echo = self.start("echo", work)
                    if self.echo is not None:
                        stack.callback(self.echo.stop)
                for key in (k for k in keys if k != "echo"):
                    server = self.start(key, work)
                    if server is not None:
                        self.run_server(key, server)
                if "echo" in keys and all(k == "echo" for k in keys):
                    for _ in range(int(self.timing["rounds"])):  # the echo row alone
                        for point in (p for p in self.points if not p.direct_batch):
                            self.reference(point)
            except KeyboardInterrupt:
                print("interrupted: stopping the servers", flush=True)
                return True
        return False


def _install_sigterm() -> None:
    def on_term(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt  # unwinds through the ExitStack, which stops every server

    signal.signal(signal.SIGTERM, on_term)


def _parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="short windows (about a minute)")
    ap.add_argument("--json", type=Path, help="write everything measured here")
    ap.add_argument("--plot", type=Path, default=ROOT / "out" / "peers.png", help="the PNG")
    ap.add_argument(
        "--servers",
        default=",".join(SERVERS),
        help=f"comma-separated subset of {', '.join(SERVERS)} (direct always runs)",
    )
    ap.add_argument("--skip-peers", action="store_true", help="no PyTriton / MLServer (no envs)")
    ap.add_argument(
        "--points",
        default="",
        help="comma-separated subset of the points by name, e.g. 'lite b16 c4,identity b1 c8'",
    )
    ap.add_argument("--seconds", type=float, default=0.0, help="served window length override")
    ap.add_argument("--rounds", type=int, default=0, help="windows per (point, server) override")
    args = ap.parse_args(argv)
    args.server_keys = [s.strip() for s in args.servers.split(",") if s.strip()]
    unknown = [s for s in args.server_keys if s not in SERVERS]
    if unknown:
        ap.error(f"unknown server(s) {unknown}; choose from {list(SERVERS)}")
    wanted = {p.strip() for p in args.points.split(",") if p.strip()}
    args.point_list = [p for p in POINTS if not wanted or p.name in wanted]
    if args.quick and not wanted:  # a full-ParticleNet request takes 0.2-0.8 s: too few per window
        args.point_list = [p for p in args.point_list if p.model != "particlenet"]
    if wanted - {p.name for p in POINTS}:
        ap.error(f"unknown point(s) {sorted(wanted - {p.name for p in POINTS})}")
    return args


def _result(
    bench: Bench, args: argparse.Namespace, load_start: tuple[float, ...], **extra: Any
) -> dict[str, Any]:
    """Everything measured, for ``--json``."""
    return {
        "machine": {
            "cores": len(os.sched_getaffinity(0)),
            "loadavg_start": load_start,
            "loadavg_end": os.getloadavg(),
            "python": sys.version.split()[0],
            "platform": platform.platform(),
        },
        "timing": bench.timing,
        "quick": args.quick,
        **extra,
        "envs": {
            k: {**vars(v), "python": str(v.python or "")} for k, v in bench.env_results.items()
        },
        "servers": bench.servers,
        "models": [p.as_dict() for p in bench.plans],
        "points": [p.as_dict() for p in bench.points],
        "cells": [c.as_dict() for c in bench.cells.values()],
    }


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    _install_sigterm()
    load_start = os.getloadavg()
    keys = args.server_keys
    skipped = {k: "skipped (--skip-peers)" for k in keys if args.skip_peers and k in ENV_OF}
    run_keys = [k for k in keys if k not in skipped]
    began = time.monotonic()
    env_results = _ensure_envs(run_keys, Path(tempfile.gettempdir()) / "peers-envs.log")
    env_seconds = time.monotonic() - began
    plans = model_plans(ROOT / "model_repository", MODELS)
    bench = Bench(args, plans, env_results, skipped)
    began = time.monotonic()
    interrupted = bench.run(run_keys)
    run_seconds = time.monotonic() - began

    show = [k for k in SERVERS if k in keys or (k == "echo" and "echo" in bench.servers)]
    rows = ["direct", *show]
    notes = {k: _notes(k, plans) for k in rows}
    labels = {**SERVERS, "direct": "direct onnxruntime"}
    model_lines = [p.describe() for p in plans]
    missing = "interrupted before this window" if interrupted else "not measured"
    print_table(
        bench.points, rows, labels, bench.cells, bench.servers, notes, model_lines, missing=missing
    )
    print(f"environments: {env_seconds:.1f} s; measurement run: {run_seconds:.1f} s")
    print(
        f"load average (1 min) before / after: {load_start[0]:.2f} / {os.getloadavg()[0]:.2f} "
        f"on {len(os.sched_getaffinity(0))} cores (other work on the machine skews the ratios)"
    )
    result = _result(
        bench,
        args,
        load_start,
        interrupted=interrupted,
        env_seconds=env_seconds,
        run_seconds=run_seconds,
        notes=notes,
    )
    try:
        result["plot"] = str(plot_ratios(bench.points, show, SERVERS, bench.cells, args.plot))
        print(f"plot: {result['plot']}")
    except Exception as err:  # the numbers above and in the JSON still stand
        result["plot_error"] = f"{type(err).__name__}: {err}"
        print(f"plot failed: {result['plot_error']}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2, default=str))
        print(f"json: {args.json}")
    return 130 if interrupted else 0


if __name__ == "__main__":
    sys.exit(main())
