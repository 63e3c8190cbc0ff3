"""Particle Transformer: ONNX vs torch, NaN safety on degenerate/padded jets, padding invariance,
export determinism and the shipped model.

Zero-padded particles are the hazard: their pair features need log(0), sqrt(0), 0/0 and
atan2(0, 0), and one NaN anywhere in a jet's attention poisons the whole jet. These tests feed
the exact degenerate cases (padding, zero and identical four-vectors, one real particle, no SVs)
through both torch and ONNX Runtime.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from pysonic.models import JET_CLASSES, PART

torch = pytest.importorskip("torch")

from _onnx_compare import assert_same_export  # noqa: E402
from pysonic.models.export import build, example_inputs, export_model  # noqa: E402
from pysonic.models.part import pair_features  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
NAMES = [t.name for t in PART.inputs]


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_model("part", tmp_path_factory.mktemp("part"))


@pytest.fixture(scope="module")
def session(exported: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(exported), options, providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    return build("part")


def _torch(model: torch.nn.Module, feeds: dict[str, np.ndarray]) -> np.ndarray:
    with torch.no_grad():
        return model(*[torch.from_numpy(feeds[n]) for n in NAMES]).numpy()


def _degenerate() -> dict[str, np.ndarray]:
    """Jets built to hit every degenerate case of the pair features; padding is all zero.

    0: one real PF particle, no SVs.  1: real particles with zero four-vectors and identical
    massive ones (ΔR = 0).  2: identical massless particles (ΔR = 0 and m² = 0) plus one along the
    beam axis (pT = 0, infinite rapidity).  3: an ordinary jet with SVs (from example_inputs).
    """
    feeds = {k: v.copy() for k, v in example_inputs(PART, 4, seed=5).items()}
    for key in ("pf_features", "pf_vectors", "pf_mask", "sv_features", "sv_vectors", "sv_mask"):
        feeds[key][:3] = 0
    rng = np.random.default_rng(0)
    feeds["sv_mask"][3, 0, :4] = 1  # jet 3 keeps 4 real SVs
    feeds["sv_features"][3, :, 4:] = 0
    feeds["sv_vectors"][3, :, 4:] = 0
    for jet, count in ((0, 1), (1, 6), (2, 4)):
        feeds["pf_mask"][jet, 0, :count] = 1
        feeds["pf_features"][jet, :, :count] = rng.standard_normal((20, count))
    feeds["pf_vectors"][0, :, 0] = [10.0, 5.0, 3.0, 12.0]
    massive = [3.0, -4.0, 12.0, 13.5]
    feeds["pf_vectors"][1, :, 2:6] = np.array(massive, dtype=np.float32)[:, None]  # 0, 1 stay 0
    massless = [3.0, 4.0, 0.0, 5.0]
    feeds["pf_vectors"][2, :, :3] = np.array(massless, dtype=np.float32)[:, None]
    feeds["pf_vectors"][2, :, 3] = [0.0, 0.0, 7.0, 7.0]
    return feeds


def _with_junk(feeds: dict[str, np.ndarray], seed: int) -> dict[str, np.ndarray]:
    """Large random values in every padded position of the features and four-vectors."""
    rng = np.random.default_rng(seed)
    junk = {k: v.copy() for k, v in feeds.items()}
    for prefix in ("pf", "sv"):
        padded = junk[f"{prefix}_mask"][:, 0, :] == 0
        for key in (f"{prefix}_features", f"{prefix}_vectors"):
            noise = (rng.standard_normal(junk[key].shape) * 1e3).astype(np.float32)
            junk[key] = np.where(padded[:, None, :], noise, junk[key])
    return junk


def test_onnx_matches_torch(
    model: torch.nn.Module, session: ort.InferenceSession, exported: Path
) -> None:
    assert (exported.parent.parent / "config.pbtxt").read_text().startswith('name: "part"')
    feeds = example_inputs(PART, 8, seed=11)
    want = _torch(model, feeds)
    got = session.run(None, feeds)[0]
    assert got.shape == (8, len(JET_CLASSES))
    assert np.abs(got - want).max() < 1e-4
    np.testing.assert_allclose(got.sum(axis=1), 1, rtol=1e-5)
    assert (got >= 0).all()
    with torch.no_grad():
        logits = model.logits(*[torch.from_numpy(feeds[n]) for n in NAMES])
    np.testing.assert_allclose(torch.softmax(logits, -1).numpy(), want, atol=1e-6)


@pytest.mark.parametrize("case", ["example", "degenerate"])
def test_outputs_finite(model: torch.nn.Module, session: ort.InferenceSession, case: str) -> None:
    feeds = example_inputs(PART, 8, seed=3) if case == "example" else _degenerate()
    want = _torch(model, feeds)
    got = session.run(None, feeds)[0]
    assert np.isfinite(want).all()
    assert np.isfinite(got).all()
    assert np.abs(got - want).max() < 1e-4
    np.testing.assert_allclose(got.sum(axis=1), 1, rtol=1e-5)


def test_gradients_finite_on_degenerate_jets() -> None:
    torch.manual_seed(0)
    model = build("part").train()
    feeds = _degenerate()
    args = [torch.from_numpy(feeds[n]).requires_grad_(n.endswith("vectors")) for n in NAMES]
    loss = torch.nn.functional.cross_entropy(model.logits(*args), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)
    for arg, name in zip(args, NAMES, strict=True):
        if name.endswith("vectors"):
            assert arg.grad is not None
            assert torch.isfinite(arg.grad).all(), name


@pytest.mark.parametrize("case", ["example", "degenerate"])
def test_padding_junk_changes_nothing(
    model: torch.nn.Module, session: ort.InferenceSession, case: str
) -> None:
    feeds = example_inputs(PART, 8, seed=4) if case == "example" else _degenerate()
    junk = _with_junk(feeds, seed=9)
    assert not np.array_equal(junk["pf_vectors"], feeds["pf_vectors"])
    np.testing.assert_allclose(_torch(model, junk), _torch(model, feeds), atol=1e-5)
    np.testing.assert_allclose(session.run(None, junk)[0], session.run(None, feeds)[0], atol=1e-5)


def test_naive_pair_features_are_not_finite_on_padding() -> None:
    """The hazard is real: the textbook formulas give -inf/NaN for a pair of zero four-vectors."""
    feeds = _degenerate()
    vectors = torch.from_numpy(feeds["pf_vectors"][1:2]).requires_grad_(True)  # [1, 4, 100]
    px, py, pz, e = vectors.unbind(1)
    i, j = 0, 50  # a real zero four-vector and a padded one
    pt = torch.sqrt(px**2 + py**2)
    m2 = (e[:, i] + e[:, j]) ** 2 - sum((c[:, i] + c[:, j]) ** 2 for c in (px, py, pz))
    naive_ln_m2 = torch.log(m2)
    naive_ln_z = torch.log(torch.minimum(pt[:, i], pt[:, j]) / (pt[:, i] + pt[:, j]))
    assert not torch.isfinite(naive_ln_m2).any()
    assert not torch.isfinite(naive_ln_z).any()
    (pt_grad,) = torch.autograd.grad(pt[:, j].sum(), vectors)
    assert not torch.isfinite(pt_grad).all()  # d sqrt(u) = inf at u = 0, times du = 0: NaN
    assert not torch.isfinite(naive_ln_m2 * 0).any()  # masking by multiplication does not help

    safe = pair_features(vectors)
    assert safe.shape == (1, 4, 100, 100)
    assert torch.isfinite(safe).all()
    (grad,) = torch.autograd.grad(safe.sum(), vectors)
    assert torch.isfinite(grad).all()


def test_export_is_deterministic_and_shipped(exported: Path, tmp_path: Path) -> None:
    again = export_model("part", tmp_path)
    assert again.read_bytes() == exported.read_bytes()
    shipped = ROOT / "model_repository" / "part"
    assert_same_export(exported, shipped / "1" / "model.onnx")
    assert (shipped / "config.pbtxt").read_text() == (
        exported.parent.parent / "config.pbtxt"
    ).read_text()
