"""Training and physics validation: ROC AUC, the trained tagger on the held-out sample, ONNX vs
torch on generated jets and events for every shipped model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pysonic.events import deepmet_inputs, jet_inputs, read_events, sample_path
from pysonic.models import MODELS
from pysonic.models.evaluate import onnx_predict, roc_auc, sample_auc, top_vs_qcd

ROOT = Path(__file__).resolve().parent.parent
REPO = ROOT / "model_repository"


@pytest.fixture(scope="module")
def sample_events() -> Any:  # an awkward array
    return read_events(sample_path())


@pytest.fixture(scope="module")
def sample_jets(sample_events: Any) -> dict[str, np.ndarray]:
    return jet_inputs(sample_events, "ak8")


def _brute_force_auc(scores: np.ndarray, positive: np.ndarray) -> float:
    pos, neg = scores[positive], scores[~positive]
    wins = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return float(wins / (len(pos) * len(neg)))


def test_roc_auc_matches_pair_counting() -> None:
    rng = np.random.default_rng(3)
    positive = rng.random(300) < 0.4
    scores = np.round(rng.random(300) + positive * 0.3, 1)  # many ties
    assert roc_auc(scores, positive) == pytest.approx(_brute_force_auc(scores, positive))
    assert roc_auc(np.arange(10.0), np.arange(10) >= 5) == 1.0
    assert roc_auc(-np.arange(10.0), np.arange(10) >= 5) == 0.0
    assert roc_auc(np.ones(10), np.arange(10) >= 5) == 0.5
    with pytest.raises(ValueError, match="both classes"):
        roc_auc(np.ones(3), np.ones(3, bool))


def test_top_vs_qcd_uses_top_jets_of_ttbar_and_all_qcd_jets() -> None:
    probs = np.array(
        [[0.9, 0.1, 0, 0, 0], [0.1, 0, 0, 0, 0.9], [0.8, 0, 0, 0.2, 0], [0, 1, 0, 0, 0]]
    )
    labels = np.array([0, 4, 0, 1])
    process = np.array(["ttbar", "qcd", "qcd", "ttbar"])  # a top-like QCD jet; a W from ttbar
    # positives: jet 0; negatives: jets 1 and 2 (both QCD); jet 3 (W in ttbar) is left out
    assert top_vs_qcd(probs, labels, process) == pytest.approx(1.0)
    probs[2] = probs[0]  # a QCD jet as top-like as the top: one tie out of two pairs
    assert top_vs_qcd(probs, labels, process) == pytest.approx(0.75)


def test_trained_tagger_separates_top_from_qcd_on_the_held_out_sample(
    sample_jets: dict[str, np.ndarray], capsys: pytest.CaptureFixture[str]
) -> None:
    auc = sample_auc(REPO / "particlenet_lite" / "1" / "model.onnx", sample_jets)
    with capsys.disabled():
        print(f"\nparticlenet_lite top-vs-QCD ROC AUC on the shipped sample: {auc:.4f}")
    assert auc > 0.9


@pytest.mark.parametrize("name", ["particlenet_lite", "particlenet", "part"])
def test_onnx_matches_torch_on_generated_jets(name: str, sample_jets: dict) -> None:
    torch = pytest.importorskip("torch")
    from pysonic.models.export import build

    spec = MODELS[name]
    rng = np.random.default_rng(5)
    rows = rng.choice(len(sample_jets["label"]), size=48, replace=False)
    jets = {t.name: sample_jets[t.name][rows] for t in spec.inputs}
    got = onnx_predict(REPO / name / "1" / "model.onnx", jets)
    with torch.no_grad():
        want = build(name)(*[torch.from_numpy(jets[t.name]) for t in spec.inputs]).numpy()
    assert np.isfinite(got).all()
    assert np.abs(got - want).max() < 1e-4


def test_deepmet_onnx_matches_torch_on_generated_events(sample_events: Any) -> None:
    torch = pytest.importorskip("torch")
    from pysonic.models.export import build

    spec = MODELS["deepmet"]
    events = deepmet_inputs(sample_events[::250])
    feeds = {t.name: events[t.name] for t in spec.inputs}
    got = onnx_predict(REPO / "deepmet" / "1" / "model.onnx", feeds)
    with torch.no_grad():
        want = build("deepmet")(*[torch.from_numpy(feeds[t.name]) for t in spec.inputs]).numpy()
    assert got.shape == (len(events["gen_met"]), 2)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_part_is_finite_on_padded_generated_jets(sample_jets: dict) -> None:
    spec = MODELS["part"]
    few = np.argsort(sample_jets["pf_mask"].sum(axis=(1, 2)))[:16]  # the most padded jets
    jets = {t.name: sample_jets[t.name][few] for t in spec.inputs}
    assert jets["pf_mask"].sum(axis=(1, 2)).max() < 100
    probs = onnx_predict(REPO / "part" / "1" / "model.onnx", jets)
    assert np.isfinite(probs).all()
    np.testing.assert_allclose(probs.sum(axis=1), 1, rtol=1e-5)


def test_training_smoke_runs_and_learns_shape() -> None:
    pytest.importorskip("torch")
    from pysonic.models.export import example_inputs
    from pysonic.models.train import train_tagger

    n = 96
    jets = example_inputs(MODELS["particlenet_lite"], n, seed=3)
    jets["label"] = np.concatenate(
        [np.zeros(48, np.int64), np.random.default_rng(0).integers(2, 5, 48)]
    )
    jets["process"] = np.where(jets["label"] == 0, "ttbar", "qcd")
    result = train_tagger(jets, epochs=1, batch_size=32, val_fraction=0.25)
    assert result.n_train == 72
    assert result.n_val == 24
    assert len(result.history) == 1
    assert np.isfinite(result.history[0]["loss"])


def test_physics_survives_serving(sample_events: Any, sample_jets: dict) -> None:
    """The shipped HEP models served by pysonic (NVIDIA's tritonclient over gRPC) give the
    direct onnxruntime outputs on generated jets and events, and the same tagger AUC."""
    import tritonclient.grpc as grpcclient

    from pysonic.server import EmbeddedServer, ServerOptions

    names = ["particlenet_lite", "part", "deepmet"]
    options = ServerOptions(
        model_repository=REPO,
        host="127.0.0.1",
        grpc_port=0,
        metrics_port=None,
        model_control_mode="explicit",
        load_models=names,
    )
    ttbar_qcd = np.flatnonzero(np.isin(sample_jets["process"], ["ttbar", "qcd"]))[::6]
    jets = {k: v[ttbar_qcd] for k, v in sample_jets.items()}
    met = deepmet_inputs(sample_events[::400])
    with EmbeddedServer(options) as server:
        client = grpcclient.InferenceServerClient(server.grpc_url)
        for name in names:
            spec = MODELS[name]
            data = met if name == "deepmet" else jets
            n = len(data[spec.inputs[0].name])
            step = 16 if name != "deepmet" else 2
            served = []
            for i in range(0, n, step):
                inputs = []
                for t in spec.inputs:
                    arr = np.ascontiguousarray(data[t.name][i : i + step])
                    inp = grpcclient.InferInput(t.name, list(arr.shape), t.dtype)
                    inp.set_data_from_numpy(arr)
                    inputs.append(inp)
                served.append(client.infer(name, inputs).as_numpy(spec.outputs[0].name))
            got = np.concatenate(served)
            want = onnx_predict(REPO / name / "1" / "model.onnx", data)
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5, err_msg=name)
            if name == "particlenet_lite":
                auc_served = top_vs_qcd(got, jets["label"], jets["process"])
                auc_direct = top_vs_qcd(want, jets["label"], jets["process"])
                assert auc_served == pytest.approx(auc_direct, abs=1e-6)
        client.close()
