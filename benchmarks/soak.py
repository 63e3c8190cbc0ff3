"""Soak: constant mixed load on one real ``pysonic serve`` process, watching for leaks.

The load, each stream at its own fixed rate from its own thread and client (the rates add up to
``--rate`` requests/s):

  * gRPC: ``identity_fp32`` with a random size (16 .. 36,000 floats), outputs checked;
  * HTTP: the same with Triton's binary tensor extension;
  * shared memory: gRPC with inputs and outputs in a system shared-memory region, the region
    destroyed, re-created and re-registered every 200 requests;
  * a real model: ``dense_tagger`` (ParticleNet-sized inputs) over gRPC, dynamically batched;
  * a bad request now and then (wrong datatype, wrong shape, unknown model, malformed JSON,
    an over-limit body, an unregistered region): each must get its own clear error;
  * connection churn: a new gRPC and HTTP client every 2 s, used once and closed.

Every second (or ``--interval``) the server process's RSS, threads and open file descriptors
are read from /proc (psutil), and the latency percentiles of the last interval recorded. After
the warm-up (10% of the run, at least 10 s), the run passes if there were 0 unexpected errors,
RSS grew by less than 5% (median of the first tenth of the samples vs the last tenth), and the
thread and fd counts did not grow. A rich table is printed and a PNG of RSS and latency over
time written.

    python benchmarks/soak.py --quick --json out/soak.json          # 1 minute
    python benchmarks/soak.py --json out/soak.json --plot out/soak.png   # 30 minutes
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import psutil
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
import tritonclient.utils.shared_memory as shm
from rich.console import Console
from rich.table import Table
from tritonclient.utils import InferenceServerException

import _raw_http as raw_http  # benchmarks/ is on sys.path when a script there runs
from pysonic.server import ServerProcess

ROOT = Path(__file__).resolve().parent.parent
SIZES = (16, 256, 4096, 36_000)
console = Console()


@dataclass
class Recorder:
    """Latencies and outcomes, per stream, since the last sample (thread-safe)."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    window: dict[str, list[float]] = field(default_factory=dict)
    all: dict[str, list[float]] = field(default_factory=dict)
    expected_errors: dict[str, int] = field(default_factory=dict)
    unexpected: list[str] = field(default_factory=list)

    def ok(self, stream: str, seconds: float) -> None:
        with self.lock:
            self.window.setdefault(stream, []).append(seconds)
            self.all.setdefault(stream, []).append(seconds)

    def expected(self, stream: str) -> None:
        with self.lock:
            self.expected_errors[stream] = self.expected_errors.get(stream, 0) + 1

    def error(self, stream: str, what: str) -> None:
        with self.lock:
            self.unexpected.append(f"{time.strftime('%H:%M:%S')} {stream}: {what}")

    def take_window(self) -> list[float]:
        with self.lock:
            values = [v for vs in self.window.values() for v in vs]
            self.window = {}
        return values


def _paced(rate: float, stop: threading.Event, step: Callable[[], None]) -> None:
    """Call ``step`` ``rate`` times a second until ``stop`` (no catch-up bursts)."""
    period = 1.0 / rate
    due = time.monotonic()
    while not stop.is_set():
        step()
        due = max(due + period, time.monotonic() - period)
        stop.wait(max(due - time.monotonic(), 0.0))


def _x(rng: random.Random) -> np.ndarray:
    n = rng.choice(SIZES)
    return np.arange(n, dtype=np.float32).reshape(1, n) + np.float32(rng.random())


