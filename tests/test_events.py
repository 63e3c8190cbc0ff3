"""Event generation and jet features: hand-made events, reproducibility, storage."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pysonic.events.features import N_PF, PF_FEATURES, SV_FEATURES, _label, _pf, _sv
from pysonic.events.store import load_jets, write_jets


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
    }


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
    assert np.all(out["pf_features"][:, 3:] == 0)  # zero padding


def test_secondary_vertex_grouping() -> None:
    ev = _event()
    jet = np.array([ev["px"].sum(), 0.0, ev["pz"].sum(), ev["e"].sum()])
    sv = _sv(ev, jet, np.arange(3))
    assert len(SV_FEATURES) == 11
    np.testing.assert_array_equal(sv["sv_mask"][0, :2], [1, 0])  # one vertex, two tracks
    f = dict(zip(SV_FEATURES, sv["sv_features"][:, 0], strict=True))
    assert f["ntracks"] == 2
    assert f["lxy"] == pytest.approx(1.0)


def test_labels() -> None:
    ev = _event()
    assert _label(ev, 0.1, 0.0) == 0  # all three top quarks inside
    assert _label(ev, 3.0, 0.0) == 3  # nothing matched: light
    ev["decays"] = []
    assert _label(ev, 0.0, 0.1) == 4  # hardest parton is a gluon


def test_generation_is_reproducible(tmp_path: Path) -> None:
    pytest.importorskip("pythia8mc")
    pytest.importorskip("fastjet")
    from pysonic.events import generate_jets

    a = generate_jets("ttbar", 3, seed=11)
    b = generate_jets("ttbar", 3, seed=11)
    c = generate_jets("ttbar", 3, seed=12)
    assert a
    np.testing.assert_array_equal(a["pf_features"], b["pf_features"])
    assert a["pf_features"].shape != c["pf_features"].shape or not np.array_equal(
        a["pf_features"], c["pf_features"]
    )
    path = write_jets(a, tmp_path / "jets.parquet")
    back = load_jets(path)
    for key in ("pf_features", "pf_mask", "sv_features", "label", "jet_pt"):
        np.testing.assert_array_equal(back[key], a[key])
    assert back["pf_points"].shape[1:] == (2, 100)
