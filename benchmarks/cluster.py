"""Scale-out on this host: 1, 2, 3 servers behind HAProxy, and sync vs async clients at a distance.

1. Throughput of ``particlenet_lite`` (closed loop, ``pysonic perf``'s engine) through HAProxy with
   1, 2 and 3 servers, and straight to one server: efficiency per server (the 2 cores cap the sum)
   and the load balancer's own cost per request (HAProxy's CPU time from /proc, and the latency
   it adds at concurrency 1).
2. SONIC jobs (``_cluster_jobs.py``, one process per mode) at 0, 10 and 50 ms of added round trip:
   the clients run in a network namespace joined to the host by a veth pair (``tbf`` at 1 Gbit/s
   on it) and reach HAProxy through a delay proxy (no ``tc netem`` in this kernel). Per event:
   10 ms of work before the inference and 40 ms that a sync job does after the response and an
   async job (ExternalWork) does while the request is in flight.

    python benchmarks/cluster.py --quick --json out/cluster.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from _delay_proxy import DelayProxy  # benchmarks/ is on sys.path when a script there runs
from _proc import cpu_seconds
from pysonic.cluster import LocalCluster, haproxy_binary
from pysonic.perf import LoadLevel, PerfOptions, ProfileSettings, run_perf

ROOT = Path(__file__).resolve().parent.parent
JOBS = Path(__file__).resolve().parent / "_cluster_jobs.py"
MODEL = "particlenet_lite"
NS, VETH_HOST, VETH_NS = "pysonic-bench", "pysb-h", "pysb-n"
HOST_IP, NS_IP = "10.213.0.1", "10.213.0.2"


def _perf(url: str, concurrency: int, quick: bool) -> dict[str, Any]:
    settings = ProfileSettings(
        window_ms=800 if quick else 3000, max_trials=3 if quick else 6, stability_pct=15
    )
    options = PerfOptions(
        model=MODEL, url=url, levels=[LoadLevel(concurrency=concurrency)], settings=settings
    )
    report = run_perf(options)
    level = report.to_dict()["levels"][0]
    level["requests_total"] = report.totals[0]
    return level


def scaling(quick: bool) -> list[dict[str, Any]]:
    rows = []
    repo = ROOT / "model_repository"
    for n in (1, 2, 3):
        with LocalCluster(repo, servers=n, models=[MODEL], prometheus=False) as cluster:
            state = cluster.state
            assert state is not None
            targets = [("haproxy", state.url)]
            if n == 1:
                targets.insert(0, ("direct", f"127.0.0.1:{state.servers[0].grpc_port}"))
            for path, url in targets:
                for concurrency in (1, 16) if n == 1 else (16,):
                    cpu0 = cpu_seconds(state.haproxy_pid)
                    level = _perf(url, concurrency, quick)
                    cpu = cpu_seconds(state.haproxy_pid) - cpu0
                    rows.append(
                        {
                            "servers": n,
                            "path": path,
                            "concurrency": concurrency,
                            "requests_per_s": level["requests_per_s"],
                            "p50_latency_us": level["p50_latency_us"],
                            "haproxy_cpu_us_per_request": (
                                1e6 * cpu / level["requests_total"] if path == "haproxy" else None
                            ),
                        }
                    )
    return rows


class Namespace:
    """A network namespace for the clients, joined to the host by a veth pair shaped by tbf."""

    def __init__(self) -> None:
        self.ok = False
        self.reason = ""

    def __enter__(self) -> Namespace:
        cmds = [
            ["ip", "netns", "add", NS],
            ["ip", "link", "add", VETH_HOST, "type", "veth", "peer", "name", VETH_NS],
            ["ip", "link", "set", VETH_NS, "netns", NS],
            ["ip", "addr", "add", f"{HOST_IP}/24", "dev", VETH_HOST],
            ["ip", "link", "set", VETH_HOST, "up"],
            ["ip", "netns", "exec", NS, "ip", "addr", "add", f"{NS_IP}/24", "dev", VETH_NS],
            ["ip", "netns", "exec", NS, "ip", "link", "set", VETH_NS, "up"],
            ["ip", "netns", "exec", NS, "ip", "link", "set", "lo", "up"],
            ["tc", "qdisc", "add", "dev", VETH_HOST, "root", "tbf", "rate", "1gbit",
             "burst", "256kb", "latency", "50ms"],
        ]  # fmt: skip
        for cmd in cmds:
            run = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if run.returncode != 0:
                self.reason = f"{' '.join(cmd)}: {run.stderr.strip()}"
                self.__exit__(None, None, None)
                return self
        self.ok = True
        return self

    def __exit__(self, *exc: object) -> None:
        subprocess.run(["ip", "netns", "del", NS], capture_output=True, check=False)
        subprocess.run(["ip", "link", "del", VETH_HOST], capture_output=True, check=False)

    def prefix(self) -> list[str]:
        return ["ip", "netns", "exec", NS] if self.ok else []


def _jobs(prefix: list[str], url: str, events: int) -> dict[str, float]:
    """One sync and one async job at the same time; events/s of each."""
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}:{os.environ.get('PYTHONPATH', '')}"}
    start_at = time.time() + 3.0
    procs = {
        mode: subprocess.Popen(
            [
                *prefix,
                sys.executable,
                str(JOBS),
                "--url",
                url,
                "--model",
                MODEL,
                "--events",
                str(events),
                "--streams",
                "1",
                "--cpu-s",
                "0.010",
                "--cpu-cv",
                "0",
                "--overlap-s",
                "0.040",
                "--mode",
                mode,
                "--start-at",
                str(start_at),
            ],
            stdout=subprocess.PIPE,
            env=env,
            text=True,
        )
        for mode in ("sync", "async")
    }
    out = {}
    for mode, p in procs.items():
        text, _ = p.communicate(timeout=300)
        if p.returncode != 0:
            msg = f"the {mode} job failed (exit {p.returncode})"
            raise RuntimeError(msg)
        r = json.loads(text.strip().splitlines()[-1])
        out[mode] = r["events"] / (r["end"] - r["start"])
        out[f"{mode}_errors"] = r["errors"]
    return out


def latency(quick: bool) -> tuple[list[dict[str, Any]], str]:
    rows: list[dict[str, Any]] = []
    events = 25 if quick else 150
    repo = ROOT / "model_repository"
    with (
        LocalCluster(repo, servers=2, models=[MODEL], prometheus=False) as cluster,
        Namespace() as ns,
    ):
        assert cluster.state is not None
        listen = HOST_IP if ns.ok else "127.0.0.1"
        where = "netns + veth (tbf 1 Gbit/s)" if ns.ok else f"loopback ({ns.reason})"
        with DelayProxy((listen, 0), ("127.0.0.1", cluster.state.port)) as proxy:
            for rtt_ms in (0, 10, 50):
                proxy.one_way_s = rtt_ms / 2000
                r = _jobs(ns.prefix(), f"{listen}:{proxy.port}", events)
                rows.append({"rtt_ms": rtt_ms, **r})
    for r in rows:
        r["sync_vs_0ms"] = r["sync"] / rows[0]["sync"]
        r["async_vs_0ms"] = r["async"] / rows[0]["async"]
    return rows, where


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="short windows and jobs (about 1 min)")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args()
    if haproxy_binary() is None:
        sys.exit("haproxy is not installed (apt-get install -y haproxy)")
    console = Console()
    scale = scaling(args.quick)
    base = next(r for r in scale if r["path"] == "haproxy" and r["concurrency"] == 16)
    table = Table(title=f"{MODEL} behind HAProxy (2 cores): throughput per cluster size")
    for col in ("servers", "path", "concurrency", "req/s", "per server vs 1", "p50 ms",
                "HAProxy CPU us/req"):  # fmt: skip
        table.add_column(col, justify="right")
    for r in scale:
        r["efficiency_per_server"] = (
            r["requests_per_s"] / (r["servers"] * base["requests_per_s"])
            if r["path"] == "haproxy" and r["concurrency"] == 16
            else None
        )
        cpu = r["haproxy_cpu_us_per_request"]
        table.add_row(
            str(r["servers"]), r["path"], str(r["concurrency"]), f"{r['requests_per_s']:.0f}",
            f"{r['efficiency_per_server']:.2f}" if r["efficiency_per_server"] else "-",
            f"{r['p50_latency_us'] / 1000:.2f}", f"{cpu:.0f}" if cpu is not None else "-",
        )  # fmt: skip
    console.print(table)
    direct = {r["concurrency"]: r for r in scale if r["path"] == "direct"}
    via = {r["concurrency"]: r for r in scale if r["path"] == "haproxy" and r["servers"] == 1}
    lb_cost = {
        "added_p50_latency_us_c1": via[1]["p50_latency_us"] - direct[1]["p50_latency_us"],
        "throughput_ratio_c16": via[16]["requests_per_s"] / direct[16]["requests_per_s"],
        "haproxy_cpu_us_per_request_c16": via[16]["haproxy_cpu_us_per_request"],
    }
    console.print(
        f"load balancer cost (1 server): +{lb_cost['added_p50_latency_us_c1']:.0f} us p50 at "
        f"concurrency 1, throughput x{lb_cost['throughput_ratio_c16']:.2f} at 16, "
        f"{lb_cost['haproxy_cpu_us_per_request_c16']:.0f} us of HAProxy CPU per request"
    )
    lat, where = latency(args.quick)
    table = Table(title=f"SONIC jobs at a distance ({where}): events/s per job")
    for col in ("added RTT ms", "sync", "async", "sync vs 0 ms", "async vs 0 ms", "errors"):
        table.add_column(col, justify="right")
    for r in lat:
        table.add_row(
            str(r["rtt_ms"]), f"{r['sync']:.1f}", f"{r['async']:.1f}",
            f"{r['sync_vs_0ms']:.2f}", f"{r['async_vs_0ms']:.2f}",
            str(r["sync_errors"] + r["async_errors"]),
        )  # fmt: skip
    console.print(table)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(
            json.dumps(
                {"scaling": scale, "load_balancer": lb_cost, "latency": lat, "network": where},
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
