"""gRPC vs HTTP (binary extension, JSON) vs system shared memory, on one pysonic server.

What it measures, in one run against a real ``pysonic serve`` (gRPC and HTTP ports) on the same
cores as the load generator (``pysonic.perf``, perf_analyzer's procedure): requests/s, p50 and p99
of the identity model (``identity_fp32``, so the numbers are the protocols' cost, not a model's)
for two tensor sizes,

  * tiny: one FP32 [1, 16] tensor in and out;
  * DeepMET-sized: one FP32 [1, 36000] tensor in and out (4,500 particles x 8 features, the size
    of DeepMET's ``pf_features``),

over gRPC, HTTP with Triton's binary tensor extension, HTTP with JSON tensors, and gRPC and HTTP
with inputs and outputs in registered system shared-memory regions (tritonclient's helpers; the
server reads and writes the regions, nothing crosses the socket but the request header). JSON and
shared memory do not combine, so that row is absent.

    python benchmarks/protocols.py --quick --json out/protocols.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from pysonic.perf import LoadLevel, PerfOptions, ProfileSettings, run_perf
from pysonic.server import ServerProcess

ROOT = Path(__file__).resolve().parent.parent
MODEL = "identity_fp32"
SIZES = {"tiny [1,16]": 16, "DeepMET-sized [1,36000]": 36_000}
#: (label, protocol, binary tensors, shared memory)
CASES = (
    ("gRPC", "grpc", True, "none"),
    ("gRPC + system shm", "grpc", True, "system"),
    ("HTTP binary", "http", True, "none"),
    ("HTTP binary + system shm", "http", True, "system"),
    ("HTTP JSON", "http", False, "none"),
)
console = Console()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="short windows, one load level")
    ap.add_argument("--json", type=Path, help="write the results here")
    ap.add_argument("--concurrency", type=int, nargs="*", help="load levels (default 1 and 4)")
    args = ap.parse_args()
    levels = args.concurrency or ([4] if args.quick else [1, 4])
    settings = ProfileSettings(
        window_ms=500 if args.quick else 2000,
        max_trials=3 if args.quick else 6,
        stability_pct=15.0,
        settle_s=0.2,
    )
    started = time.monotonic()
    rows = []
    with ServerProcess(
        ROOT / "model_repository", models=[MODEL], extra_args=["--http-port", "0"]
    ) as server:
        urls = {"grpc": server.grpc_url, "http": f"127.0.0.1:{server.http_port}"}
        for size_label, width in SIZES.items():
            for label, protocol, binary, shm in CASES:
                options = PerfOptions(
                    model=MODEL,
                    url=urls[protocol],
                    protocol=protocol,
                    shapes={"INPUT0": [width]},
                    shared_memory=shm,
                    output_shm_size=width * 4,
                    levels=[LoadLevel(concurrency=c) for c in levels],
                    settings=settings,
                    binary_data=binary,
                )
                report = run_perf(options)
                for level in report.results:
                    s = level.summary()
                    rows.append(
                        {
                            "size": size_label,
                            "case": label,
                            "concurrency": int(level.level.value),
                            "requests_per_s": s["requests_per_s"],
                            "p50_ms": level.percentile_us(50) / 1000,
                            "p99_ms": level.percentile_us(99) / 1000,
                            "failed": report.totals[1],
                            "stable": s["stable"],
                        }
                    )
    table = Table(title=f"protocols on {MODEL} (pysonic serve, load generator on the same cores)")
    for col in ("tensor", "protocol", "concurrency", "req/s", "vs gRPC", "p50 ms", "p99 ms"):
        table.add_column(col, justify="left" if col in ("tensor", "protocol") else "right")
    grpc = {(r["size"], r["concurrency"]): r["requests_per_s"] for r in rows if r["case"] == "gRPC"}
    for r in rows:
        ratio = r["requests_per_s"] / grpc[(r["size"], r["concurrency"])]
        table.add_row(
            r["size"],
            r["case"] + ("" if r["stable"] else " (not stable)"),
            str(r["concurrency"]),
            f"{r['requests_per_s']:,.0f}",
            f"{ratio:.2f}",
            f"{r['p50_ms']:.2f}",
            f"{r['p99_ms']:.2f}",
        )
    console.print(table)
    seconds = time.monotonic() - started
    console.print(f"{seconds:.0f} s; failed requests: {sum(r['failed'] for r in rows)}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(
            json.dumps({"model": MODEL, "rows": rows, "seconds": seconds}, indent=2)
        )


if __name__ == "__main__":
    main()