def grpc_stream(url: str, rec: Recorder, rate: float, stop: threading.Event) -> None:
    client = grpcclient.InferenceServerClient(url)
    rng = random.Random(1)

    def step() -> None:
        x = _x(rng)
        inp = grpcclient.InferInput("INPUT0", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        t0 = time.perf_counter()
        try:
            out = client.infer("identity_fp32", [inp]).as_numpy("OUTPUT0")
        except InferenceServerException as err:
            rec.error("grpc", str(err))
            return
        if not np.array_equal(out, x):
            rec.error("grpc", "wrong output")
            return
        rec.ok("grpc", time.perf_counter() - t0)

    _paced(rate, stop, step)
    client.close()


def http_stream(url: str, rec: Recorder, rate: float, stop: threading.Event) -> None:
    client = httpclient.InferenceServerClient(url)
    rng = random.Random(2)

    def step() -> None:
        x = _x(rng)
        inp = httpclient.InferInput("INPUT0", list(x.shape), "FP32")
        inp.set_data_from_numpy(x, binary_data=True)
        t0 = time.perf_counter()
        try:
            out = client.infer("identity_fp32", [inp]).as_numpy("OUTPUT0")
        except InferenceServerException as err:
            rec.error("http", str(err))
            return
        if not np.array_equal(out, x):
            rec.error("http", "wrong output")
            return
        rec.ok("http", time.perf_counter() - t0)

    _paced(rate, stop, step)
    client.close()


def shm_stream(url: str, rec: Recorder, rate: float, stop: threading.Event) -> None:
    client = grpcclient.InferenceServerClient(url)
    rng = random.Random(3)
    size = max(SIZES) * 4
    generation = itertools.count()
    state: dict[str, object] = {"uses": 0}

    def fresh_region() -> None:
        old = state.get("region")
        if old is not None:
            client.unregister_system_shared_memory("soak")
            shm.destroy_shared_memory_region(old)
        key = f"/pysonic-soak-{next(generation)}"
        state["region"] = shm.create_shared_memory_region("soak", key, 2 * size)
        client.register_system_shared_memory("soak", key, 2 * size)
        state["uses"] = 0

    def step() -> None:
        if state["uses"] >= 200 or "region" not in state:
            fresh_region()
        state["uses"] = int(state["uses"]) + 1  # type: ignore[call-overload]
        region = state["region"]
        x = _x(rng)
        t0 = time.perf_counter()
        shm.set_shared_memory_region(region, [x])
        inp = grpcclient.InferInput("INPUT0", list(x.shape), "FP32")
        inp.set_shared_memory("soak", x.nbytes)
        out = grpcclient.InferRequestedOutput("OUTPUT0")
        out.set_shared_memory("soak", x.nbytes, offset=size)
        try:
            client.infer("identity_fp32", [inp], outputs=[out])
        except InferenceServerException as err:
            rec.error("shm", str(err))
            return
        y = shm.get_contents_as_numpy(region, np.float32, list(x.shape), offset=size)
        if not np.array_equal(y, x):
            rec.error("shm", "wrong output")
            return
        rec.ok("shm", time.perf_counter() - t0)

    _paced(rate, stop, step)
    client.unregister_system_shared_memory("soak")
    shm.destroy_shared_memory_region(state["region"])
    client.close()


def tagger_stream(url: str, rec: Recorder, rate: float, stop: threading.Event) -> None:
    client = grpcclient.InferenceServerClient(url)
    rng = np.random.default_rng(4)

    def step() -> None:
        n = int(rng.integers(1, 4))
        feats = rng.normal(size=(n, 20, 100)).astype(np.float32)
        mask = np.ones((n, 1, 100), np.float32)
        inputs = []
        for name, a in (("pf_features", feats), ("pf_mask", mask)):
            inp = grpcclient.InferInput(name, list(a.shape), "FP32")
            inp.set_data_from_numpy(a)
            inputs.append(inp)
        t0 = time.perf_counter()
        try:
            out = client.infer("dense_tagger", inputs).as_numpy("softmax")
        except InferenceServerException as err:
            rec.error("tagger", str(err))
            return
        if out.shape != (n, 5) or not np.allclose(out.sum(axis=1), 1, atol=1e-4):
            rec.error("tagger", f"bad output {out.shape}")
            return
        rec.ok("tagger", time.perf_counter() - t0)

    _paced(rate, stop, step)
    client.close()


def _raw_http(port: int, request: bytes) -> int:
    with raw_http.send(port, request) as sock:
        return raw_http.status(sock)


def bad_stream(grpc_url: str, http_port: int, rec: Recorder, stop: threading.Event) -> None:
    """A bad request every second, each with the answer it must get."""
    client = grpcclient.InferenceServerClient(grpc_url)

    def grpc_bad(model: str, dtype: str, array: np.ndarray, status: str) -> Callable[[], None]:
        def call() -> None:
            inp = grpcclient.InferInput("INPUT0", list(array.shape), dtype)
            inp.set_data_from_numpy(array)
            try:
                client.infer(model, [inp])
            except InferenceServerException as err:
                if err.status() == status:
                    rec.expected("bad")
                    return
                rec.error("bad", f"{model}/{dtype}: {err.status()} {err.message()}")
                return
            rec.error("bad", f"{model}/{dtype}: accepted")

        return call

    def unregistered_region() -> None:
        inp = grpcclient.InferInput("INPUT0", [1, 16], "FP32")
        inp.set_shared_memory("no-such-region", 64)
        try:
            client.infer("identity_fp32", [inp])
        except InferenceServerException as err:
            if err.status() == "StatusCode.NOT_FOUND":
                rec.expected("bad")
                return
            rec.error("bad", f"region: {err.status()} {err.message()}")
            return
        rec.error("bad", "unregistered region accepted")

    def http_bad(body: bytes, length: int, status: int) -> Callable[[], None]:
        head = (
            f"POST /v2/models/identity_fp32/infer HTTP/1.1\r\nHost: x\r\n"
            f"Content-Type: application/json\r\nContent-Length: {length}\r\n\r\n"
        ).encode()

        def call() -> None:
            got = _raw_http(http_port, head + body)
            if got == status:
                rec.expected("bad")
            else:
                rec.error("bad", f"HTTP {body[:20]!r}: {got}, wanted {status}")

        return call

    invalid, missing = "StatusCode.INVALID_ARGUMENT", "StatusCode.NOT_FOUND"
    calls = itertools.cycle(
        [
            grpc_bad("identity_fp32", "INT32", np.ones((1, 4), np.int32), invalid),
            grpc_bad("identity_fp32", "FP32", np.ones((1, 2, 2), np.float32), invalid),
            grpc_bad("no_such_model", "FP32", np.ones((1, 4), np.float32), missing),
            http_bad(b'{"inputs": [', 12, 400),
            http_bad(b"{}", 64 << 20, 400),  # over --max-request-bytes: refused from the headers
            unregistered_region,
        ]
    )  # fmt: skip
    _paced(1.0, stop, lambda: next(calls)())
    client.close()


def churn_stream(grpc_url: str, http_url: str, rec: Recorder, stop: threading.Event) -> None:
    """New connections: a fresh client per call, closed after it."""

    def step() -> None:
        try:
            with grpcclient.InferenceServerClient(grpc_url) as g:
                ok = g.is_server_ready()
            h = httpclient.InferenceServerClient(http_url)
            ok = ok and h.is_server_ready()
            h.close()
        except InferenceServerException as err:
            rec.error("churn", str(err))
            return
        if not ok:
            rec.error("churn", "server not ready")

    _paced(0.5, stop, step)


@dataclass
class Sample:
    t: float
    rss_mb: float
    threads: int
    fds: int
    requests: int
    p50_ms: float
    p99_ms: float


def _percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) * 1e3 if values else float("nan")


