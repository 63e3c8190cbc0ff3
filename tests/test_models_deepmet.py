"""DeepMET-like model: ONNX vs torch, padding invariance, MET physics, deterministic shipping.

One export per module (a fixture) serves most tests, so the file stays fast on small machines.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest

from _onnx_compare import assert_same_export
from pysonic.models.specs import DEEPMET

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = ROOT / "model_repository" / "deepmet"
NAMES = [t.name for t in DEEPMET.inputs]
# MET is a sum over up to 4,500 particles (tens of GeV): float32 summation order differs between
# torch and ONNX Runtime, so allow 1e-4 absolute plus 1e-5 relative.
ATOL, RTOL = 1e-4, 1e-5


def _session(path: Path) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def _torch_run(model: Any, feeds: dict[str, np.ndarray]) -> np.ndarray:
    torch = pytest.importorskip("torch")
    with torch.no_grad():
        return model(*[torch.from_numpy(feeds[n]) for n in NAMES]).numpy()


def _with_junk(feeds: dict[str, np.ndarray], seed: int) -> dict[str, np.ndarray]:
    """Same events with large random numbers / random categories wherever pf_pdgid == 0."""
    rng = np.random.default_rng(seed)
    out = {k: v.copy() for k, v in feeds.items()}
    pad = feeds["pf_pdgid"][..., 0] == 0  # [N, P]
    junk = rng.uniform(-1e6, 1e6, size=out["pf_features"].shape).astype(np.float32)
    out["pf_features"][pad] = junk[pad]
    out["pf_features"][pad.nonzero()[0][:1], pad.nonzero()[1][:1]] = [np.inf, np.nan] * 4
    for name in ("pf_charge", "pf_frompv"):
        cats = rng.integers(-3, 10, size=out[name].shape).astype(np.int32)  # also out of range
        out[name][pad] = cats[pad]
    return out


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("torch")
    from pysonic.models.export import export_model

    return export_model("deepmet", tmp_path_factory.mktemp("deepmet"))


@pytest.fixture(scope="module")
def model() -> Any:
    pytest.importorskip("torch")
    from pysonic.models.export import build

    return build("deepmet")


def test_onnx_matches_torch(exported: Path, model: Any) -> None:
    from pysonic.models.export import example_inputs

    feeds = example_inputs(DEEPMET, 4, seed=7)
    want = _torch_run(model, feeds)
    session = _session(exported)
    assert [(i.name, i.type) for i in session.get_inputs()] == [
        ("pf_features", "tensor(float)"),
        ("pf_charge", "tensor(int32)"),
        ("pf_pdgid", "tensor(int32)"),
        ("pf_frompv", "tensor(int32)"),
    ]
    assert all(feeds[n].dtype == np.int32 for n in NAMES[1:])
    got = session.run(None, feeds)[0]
    assert got.shape == want.shape == (4, 2)
    assert np.isfinite(got).all()
    assert np.abs(want).max() > 1.0  # a real MET, not an all-zero output
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)


def test_padding_is_ignored(exported: Path, model: Any) -> None:
    from pysonic.models.export import example_inputs

    feeds = example_inputs(DEEPMET, 4, seed=3)
    junk = _with_junk(feeds, seed=5)
    assert not np.array_equal(junk["pf_features"], feeds["pf_features"], equal_nan=True)
    np.testing.assert_array_equal(_torch_run(model, junk), _torch_run(model, feeds))
    session = _session(exported)
    np.testing.assert_array_equal(session.run(None, junk)[0], session.run(None, feeds)[0])


def test_weights_are_in_unit_interval_and_zero_for_padding(model: Any) -> None:
    torch = pytest.importorskip("torch")
    from pysonic.models.export import example_inputs

    feeds = _with_junk(example_inputs(DEEPMET, 2, seed=1), seed=2)
    with torch.no_grad():
        w = model.weights(*[torch.from_numpy(feeds[n]) for n in NAMES]).numpy()
    real = feeds["pf_pdgid"][..., 0] != 0
    assert w.shape == real.shape
    assert (w[~real] == 0).all()
    assert ((w[real] >= 0) & (w[real] <= 1)).all()


def test_unit_weights_give_minus_vector_sum(model: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    torch = pytest.importorskip("torch")
    from pysonic.models.export import example_inputs

    feeds = _with_junk(example_inputs(DEEPMET, 3, seed=9), seed=4)
    monkeypatch.setattr(model, "weights", lambda features, *_: torch.ones(features.shape[:2]))
    got = _torch_run(model, feeds)
    real = feeds["pf_pdgid"][..., 0] != 0  # [N, P]
    pxpy = np.where(real[..., None], feeds["pf_features"][..., 0:2], 0.0).astype(np.float64)
    np.testing.assert_allclose(got, -pxpy.sum(axis=1), rtol=RTOL, atol=ATOL)


def test_single_particle_met_is_antiparallel(exported: Path, model: Any) -> None:
    from pysonic.models.export import example_inputs

    feeds = {k: np.zeros_like(v) for k, v in example_inputs(DEEPMET, 1).items()}
    feeds["pf_features"][0, 0] = [30.0, 40.0, 50.0, 0.5, 0.93, 0.001, 0.002, 0.14]
    feeds["pf_charge"][0, 0] = 3
    feeds["pf_pdgid"][0, 0] = 1
    feeds["pf_frompv"][0, 0] = 3
    for met in (_torch_run(model, feeds)[0], _session(exported).run(None, feeds)[0][0]):
        w = -met / np.array([30.0, 40.0])  # MET = -w (px, py) with one weight w in (0, 1)
        assert 0.0 < w[0] < 1.0
        assert w[0] == pytest.approx(w[1], rel=1e-5)


def test_export_is_deterministic(exported: Path, tmp_path: Path) -> None:
    from pysonic.models.export import export_model

    assert export_model("deepmet", tmp_path).read_bytes() == exported.read_bytes()


def test_shipped_model_is_a_fresh_export(exported: Path) -> None:
    from pysonic.models.export import config_text

    hint = "run: pysonic models export --model deepmet"
    assert_same_export(exported, SHIPPED / "1" / "model.onnx")
    assert (SHIPPED / "config.pbtxt").read_text() == config_text(DEEPMET), hint
