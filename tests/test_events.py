"""Events: feature builders on hand-made events, DeepMET inputs, storage, the shipped sample."""

from __future__ import annotations

from pathlib import Path

import awkward as ak
import numpy as np
import pytest

from pysonic.events import SAMPLE, jet_inputs, read_events, sample_path, verify_sample
from pysonic.events.dataset import _pack_float, _to_awkward, write_events
from pysonic.events.features import N_PF, PF_FEATURES, SV_FEATURES, _pf, _sv, label
from pysonic.events.inputs import deepmet_inputs
from pysonic.models import DEEPMET_FEATURES


def _event(n: int = 3) -> dict:
    """Particles along phi = 0 at eta 0, 0.1, 0.2, ...; one displaced charged pair."""
    eta = np.arange(n) * 0.1
    pt = np.array([50.0, 30.0, 10.0][:n])
    px, py, pz = pt, np.zeros(n), pt * np.sinh(eta)
    e = np.sqrt(px**2 + pz**2)
    return {
        "px": px,
        "py": py,
        "pz": pz,
        "e": e,
        "pid": np.array([211, -211, 22][:n]),
        "charge": np.array([1.0, -1.0, 0.0][:n]),
        "vx": np.array([1.0, 1.0, 0.0][:n]),
        "vy": np.zeros(n),
        "vz": np.zeros(n),
        "decays": [(0, 0.05, 0.0, [(0.0, 0.0), (0.1, 0.0), (0.2, 0.1)])],
        "partons": [(21, 100.0, 0.0, 0.0)],
        "gen_met": (3.0, -4.0),
    }


def _jets(ev: dict, members: list[np.ndarray]) -> dict:
    p4 = [np.array([ev[k][m].sum() for k in ("px", "py", "pz", "e")]) for m in members]
    cols = {
        k: np.array([p[i] for p in p4], np.float32) for i, k in enumerate(("px", "py", "pz", "e"))
    }
    for k in ("pt", "eta", "phi", "mass"):
        cols[k] = np.zeros(len(members), np.float32)
    cols["label"] = np.zeros(len(members), np.int8)
    cols["constituents"] = [m.astype(np.int16) for m in members]
    return cols


def _events() -> ak.Array:
    """Two hand-made events; the second has one jet made of its last two particles."""
    a, b = _event(), _event()
    b["px"] = b["px"] * 2
    a["ak8"] = a["ak4"] = _jets(a, [np.array([0, 1, 2])])
    b["ak8"] = b["ak4"] = _jets(b, [np.array([1, 2])])
    return _to_awkward("ttbar", 5, [a, b])


def test_pf_features_by_hand() -> None:
    ev = _event()
    jet = np.array([ev["px"].sum(), 0.0, ev["pz"].sum(), ev["e"].sum()])
    out = _pf(ev, jet, np.array([2, 0, 1]))
    assert len(PF_FEATURES) == 20
    assert out["pf_features"].shape == (20, N_PF)
    np.testing.assert_array_equal(out["pf_mask"][0, :4], [1, 1, 1, 0])
    f = dict(zip(PF_FEATURES, out["pf_features"], strict=True))
    np.testing.assert_allclose(np.exp(f["log_pt"][:3]), [50, 30, 10], rtol=1e-5)  # sorted by pT
    np.testing.assert_allclose(f["dphi"][:3], 0, atol=1e-6)
    np.testing.assert_allclose(f["dr"][:3], np.abs(f["deta"][:3]), atol=1e-6)
    np.testing.assert_array_equal(f["charge"][:3], [1, -1, 0])
    np.testing.assert_array_equal(f["is_photon"][:3], [0, 0, 1])
    np.testing.assert_array_equal(f["is_charged_hadron"][:3], [1, 1, 0])
    np.testing.assert_allclose(out["pf_vectors"][0, :3], [50, 30, 10], rtol=1e-6)  # px
    assert np.all(out["pf_features"][:, 3:] == 0)  # zero padding
    assert np.all(out["pf_vectors"][:, 3:] == 0)


def test_secondary_vertex_grouping() -> None:
    ev = _event()
    jet = np.array([ev["px"].sum(), 0.0, ev["pz"].sum(), ev["e"].sum()])
    sv = _sv(ev, jet, np.arange(3))
    assert len(SV_FEATURES) == 11
    np.testing.assert_array_equal(sv["sv_mask"][0, :2], [1, 0])  # one vertex, two tracks
    f = dict(zip(SV_FEATURES, sv["sv_features"][:, 0], strict=True))
    assert f["ntracks"] == 2
    assert f["log_lxy"] == pytest.approx(np.log(2.0))
    np.testing.assert_allclose(sv["sv_vectors"][0, 0], 80.0)  # px of the two tracks
    assert np.all(sv["sv_vectors"][:, 1:] == 0)


