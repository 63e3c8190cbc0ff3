"""ParticleNet and -Lite: ONNX vs torch, padding invariance, export determinism, shipping."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from _onnx_compare import assert_same_export
from pysonic.models import JET_CLASSES
from pysonic.models import MODELS as ALL_MODELS
from pysonic.repository import load_model_config

ROOT = Path(__file__).resolve().parent.parent
MODELS = ["particlenet_lite", "particlenet"]


def test_models_package_imports_without_torch() -> None:
    code = "import sys; sys.modules['torch'] = None; import pysonic.models; print('ok')"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "ok"


@pytest.mark.parametrize("name", sorted(ALL_MODELS))
def test_shipped_model_matches_spec(name: str) -> None:
    spec = ALL_MODELS[name]
    config = load_model_config(ROOT / "model_repository" / name, strict=True)
    assert [(t.name, tuple(t.dims)) for t in config.input] == [
        (t.name, t.shape) for t in spec.inputs
    ]
    assert config.max_batch_size == spec.max_batch_size
    assert list(config.dynamic_batching.preferred_batch_size) == list(spec.preferred_batch_sizes)
    assert all(t.name.endswith("mask") for t in config.input if "mask" in t.name)
    path = ROOT / "model_repository" / name / "1" / "model.onnx"
    assert path.stat().st_size < 12 * 1024 * 1024
    session = ort.InferenceSession(str(path))
    assert [i.name for i in session.get_inputs()] == [t.name for t in spec.inputs]
    from pysonic.models.export import example_inputs

    out = session.run(None, example_inputs(spec, 4))[0]
    assert out.shape == (4, *spec.outputs[0].shape)
    assert np.isfinite(out).all()
    if spec.outputs[0].name == "softmax":
        assert out.shape == (4, len(JET_CLASSES))
        np.testing.assert_allclose(out.sum(axis=1), 1, rtol=1e-5)


@pytest.mark.parametrize("name", MODELS)
def test_onnx_matches_torch_and_ignores_padding(name: str, tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    from pysonic.models.export import EXPORTABLE, build, example_inputs, export_model

    spec = EXPORTABLE[name]
    path = export_model(name, tmp_path)
    assert_same_export(path, ROOT / "model_repository" / name / "1" / "model.onnx")
    feeds = example_inputs(spec, 8, seed=11)
    with torch.no_grad():
        want = build(name)(*[torch.from_numpy(feeds[t.name]) for t in spec.inputs]).numpy()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, feeds)[0]
    assert np.abs(got - want).max() < 1e-4
    junk = {k: v.copy() for k, v in feeds.items()}
    rng = np.random.default_rng(2)
    for prefix in ("pf", "sv"):
        padded = junk[f"{prefix}_mask"][:, 0, :] == 0
        for key in (f"{prefix}_points", f"{prefix}_features"):
            noise = rng.standard_normal(junk[key].shape).astype(np.float32) * 100
            junk[key] = np.where(padded[:, None, :], noise, junk[key])
    np.testing.assert_allclose(session.run(None, junk)[0], got, atol=1e-6)
