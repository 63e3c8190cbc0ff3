"""The capacity planner's formulas against hand-computed cases, its CLI, and a tiny tune search."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import DENSE_CONFIG, dense_model, save_model
from pysonic.perf.plan import (
    SonicModel,
    perf_csv_throughput,
    plot_plan,
    t_gpu_from_throughputs,
    timing_inputs,
)
from pysonic.perf.profiler import ProfileSettings
from pysonic.perf.tune import SearchSpace, TuneSettings, config_with, plot_tune, tune
from pysonic.repository.config import parse_model_config
from pysonic.workflow import ModuleTiming, TimingReport

ENV = {**os.environ, "COLUMNS": "200"}


def test_unsaturated_case_by_hand() -> None:
    # p = 0.5, t_CPU = 100 ms, t_GPU = 10 ms, t_latency = 5 ms:
    # t_ideal = 50 + 10 + 5 = 65 ms; saturation at 65 / 10 = 6.5 jobs per server
    m = SonicModel(p=0.5, t_cpu=0.100, t_gpu=0.010, t_latency=0.005)
    assert m.t_ideal == pytest.approx(0.065)
    assert m.saturation_jobs == pytest.approx(6.5)
    for n in (1, 3, 6):
        assert not m.saturated(n)
        assert m.t_sonic(n) == pytest.approx(0.065)
        assert m.events_per_s(n) == pytest.approx(1 / 0.065)
    assert m.total_events_per_s(6) == pytest.approx(6 / 0.065)
    assert m.speedup(1) == pytest.approx(0.100 / 0.065)


def test_saturated_case_by_hand() -> None:
    m = SonicModel(p=0.5, t_cpu=0.100, t_gpu=0.010, t_latency=0.005)
    # N = 10: 50 + 10 * (1 + 10 - 6.5) + 5 = 100 ms = t_GPU * N_CPU / N_GPU
    assert m.saturated(10)
    assert m.t_sonic(10) == pytest.approx(0.100)
    assert m.t_sonic(20) == pytest.approx(0.200)
    assert m.total_events_per_s(20) == pytest.approx(100.0)  # = N_GPU / t_GPU
    # at the saturation point both branches meet
    assert m.t_sonic(6.5) == pytest.approx(m.t_ideal)
    two = SonicModel(p=0.5, t_cpu=0.100, t_gpu=0.010, t_latency=0.005, n_gpu=2)
    assert two.saturation_jobs == pytest.approx(13.0)
    assert two.t_sonic(20) == pytest.approx(0.100)  # 10 jobs per server


def test_servers_needed_and_validation() -> None:
    m = SonicModel(p=0.9, t_cpu=0.050, t_gpu=0.040, t_latency=0.001)
    # t_ideal = 5 + 40 + 1 = 46 ms: 1000 jobs need ceil(1000 * 40 / 46) = 870 servers
    assert m.servers_needed(1000) == 870
    assert m.servers_needed(1) == 1
    with pytest.raises(ValueError, match="fraction"):
        SonicModel(p=1.5, t_cpu=1, t_gpu=1)
    with pytest.raises(ValueError, match="t_gpu > 0"):
        SonicModel(p=0.5, t_cpu=1, t_gpu=0)


def test_inputs_from_measurements(tmp_path: Path) -> None:
    report = TimingReport(
        events=100,
        wall_s=4.0,
        events_per_s=25.0,
        streams=1,
        threads=1,
        modules={
            "cpu": ModuleTiming("cpu", "producer", 100, total_s=1.0),
            "tagger": ModuleTiming("tagger", "external", 100, total_s=0.5, async_wait_s=2.5),
        },
    )
    p, t_cpu = timing_inputs(report, ["tagger"])
    assert p == pytest.approx(0.75)
    assert t_cpu == pytest.approx(0.040)
    csv_path = tmp_path / "perf.csv"
    csv_path.write_text("Concurrency,Inferences/Second,Client Send\n1,100.5,3\n4,400,3\n2,210,3\n")
    assert perf_csv_throughput(csv_path) == 400.0
    # 2 jets per event at 400 jets/s + 1 event at 100/s: 5 ms + 10 ms
    assert t_gpu_from_throughputs([(2, 400.0), (1, 100.0)]) == pytest.approx(0.015)


def test_plan_cli_documents_every_input(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "pysonic", "plan", "--help"]
    done = subprocess.run(cmd, capture_output=True, text=True, check=True, env=ENV)
    words = ["t_ideal", "t_SONIC", "t_CPU", "t_GPU", "t_latency", "N_CPU", "N_GPU", "--p ",
             "--timing-json", "--perf-csv", "--ping", "--server-throughput"]  # fmt: skip
    for word in words:
        assert word in done.stdout, word
    cmd = [
        sys.executable, "-m", "pysonic", "plan", "--p", "0.5", "--t-cpu-ms", "100",
        "--t-gpu-ms", "10", "--t-latency-ms", "5", "--jobs", "100",
        "--plot", str(tmp_path / "plan.png"), "--json", str(tmp_path / "plan.json"),
    ]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, check=True, env=ENV)
    assert "saturation at 6.50 jobs" in done.stdout
    assert "100 jobs need 16 server(s)" in done.stdout
    assert (tmp_path / "plan.png").read_bytes()[:4] == b"\x89PNG"


def test_plan_plot_with_measured_points(tmp_path: Path) -> None:
    m = SonicModel(p=0.5, t_cpu=0.1, t_gpu=0.01)
    path = plot_plan(m, 8, tmp_path / "p.png", measured=[(1, 15.0), (8, 11.0)])
    assert path.read_bytes()[:4] == b"\x89PNG"


# ------------------------------------------------------------------------------ tune
def test_candidate_configs_are_valid_pbtxt() -> None:
    text = config_with(
        DENSE_CONFIG,
        {"max_batch_size": 32, "preferred_batch_size": (4, 8), "max_queue_delay_us": 500,
         "instance_count": 2, "threads": 1},
    )  # fmt: skip
    cfg = parse_model_config(text)
    assert cfg.max_batch_size == 32
    assert list(cfg.dynamic_batching.preferred_batch_size) == [4, 8]
    assert cfg.dynamic_batching.max_queue_delay_microseconds == 500
    assert cfg.instance_group[0].count == 2
    assert cfg.parameters["intra_op_thread_count"].string_value == "1"


@pytest.mark.timeout(300)
def test_tune_completes_a_tiny_search(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    save_model(repo, "dense", dense_model(), DENSE_CONFIG)
    space = SearchSpace(instance_count=(1, 2), max_queue_delay_us=(0,))
    settings = TuneSettings(
        budget_ms=1000.0,
        levels=(2,),
        profile=ProfileSettings(window_ms=300, max_trials=3, stability_pct=50.0, settle_s=0.1),
    )
    result = tune(repo, "dense", space, settings)
    assert len(result.candidates) == 2
    assert all(not c.error for c in result.candidates)
    best = result.best
    assert best is not None
    assert best.score(settings)[0] > 0
    assert parse_model_config(best.config_text).instance_group[0].count in (1, 2)
    assert plot_tune(result, tmp_path / "tune.png").read_bytes()[:4] == b"\x89PNG"
    assert result.to_dict()["candidates"][0]["throughput"] > 0


@pytest.mark.timeout(300)
def test_tune_cli_quick_mode_writes_the_best_config(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    save_model(repo, "dense", dense_model(), DENSE_CONFIG)
    out = tmp_path / "out"
    cmd = [
        sys.executable, "-m", "pysonic", "tune", "-m", "dense", "--model-repository", str(repo),
        "--max-batch-size", "16,64", "--mode", "quick", "--concurrency", "2", "-p", "300",
        "--max-trials", "3", "-s", "50", "--latency-budget-ms", "1000", "--out", str(out),
    ]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=280, check=False, env=ENV)
    assert done.returncode == 0, done.stderr + done.stdout
    cfg = parse_model_config((out / "config.pbtxt").read_text())
    assert cfg.max_batch_size in (16, 64)
    assert (out / "tune.png").exists()
    assert "best:" in done.stdout
