"""The load generator against real servers: counts vs ModelStatistics, perf_analyzer's CSV,
open-loop rates, input data, several processes, and the single-window API benchmarks use."""

from __future__ import annotations

import base64
import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import check_one_clean_level
from pysonic.perf._engine import LoadLevel, Records
from pysonic.perf._inputs import ModelIO, TensorInfo, make_input_sets, parse_shape
from pysonic.perf.loadgen import LoadTarget, measure
from pysonic.perf.profiler import PerfOptions, ProfileSettings, WindowResult, parse_range, run_perf
from pysonic.perf.report import csv_header, plot_perf, write_csv
from pysonic.server import EmbeddedServer

pytestmark = pytest.mark.timeout(240)

#: perf_analyzer's CSV header for -f with its verbose-csv tail (no --percentile)
PA_HEADER = [
    "Concurrency", "Inferences/Second", "Client Send", "Network+Server Send/Recv",
    "Server Queue", "Server Compute Input", "Server Compute Infer", "Server Compute Output",
    "Client Recv", "p50 latency", "p90 latency", "p95 latency", "p99 latency", "Avg latency",
    "request/response", "response wait",
]  # fmt: skip
FAST = ProfileSettings(window_ms=300, max_trials=3, stability_pct=50.0, settle_s=0.1)


def _options(server: EmbeddedServer, **kw: object) -> PerfOptions:
    base: dict[str, object] = {
        "model": "dense",
        "url": server.grpc_url,
        "levels": [LoadLevel(concurrency=1), LoadLevel(concurrency=3)],
        "settings": FAST,
    }
    return PerfOptions(**{**base, **kw})  # type: ignore[arg-type]


@pytest.mark.parametrize("processes", [1, 2])
def test_counts_agree_with_server_statistics(server: EmbeddedServer, processes: int) -> None:
    report = run_perf(_options(server, processes=processes, batch=4))
    ok, failed = report.totals
    assert failed == 0
    assert ok > 0
    # every request the generator completed, warm-up and drained ones included, and no other
    assert report.server_totals.success_count == ok
    assert report.server_totals.inference_count == 4 * ok
    for r in report.results:
        assert r.requests > 0
        assert r.errors == 0
        assert r.throughput == pytest.approx(4 * r.requests_per_s)
        # a window's client and server counts differ only by requests crossing its boundaries
        slack = 2 * r.level.concurrency * r.trials
        assert abs(r.server.success_count - r.requests) <= slack
        assert r.server.avg_queue_us >= 0
        assert r.server.avg_compute_infer_us > 0
        assert r.avg_latency_us > r.server.avg_compute_infer_us
        assert r.client_send_us > 0
        assert r.client_recv_us > 0


def test_cli_writes_perf_analyzers_csv(server: EmbeddedServer, tmp_path: Path) -> None:
    out, plot = tmp_path / "out.csv", tmp_path / "perf.png"
    cmd = [
        sys.executable, "-m", "pysonic", "perf", "-m", "dense", "-u", server.grpc_url,
        "-i", "grpc", "--concurrency-range", "1:4:3", "-p", "300", "--max-trials", "3",
        "-s", "50", "-f", str(out), "--plot", str(plot), "--json", str(tmp_path / "p.json"),
    ]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=180, check=False)
    assert done.returncode == 0, done.stderr + done.stdout
    rows = list(csv.reader(out.read_text().splitlines()))
    assert rows[0] == PA_HEADER
    body = rows[1:]
    assert sorted(int(r[0]) for r in body) == [1, 4]
    ips = [float(r[1]) for r in body]
    assert ips == sorted(ips)  # perf_analyzer sorts by throughput
    for r in body:
        assert all(v.isdigit() for v in r[2:])  # usec, integers
        send, recv, avg = int(r[2]), int(r[8]), int(r[13])
        assert int(r[14]) == send + recv
        assert int(r[15]) == avg - send - recv
        assert int(r[9]) <= int(r[10]) <= int(r[11]) <= int(r[12])  # p50 <= ... <= p99
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    doc = json.loads((tmp_path / "p.json").read_text())
    assert doc["requests_total"] == doc["server_requests_total"]


def test_csv_header_with_percentile_and_request_rate() -> None:
    head = csv_header("rate", [50, 85, 90, 95, 99], extra_percentile=True)
    assert head[0] == "Request Rate"
    assert "p85 latency" in head
    assert "Avg latency" not in head  # perf_analyzer drops it when --percentile is given