def run(args: argparse.Namespace) -> dict:
    duration = 60.0 if args.quick else args.duration
    warmup = max(10.0, 0.1 * duration)
    rate = args.rate
    server_args = [
        "--http-port", "0", "--max-request-bytes", str(16 << 20), "--drain-timeout", "10",
    ]  # fmt: skip
    rec = Recorder()
    stop = threading.Event()
    samples: list[Sample] = []
    with ServerProcess(
        ROOT / "model_repository", models=["identity_fp32", "dense_tagger"], extra_args=server_args
    ) as server:
        assert server.proc is not None
        assert server.http_port is not None
        proc = psutil.Process(server.proc.pid)
        http_url = f"127.0.0.1:{server.http_port}"
        bad_args = (server.grpc_url, server.http_port, rec, stop)
        streams = [
            threading.Thread(target=grpc_stream, args=(server.grpc_url, rec, rate * 0.4, stop)),
            threading.Thread(target=http_stream, args=(http_url, rec, rate * 0.3, stop)),
            threading.Thread(target=shm_stream, args=(server.grpc_url, rec, rate * 0.2, stop)),
            threading.Thread(target=tagger_stream, args=(server.grpc_url, rec, rate * 0.1, stop)),
            threading.Thread(target=bad_stream, args=bad_args),
            threading.Thread(target=churn_stream, args=(server.grpc_url, http_url, rec, stop)),
        ]
        start = time.monotonic()
        for t in streams:
            t.start()
        next_report = start + 60
        while (now := time.monotonic()) - start < duration:
            stop.wait(args.interval)
            window = rec.take_window()
            mem = proc.memory_info().rss / 2**20
            samples.append(
                Sample(
                    round(time.monotonic() - start, 2),
                    round(mem, 2),
                    proc.num_threads(),
                    proc.num_fds(),
                    len(window),
                    round(_percentile(window, 50), 3),
                    round(_percentile(window, 99), 3),
                )
            )
            if now >= next_report and not args.quiet:
                s = samples[-1]
                console.log(
                    f"t={s.t:.0f}s rss={s.rss_mb:.1f} MiB threads={s.threads} fds={s.fds} "
                    f"{s.requests / args.interval:.0f} req/s p99={s.p99_ms:.2f} ms "
                    f"unexpected={len(rec.unexpected)}"
                )
                next_report += 60
        stop.set()
        for t in streams:
            t.join(30)
        drain_exit = server.stop()
    return summarize(samples, rec, warmup, duration, rate, drain_exit)


