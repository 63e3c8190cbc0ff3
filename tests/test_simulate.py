"""The continuous-flow simulator: conservation, the server model, KEDA, determinism, the CLI."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pysonic.cli import app
from pysonic.simulate import (
    Arrivals,
    JobProfile,
    KedaPolicy,
    Scenario,
    ServerProfile,
    seed000,
    simulate,
)

CURVE = ServerProfile(((1, 100.0), (2, 180.0), (4, 250.0), (8, 260.0)), startup_s=20.0)


def small(**kw: object) -> Scenario:
    base = Scenario(
        server=CURVE,
        job=JobProfile(events=20, cpu_s=0.05, cpu_cv=0.5, streams=2, requests_per_event=2),
        arrivals=Arrivals(jobs=30, batch=10, interval_s=5.0, spread_s=1.0),
        keda=KedaPolicy(enabled=False),
        initial_servers=2,
        sample_s=1.0,
        seed=3,
    )
    return replace(base, **kw)  # type: ignore[arg-type]


def test_profile_curve_and_batch_model() -> None:
    assert CURVE.slots == 4  # the knee: 250 >= 0.95 * 260
    assert CURVE.rate(0) == 0.0
    assert CURVE.rate(3) == pytest.approx(215.0)
    assert CURVE.rate(100) == 260.0
    gpu = ServerProfile.from_batch_model(2.0, 1.0, max_batch=8, instances=2)
    assert gpu.slots == 16
    assert gpu.rate(1) == pytest.approx(1 / 0.003)
    assert gpu.peak == pytest.approx(2 * 8 / 0.010)
    report = {"model": "m", "levels": [
        {"concurrency": 2, "requests_per_s": 90.0}, {"concurrency": 1, "requests_per_s": 50.0}
    ]}  # fmt: skip
    assert ServerProfile.from_perf(report).points == ((1.0, 50.0), (2.0, 90.0))
    with pytest.raises(ValueError, match="sorted"):
        ServerProfile(((2, 1.0), (1, 1.0)))
    with pytest.raises(ValueError, match="min_replicas"):
        KedaPolicy(min_replicas=0)


@pytest.mark.parametrize("balancing", ["least_request", "round_robin", "per_job"])
@pytest.mark.parametrize("network_s", [0.0, 0.01])
def test_every_event_and_request_is_accounted_for(balancing: str, network_s: float) -> None:
    r = simulate(small(balancing=balancing, network_s=network_s))
    t = r.totals
    assert t["jobs_finished"] == 30
    assert t["events"] == 30 * 20
    assert t["requests_sent"] == t["requests_done"] == 30 * 20 * 2
    assert sum(t["served_per_server"]) == t["requests_done"]
    # the per-sample rates integrate back to the totals
    dts = [b - a for a, b in zip([0.0, *r.times], r.times, strict=False)]
    assert sum(e * dt for e, dt in zip(r.events_per_s, dts, strict=True)) == pytest.approx(600)


@pytest.mark.parametrize(("clients", "expected"), [(1, 100.0), (2, 180.0), (4, 250.0)])
def test_closed_loop_reproduces_the_measured_curve(clients: int, expected: float) -> None:
    """n jobs with no CPU time keep n requests in a server: its throughput is X(n)."""
    sc = small(
        job=JobProfile(events=2000, cpu_s=0.0, cpu_cv=0.0, streams=1),
        arrivals=Arrivals(jobs=clients, batch=clients),
        initial_servers=1,
    )
    t = simulate(sc).totals
    assert t["requests_per_s"] == pytest.approx(expected, rel=1e-6)
    assert t["mean_latency_ms"] == pytest.approx(1000 * clients / expected, rel=1e-6)


def test_keda_scales_up_under_load_and_back_down_after_the_cooldown() -> None:
    keda = KedaPolicy(
        min_replicas=1, max_replicas=6, threshold_ms=20, polling_s=5, window_s=5, cooldown_s=60
    )
    sc = small(
        job=JobProfile(events=400, cpu_s=0.02, cpu_cv=0.2, streams=1),
        # a burst of 40 jobs, then a trickle of light jobs long after it ended
        arrivals=Arrivals(jobs=44, batch=40, interval_s=400.0),
        keda=keda,
        initial_servers=1,
        sample_s=5.0,
    )
    r = simulate(sc)
    ups = [e for e in r.scale_events if e[2] > e[1]]
    downs = [e for e in r.scale_events if e[2] < e[1]]
    assert ups
    assert max(r.replicas) == 6  # the burst needs more than the maximum
    assert downs
    assert r.replicas[-1] == 1  # the trickle: back to the minimum
    # no scale-down within the stabilization window of a scale-up
    for t_down, _, _ in downs:
        assert all(not (t_down - 60 < t_up < t_down) for t_up, _, _ in ups)
    # new replicas serve only after their start-up delay
    first_up = ups[0][0]
    i = next(k for k, t in enumerate(r.times) if t >= first_up)
    assert r.ready_replicas[i] < r.replicas[i]
    # with more servers the burst alone finishes sooner than with the minimum
    burst = replace(sc, arrivals=Arrivals(jobs=40, batch=40))
    fixed = replace(burst, keda=replace(keda, enabled=False))
    assert simulate(burst).totals["makespan_s"] < 0.6 * simulate(fixed).totals["makespan_s"]


def test_same_seed_same_result_other_seed_other_result() -> None:
    a = simulate(small(seed=7)).to_dict()
    b = simulate(small(seed=7)).to_dict()
    c = simulate(small(seed=8)).to_dict()
    assert a == b
    assert a["totals"]["mean_latency_ms"] != c["totals"]["mean_latency_ms"]


def test_per_request_balancing_spreads_load_that_per_job_pins() -> None:
    """Servers added while jobs run get nothing from pinned jobs, everything from per-request."""
    keda = KedaPolicy(min_replicas=1, max_replicas=4, threshold_ms=20, polling_s=5, window_s=5)
    sc = small(
        server=replace(CURVE, startup_s=5.0),
        job=JobProfile(events=1000, cpu_s=0.02, cpu_cv=0.2, streams=1),
        arrivals=Arrivals(jobs=20, batch=20),
        keda=keda,
        initial_servers=1,
    )
    per_request = simulate(sc).totals
    per_job = simulate(replace(sc, balancing="per_job")).totals
    assert per_request["events_per_s"] > 1.5 * per_job["events_per_s"]
    assert per_job["served_per_server"][0] == per_job["requests_done"]


def test_cli_writes_plot_and_json(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app,
        ["simulate", "--jobs", "100", "--events", "20", "--interval-s", "60", "--batch", "20",
         "--max-replicas", "4", "--out-dir", str(tmp_path)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    data = json.loads((tmp_path / "simulate.json").read_text())
    assert data["totals"]["jobs_finished"] == 100
    assert data["scenario"]["name"] == seed000().name
    assert (tmp_path / "simulate.png").stat().st_size > 10_000