@pytest.mark.parametrize("distribution", ["constant", "poisson"])
def test_request_rate_mode_sends_on_schedule(
    server: EmbeddedServer, distribution: str, tmp_path: Path
) -> None:
    settings = ProfileSettings(window_ms=1000, max_trials=3, stability_pct=50.0, settle_s=0.2)
    report = run_perf(
        _options(
            server,
            levels=[LoadLevel(rate=80.0, distribution=distribution)],
            settings=settings,
        )
    )
    (r,) = report.results
    assert r.requests_per_s == pytest.approx(80.0, rel=0.25)
    assert report.server_totals.success_count == report.totals[0]
    path = write_csv(report, tmp_path / "rate.csv")
    assert next(csv.reader(path.read_text().splitlines()))[0] == "Request Rate"


def test_several_processes_drive_the_same_windows(server: EmbeddedServer) -> None:
    report = run_perf(_options(server, levels=[LoadLevel(concurrency=4)], processes=2))
    (r,) = report.results
    assert r.requests > 0
    assert 0 < r.generator_cpu < 1.5  # each load process reports its own CPU share


def test_single_window_api_still_serves_benchmarks(server: EmbeddedServer) -> None:
    x = np.ones((2, 16), np.float32)
    target = LoadTarget(server.grpc_url, "dense", [{"x": x}], outputs=("probs",))
    for processes in (1, 2):
        w = measure(target, concurrency=2, seconds=0.5, warmup=0.2, processes=processes)
        assert w.requests > 0
        assert w.errors == 0
        assert w.batch == 2
        assert w.items_per_s == pytest.approx(2 * w.throughput)
        assert w.percentile(50) <= w.percentile(99)


def test_failures_are_counted_not_fatal(server: EmbeddedServer) -> None:
    bad = LoadTarget(server.grpc_url, "dense", [{"x": np.ones((2, 3), np.float32)}])
    w = measure(bad, concurrency=2, seconds=0.3, warmup=0.1)
    assert w.requests == 0
    assert w.errors > 0
    assert "INVALID_ARGUMENT" in w.error_sample


# ---------------------------------------------------------------- inputs (perf_analyzer rules)
IO = ModelIO(
    "m",
    8,
    (TensorInfo("A", "FP32", (2, -1)), TensorInfo("B", "INT32", (3,))),
    (TensorInfo("OUT", "FP32", (2, -1)),),
)


def test_batch_and_shape_make_the_tensors() -> None:
    (s,) = make_input_sets(IO, batch=4, shapes={"A": (2, 5)})
    assert s["A"].shape == (4, 2, 5)
    assert s["A"].dtype == np.float32
    assert s["B"].shape == (4, 3)
    assert s["B"].dtype == np.int32
    (z,) = make_input_sets(IO, batch=1, shapes={"A": (2, 1)}, data="zero")
    assert not z["A"].any()


def test_input_errors_say_what_to_do() -> None:
    with pytest.raises(ValueError, match="--shape A:2,N"):
        make_input_sets(IO)
    with pytest.raises(ValueError, match="does not fit"):
        make_input_sets(IO, shapes={"A": (3, 5)})
    with pytest.raises(ValueError, match="max_batch_size 8"):
        make_input_sets(IO, batch=16, shapes={"A": (2, 1)})
    nobatch = ModelIO("n", 0, (TensorInfo("A", "FP32", (2,)),), ())
    with pytest.raises(ValueError, match="only -b 1"):
        make_input_sets(nobatch, batch=2)
    with pytest.raises(ValueError, match="NAME:d1,d2"):
        parse_shape("A")
    assert parse_shape("INPUT0:1,2") == ("INPUT0", (1, 2))


def test_perf_analyzer_json_data(tmp_path: Path) -> None:
    b64 = base64.b64encode(np.arange(3, dtype="<i4").tobytes()).decode()
    data = {
        "data": [
            {"A": {"content": [1, 2, 3, 4], "shape": [2, 2]}, "B": [1, 2, 3]},
            {"A": {"content": [5, 6, 7, 8], "shape": [2, 2]}, "B": {"b64": b64}},
            {"A": [9, 9, 9, 9], "B": [0, 0, 0]},
        ]
    }
    path = tmp_path / "data.json"
    path.write_text(json.dumps(data))
    sets = make_input_sets(IO, batch=2, shapes={"A": (2, 2)}, data=str(path))
    assert len(sets) == 1  # three steps make one full batch of two
    assert sets[0]["A"].shape == (2, 2, 2)
    np.testing.assert_array_equal(sets[0]["B"][1], [0, 1, 2])
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"data": [{"A": [1, 2, 3, 4]}]}))
    with pytest.raises(ValueError, match="no data for input"):
        make_input_sets(IO, shapes={"A": (2, 2)}, data=str(bad))


