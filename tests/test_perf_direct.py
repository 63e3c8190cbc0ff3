"""The direct benchmark core (seed 001's method) on shipped models: points, caps, plot, errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from pysonic.perf import bench_direct, plot_direct
from pysonic.perf.direct import _input_factory, _session

REPO = Path(__file__).resolve().parent.parent / "model_repository"


def test_points_per_batch_and_throughput() -> None:
    points = bench_direct(REPO / "particlenet_lite", [4, 8], trials=3, threads=1)
    assert [(p.model, p.batch, p.trials) for p in points] == [
        ("particlenet_lite", 4, 3),
        ("particlenet_lite", 8, 3),
    ]
    for p in points:
        assert p.latency_ms_min <= p.latency_ms_p50 <= p.latency_ms_p90
        assert p.throughput == pytest.approx(p.batch / (p.latency_ms_p50 / 1000))


def test_time_cap_stops_early_but_runs_three_trials() -> None:
    (point,) = bench_direct(REPO / "deepmet", [2], trials=50, max_seconds_per_point=1e-6)
    assert point.trials == 3


def test_fresh_inputs_per_trial_follow_the_spec() -> None:
    session = _session(REPO / "deepmet" / "1" / "model.onnx", "cpu", 1)
    make = _input_factory("deepmet", session)
    a, b = make(2, 0), make(2, 1)
    assert a["pf_pdgid"].dtype.name == "int32"
    assert int(a["pf_pdgid"].max()) < 8
    assert not (a["pf_features"] == b["pf_features"]).all()


def test_generic_inputs_for_unknown_models() -> None:
    (point,) = bench_direct(REPO / "identity_fp32", [16], trials=3)
    assert point.model == "identity_fp32"


def test_missing_provider_is_an_error_not_a_cpu_fallback() -> None:
    import onnxruntime as ort

    if "ROCMExecutionProvider" in ort.get_available_providers():
        pytest.skip("ROCm is present here")
    with pytest.raises(RuntimeError, match="ROCMExecutionProvider is not available"):
        bench_direct(REPO / "particlenet_lite", [4], trials=1, provider="rocm")


def test_plot_writes_png(tmp_path: Path) -> None:
    points = bench_direct(REPO / "particlenet_lite", [4, 8], trials=2)
    path = plot_direct(points, tmp_path / "direct.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