def summarize(
    samples: list[Sample], rec: Recorder, warmup: float, duration: float, rate: float,
    drain_exit: int | None,
) -> dict:  # fmt: skip
    steady = [s for s in samples if s.t >= warmup]
    tenth = max(1, len(steady) // 10)
    first, last = steady[:tenth], steady[-tenth:]

    def med(rows: list[Sample], attr: str) -> float:
        return statistics.median(getattr(s, attr) for s in rows)

    rss0, rss1 = med(first, "rss_mb"), med(last, "rss_mb")
    growth = {
        "rss_pct": round(100 * (rss1 - rss0) / rss0, 2),
        "threads": med(last, "threads") - med(first, "threads"),
        "fds": med(last, "fds") - med(first, "fds"),
    }
    checks = {
        "unexpected_errors == 0": not rec.unexpected,
        "rss growth < 5%": growth["rss_pct"] < 5.0,
        "no thread growth": growth["threads"] <= 0,
        "no fd growth": growth["fds"] <= 0,
        "drain exit code 0": drain_exit == 0,
    }
    streams = {
        name: {
            "requests": len(values),
            "p50_ms": round(_percentile(values, 50), 3),
            "p99_ms": round(_percentile(values, 99), 3),
        }
        for name, values in sorted(rec.all.items())
    }
    return {
        "duration_s": duration,
        "warmup_s": warmup,
        "target_rate": rate,
        "streams": streams,
        "expected_errors": rec.expected_errors,
        "unexpected_errors": rec.unexpected[:50],
        "unexpected_count": len(rec.unexpected),
        "rss_mb": {"after_warmup": rss0, "end": rss1, "max": max(s.rss_mb for s in samples)},
        "threads": {"after_warmup": med(first, "threads"), "end": med(last, "threads")},
        "fds": {"after_warmup": med(first, "fds"), "end": med(last, "fds")},
        "growth": growth,
        "checks": checks,
        "passed": all(checks.values()),
        "samples": [s.__dict__ for s in samples],
    }


def show(result: dict) -> None:
    table = Table(title=f"soak: {result['duration_s']:.0f} s, warm-up {result['warmup_s']:.0f} s")
    for col in ("stream", "requests", "p50 ms", "p99 ms"):
        table.add_column(col, justify="right" if col != "stream" else "left")
    for name, s in result["streams"].items():
        table.add_row(name, str(s["requests"]), f"{s['p50_ms']:.2f}", f"{s['p99_ms']:.2f}")
    table.add_row("bad (expected errors)", str(sum(result["expected_errors"].values())), "", "")
    console.print(table)
    res = Table(title="server process after warm-up -> end")
    for col in ("resource", "after warm-up", "end", "growth"):
        res.add_column(col)
    g = result["growth"]
    r = result["rss_mb"]
    res.add_row("RSS MiB", f"{r['after_warmup']:.1f}", f"{r['end']:.1f}", f"{g['rss_pct']:+.2f}%")
    for key in ("threads", "fds"):
        v = result[key]
        res.add_row(key, f"{v['after_warmup']:.0f}", f"{v['end']:.0f}", f"{g[key]:+.0f}")
    console.print(res)
    for name, ok in result["checks"].items():
        console.print(f"  {'[green]PASS' if ok else '[red]FAIL'}[/] {name}")
    for line in result["unexpected_errors"][:10]:
        console.print(f"  [red]unexpected:[/] {line}")


def plot(result: dict, path: Path) -> None:
    import matplotlib as mpl

    mpl.use("Agg")
    import matplotlib.pyplot as plt

    samples = result["samples"]
    t = [s["t"] / 60 for s in samples]
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    ax1.plot(t, [s["rss_mb"] for s in samples], color="tab:blue")
    ax1.set_ylabel("server RSS (MiB)")
    ax1b = ax1.twinx()
    ax1b.plot(t, [s["threads"] for s in samples], color="tab:green", lw=0.8, label="threads")
    ax1b.plot(t, [s["fds"] for s in samples], color="tab:gray", lw=0.8, label="open fds")
    ax1b.set_ylabel("threads / fds")
    ax1b.legend(loc="lower right")
    ax2.plot(t, [s["p50_ms"] for s in samples], label="p50")
    ax2.plot(t, [s["p99_ms"] for s in samples], label="p99")
    ax2.set_ylabel("latency (ms)")
    ax2.set_xlabel("minutes")
    ax2.legend()
    for ax in (ax1, ax2):
        ax.axvspan(0, result["warmup_s"] / 60, color="0.9")
    g = result["growth"]
    fig.suptitle(
        f"pysonic soak: RSS {g['rss_pct']:+.2f}% after warm-up, threads {g['threads']:+.0f}, "
        f"fds {g['fds']:+.0f}, {result['unexpected_count']} unexpected errors"
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="1 minute instead of --duration")
    ap.add_argument("--duration", type=float, default=1800.0, help="seconds (default 30 min)")
    ap.add_argument("--rate", type=float, default=200.0, help="inference requests/s in all")
    ap.add_argument("--interval", type=float, default=1.0, help="seconds between samples")
    ap.add_argument("--json", type=Path, help="write the results (and the samples) here")
    ap.add_argument("--plot", type=Path, help="PNG of RSS and latency (default: next to --json)")
    ap.add_argument("--quiet", action="store_true", help="no progress lines")
    args = ap.parse_args()
    result = run(args)
    show(result)
    png = args.plot or (args.json.with_suffix(".png") if args.json else Path("out/soak.png"))
    plot(result, png)
    console.print(f"plot: {png}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))
    raise SystemExit(0 if result["passed"] else 1)


if __name__ == "__main__":
    main()