def test_shipped_hep_models_get_valid_random_inputs() -> None:
    from pysonic.models.specs import DEEPMET

    io = ModelIO(
        "deepmet",
        256,
        tuple(TensorInfo(t.name, t.dtype, tuple(t.shape)) for t in DEEPMET.inputs),
        (),
    )
    (s,) = make_input_sets(io, batch=3)
    vocab = next(t.vocab for t in DEEPMET.inputs if t.vocab)
    cat = next(s[t.name] for t in DEEPMET.inputs if t.vocab)
    assert cat.max() < vocab


# ---------------------------------------------------------------- procedure pieces
def test_ranges_levels_and_windows() -> None:
    assert parse_range("1:4", integer=True) == [1, 2, 3, 4]
    assert parse_range("2:8:3", integer=True) == [2, 5, 8]
    assert parse_range("10:20:5", integer=False) == [10.0, 15.0, 20.0]
    with pytest.raises(ValueError, match="start"):
        parse_range("0:4", integer=True)
    assert [LoadLevel(concurrency=5).share(k, 2).concurrency for k in (0, 1)] == [3, 2]
    assert LoadLevel(concurrency=1).share(1, 2) is None
    assert LoadLevel(rate=100.0).share(0, 4).rate == 25.0
    with pytest.raises(ValueError, match="exactly one"):
        LoadLevel()


def test_percentiles_follow_perf_analyzer() -> None:
    lat = np.arange(1, 101, dtype=np.int64) * 1000  # 1..100 us
    recs = Records(
        start_ns=np.zeros(100, np.int64),
        end_ns=lat,
        send_ns=np.zeros(100, np.int64),
        recv_ns=np.zeros(100, np.int64),
        delayed=np.zeros(100, np.bool_),
    )
    from pysonic.perf._control import ServerStats

    w = WindowResult(recs, 10**9, ServerStats(), batch=1)
    # index round(q/100 * (n - 1)): p50 -> 50 (51 us), p99 -> 98 (99 us)
    assert w.percentile_us(50) == 51.0
    assert w.percentile_us(99) == 99.0
    assert w.throughput == 100.0
    inside = recs.ended_between(10_000, 20_000)
    assert inside.count == 10


def test_plot_is_written(server: EmbeddedServer, tmp_path: Path) -> None:
    report = run_perf(_options(server, levels=[LoadLevel(concurrency=1)]))
    assert plot_perf(report, tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"


def test_bench_direct_cli(tmp_path: Path) -> None:
    root = Path(__file__).resolve().parent.parent
    cmd = [
        sys.executable, "-m", "pysonic", "bench-direct", "--model", "particlenet_lite",
        "--model-repository", str(root / "model_repository"), "--batch-sizes", "4,8",
        "--trials", "3", "--provider", "cpu", "--csv", str(tmp_path / "d.csv"),
        "--plot", str(tmp_path / "d.png"),
    ]  # fmt: skip
    env = {**os.environ, "COLUMNS": "200"}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=180, check=False, env=env)
    assert done.returncode == 0, done.stderr
    rows = list(csv.DictReader((tmp_path / "d.csv").read_text().splitlines()))
    assert [(r["model"], r["provider"], r["batch"], r["trials"]) for r in rows] == [
        ("particlenet_lite", "cpu", "4", "3"),
        ("particlenet_lite", "cpu", "8", "3"),
    ]
    assert (tmp_path / "d.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize(
    ("protocol", "shm"), [("http", "none"), ("grpc", "system"), ("http", "system")]
)
def test_http_and_shared_memory_against_pysonic(
    http_server: EmbeddedServer, protocol: str, shm: str
) -> None:
    """perf_analyzer's -i http and --shared-memory system paths, against pysonic's own server."""
    import tritonclient.grpc as grpcclient

    url = http_server.http_url if protocol == "http" else http_server.grpc_url
    options = _options(
        http_server,
        url=url,
        protocol=protocol,
        shared_memory=shm,
        batch=2,
        levels=[LoadLevel(concurrency=2)],
    )
    report = run_perf(options)
    check_one_clean_level(report, batch=2)
    assert report.server_totals.inference_count == 2 * report.totals[0]
    # the generator unregisters and unlinks its regions when it is done
    with grpcclient.InferenceServerClient(http_server.grpc_url) as client:
        assert not client.get_system_shared_memory_status(as_json=True).get("regions")
    assert not list(Path("/dev/shm").glob("pysonic_perf_*"))