def test_labels() -> None:
    ev = _event()
    assert label(ev, 0.1, 0.0) == 0  # all three top quarks inside
    assert label(ev, 0.1, 0.0, radius=0.12) == 4  # small cone: the top is not contained
    assert label(ev, 3.0, 0.0) == 3  # nothing matched: light
    ev["decays"] = []
    assert label(ev, 0.0, 0.1) == 4  # hardest parton is a gluon


def test_jet_inputs_map_constituents_per_event() -> None:
    events = _events()
    jets = jet_inputs(events, "ak8")
    assert jets["pf_features"].shape == (2, 20, N_PF)
    np.testing.assert_array_equal(jets["event"], [0, 1])
    np.testing.assert_array_equal(jets["pf_mask"].sum(axis=(1, 2)), [3, 2])
    # the second event's jet is its particles 1 and 2 (px 60 and 20 after doubling)
    np.testing.assert_allclose(jets["pf_vectors"][1, 0, :2], [60, 20], rtol=1e-3)
    assert list(jets["process"]) == ["ttbar", "ttbar"]
    with pytest.raises(KeyError, match="no jet collection 'ak15'"):
        jet_inputs(events, "ak15")


def test_deepmet_inputs_sorted_padded_categorised() -> None:
    ev = _event()
    # a neutral hadron at eta ~ 6, outside |eta| < 4.7: dropped
    extra = {"px": 1.0, "py": 0.0, "pz": 200.0, "e": np.hypot(1.0, 200.0), "pid": 130}
    for key in ("px", "py", "pz", "e", "pid", "charge", "vx", "vy", "vz"):
        ev[key] = np.append(ev[key], extra.get(key, 0.0))
    ev["ak8"] = ev["ak4"] = _jets(ev, [])
    out = deepmet_inputs(_to_awkward("qcd", 1, [ev]), max_particles=5)
    assert out["pf_features"].shape == (1, 5, len(DEEPMET_FEATURES))
    f = {k: out["pf_features"][0, :, i] for i, k in enumerate(DEEPMET_FEATURES)}
    np.testing.assert_allclose(f["pt"], [50, 30, 10, 0, 0], rtol=1e-3)  # sorted, padded
    np.testing.assert_array_equal(out["pf_charge"][0, :, 0], [3, 1, 2, 0, 0])
    np.testing.assert_array_equal(out["pf_pdgid"][0, :, 0], [1, 1, 3, 0, 0])
    np.testing.assert_array_equal(out["pf_frompv"][0, :, 0], [1, 1, 0, 0, 0])  # displaced
    np.testing.assert_allclose(f["d0"][:2], 0.0, atol=1e-6)  # vertex along the momentum
    np.testing.assert_allclose(out["gen_met"], [[3.0, -4.0]])


def test_pack_float_precision() -> None:
    x = np.random.default_rng(0).lognormal(0, 3, 10000).astype(np.float32)
    packed = _pack_float(x)
    assert np.max(np.abs(packed / x - 1)) <= 2.0**-13
    assert np.unique(packed.view(np.uint32) & 0x7FF).tolist() == [0]


def test_write_read_roundtrip(tmp_path: Path) -> None:
    events = _events()
    back = read_events(write_events(events, tmp_path / "e.parquet"))
    assert ak.to_list(back) == ak.to_list(events)
    with pytest.raises(FileNotFoundError, match="pysonic events generate"):
        read_events(tmp_path / "missing.parquet")


def test_generation_is_reproducible() -> None:
    pytest.importorskip("pythia8mc")
    pytest.importorskip("fastjet")
    from pysonic.events import simulate

    a = simulate("ttbar", 3, seed=11)
    b = simulate("ttbar", 3, seed=11)
    c = simulate("ttbar", 3, seed=12)
    assert ak.to_list(a) == ak.to_list(b)
    assert ak.to_list(a.particles) != ak.to_list(c.particles)
    assert ak.all(ak.num(a.ak8) >= 1)  # boosted ttbar: at least one fat jet
    jets = jet_inputs(a, "ak8")
    assert np.isfinite(jets["pf_features"]).all()


def test_shipped_sample_matches_checksum_and_composition() -> None:
    assert verify_sample() == (sample_path().with_suffix(".sha256").read_text().split()[0])
    events = read_events(sample_path())
    assert len(events) == sum(n for _, n, _ in SAMPLE)
    processes, counts = np.unique(ak.to_numpy(events.process).astype(str), return_counts=True)
    assert dict(zip(processes, counts, strict=True)) == {p: n for p, n, _ in SAMPLE}
    jets = jet_inputs(events, "ak8")
    assert set(np.unique(jets["label"]).tolist()) == {0, 1, 2, 3, 4}
    assert np.isfinite(jets["pf_features"]).all()
    met = deepmet_inputs(events[:4])
    assert (met["pf_pdgid"] > 0).sum() > 500


def test_sample_checksum_detects_change(tmp_path: Path) -> None:
    copy = tmp_path / "sample.parquet"
    copy.write_bytes(sample_path().read_bytes())
    copy.with_suffix(".sha256").write_text("0" * 64 + "  sample.parquet\n")
    with pytest.raises(ValueError, match="does not match"):
        verify_sample(copy)
