"""Events as a NanoAOD-like ROOT file (uproot), as an analysis facility reads them.

One ``Events`` TTree, NanoAOD (PFNano) conventions: a counter ``nX`` and branches ``X_field``
per collection, jet constituents as a cross-reference collection::

    run (= generator seed), luminosityBlock, event       int64 / uint32 / int64
    genProcess                                           int32: index into PROCESS_NAMES
    GenMET_pt, GenMET_phi, GenMET_px, GenMET_py          float32
    nPFCands, PFCands_{pt, eta, phi, mass, rawPx, rawPy, rawPz, rawE, vx, vy, vz}   float32
              PFCands_{pdgId, charge}                                              int32
    nFatJet,  FatJet_{pt, eta, phi, mass, rawPx, rawPy, rawPz, rawE}  float32 (AK8);
              FatJet_{label, nConstituents}               int32
    nFatJetPFCands, FatJetPFCands_{jetIdx, pFCandsIdx}    int32, grouped by jet
    nJet, Jet_*, nJetPFCands, JetPFCands_*                the same for AK4

The generated float32 four-vectors are stored as they are (``raw*``: px, py, pz, E) next to
NanoAOD's (pt, eta, phi, mass), so a file read back gives bit-identical model inputs; they are
not named ``px`` ... because coffea's vector behaviours refuse records with two coordinate
systems. coffea's ``PFNanoAODSchema`` reads the file as it is (``events.FatJet``,
``events.PFCands``, each jet's candidates as ``events.FatJet.constituents.pf``).

Example::

    write_root(read_events(sample_path()), Path("sample.root"))
    events = read_root(Path("sample.root"))        # the parquet schema again
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from pysonic._extras import require
from pysonic.events.dataset import PARTICLE_FIELDS
from pysonic.events.features import _kinematics

__all__ = ["COLLECTIONS", "PROCESS_NAMES", "RAW_P4", "read_root", "write_root"]

#: genProcess codes
PROCESS_NAMES = ("ttbar", "qcd", "wjets")
#: pysonic collection -> NanoAOD collection
COLLECTIONS = {"ak4": "Jet", "ak8": "FatJet"}
_P4 = ("px", "py", "pz", "e")
#: the generated float32 four-vector under names that coffea's vector behaviours leave alone
RAW_P4 = {"px": "rawPx", "py": "rawPy", "pz": "rawPz", "e": "rawE"}
_JET_FLOATS = (*_P4, "pt", "eta", "phi", "mass")
_NANO_NAMES = {**RAW_P4, "pid": "pdgId"}
_TREE = "Events"


def _ptetaphim(p4: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """NanoAOD's (pt, eta, phi, mass) of float32 four-vectors, computed in float64."""
    px, py, pz, e = (np.asarray(p4[k], np.float64) for k in _P4)
    pt, eta, phi, _ = _kinematics(px, py, pz, e)
    mass = np.sqrt(np.maximum(e**2 - px**2 - py**2 - pz**2, 0.0))
    cols = {"pt": pt, "eta": eta, "phi": phi, "mass": mass}
    return {k: v.astype(np.float32) for k, v in cols.items()}


def _branches(events: Any) -> dict[str, Any]:
    import awkward as ak

    parts = events["particles"]
    n_part = ak.num(parts, axis=1)
    flat = {k: ak.to_numpy(ak.flatten(parts[k])) for k in PARTICLE_FIELDS}
    pf = {**_ptetaphim(flat), **{RAW_P4[k]: flat[k] for k in _P4}}
    pf.update(vx=flat["vx"], vy=flat["vy"], vz=flat["vz"])
    pf["pdgId"] = flat["pid"].astype(np.int32)
    pf["charge"] = flat["charge"].astype(np.int32)
    codes = {name: i for i, name in enumerate(PROCESS_NAMES)}
    met_px = ak.to_numpy(events["gen_met_px"])
    met_py = ak.to_numpy(events["gen_met_py"])
    out: dict[str, Any] = {
        "run": ak.to_numpy(events["seed"]).astype(np.int64),
        "luminosityBlock": np.ones(len(events), np.uint32),
        "event": ak.to_numpy(events["event"]).astype(np.int64),
        "genProcess": np.array([codes.get(p, -1) for p in ak.to_list(events["process"])], np.int32),
        "GenMET_pt": np.hypot(met_px, met_py).astype(np.float32),
        "GenMET_phi": np.arctan2(met_py, met_px).astype(np.float32),
        "GenMET_px": met_px,
        "GenMET_py": met_py,
        "PFCands": ak.unflatten(ak.zip(pf), n_part),
    }
    for ours, nano in COLLECTIONS.items():
        jets = events[ours]
        n_jets = ak.num(jets, axis=1)
        cols = {
            RAW_P4.get(k, k): ak.to_numpy(ak.flatten(jets[k])).astype(np.float32)
            for k in _JET_FLOATS
        }
        consts = ak.flatten(jets["constituents"], axis=1)
        n_const = ak.to_numpy(ak.num(consts, axis=1)).astype(np.int32)
        cols["label"] = ak.to_numpy(ak.flatten(jets["label"])).astype(np.int32)
        cols["nConstituents"] = n_const
        out[nano] = ak.unflatten(ak.zip(cols), n_jets)
        local_jet = ak.local_index(jets, axis=1)  # jet index within its event
        jet_idx = ak.flatten(ak.broadcast_arrays(local_jet, jets["constituents"])[0], axis=2)
        out[f"{nano}PFCands"] = ak.zip(
            {
                "jetIdx": ak.values_astype(jet_idx, np.int32),
                "pFCandsIdx": ak.values_astype(ak.flatten(jets["constituents"], axis=2), np.int32),
            }
        )
    return out


def write_root(events: Any, path: Path) -> Path:
    """Write events (the parquet schema, :mod:`pysonic.events.dataset`) as NanoAOD-like ROOT."""
    uproot = require("uproot")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with uproot.recreate(path) as f:
        f.mktree(_TREE, _branches(events), field_name=lambda outer, inner: f"{outer}_{inner}")
    return path


def read_root(path: Path, entry_start: int | None = None, entry_stop: int | None = None) -> Any:
    """Read a file written by :func:`write_root` back into the parquet schema (awkward)."""
    import awkward as ak

    uproot = require("uproot")
    path = Path(path)
    if not path.exists():
        msg = f"no ROOT file at {path} (write one with: pysonic events generate --out x.root)"
        raise FileNotFoundError(msg)
    with uproot.open(path) as f:
        if _TREE not in f:
            msg = f"{path}: no '{_TREE}' tree (have: {list(f.keys())})"
            raise KeyError(msg)
        arr = f[_TREE].arrays(entry_start=entry_start, entry_stop=entry_stop)
    particles = ak.zip(
        {
            k: ak.values_astype(arr[f"PFCands_{_NANO_NAMES.get(k, k)}"], t)
            for k, t in PARTICLE_FIELDS.items()
        }
    )
    names = np.array((*PROCESS_NAMES, "unknown"))
    fields: dict[str, Any] = {
        "process": names[ak.to_numpy(arr["genProcess"])],
        "seed": ak.to_numpy(arr["run"]).astype(np.int64),
        "event": ak.to_numpy(arr["event"]).astype(np.int64),
        "gen_met_px": ak.to_numpy(arr["GenMET_px"]),
        "gen_met_py": ak.to_numpy(arr["GenMET_py"]),
        "particles": particles,
    }
    for ours, nano in COLLECTIONS.items():
        n_const = arr[f"{nano}_nConstituents"]
        expect = np.repeat(
            ak.to_numpy(ak.flatten(ak.local_index(n_const, axis=1))),
            ak.to_numpy(ak.flatten(n_const)),
        )
        if not np.array_equal(ak.to_numpy(ak.flatten(arr[f"{nano}PFCands_jetIdx"])), expect):
            msg = f"{path}: {nano}PFCands are not grouped by jet in {nano}_nConstituents order"
            raise ValueError(msg)
        jets = {k: arr[f"{nano}_{RAW_P4.get(k, k)}"] for k in _JET_FLOATS}
        jets["label"] = ak.values_astype(arr[f"{nano}_label"], np.int8)
        consts = ak.values_astype(arr[f"{nano}PFCands_pFCandsIdx"], np.int16)
        jets["constituents"] = ak.unflatten(consts, ak.flatten(n_const), axis=1)
        fields[ours] = ak.zip(jets, depth_limit=2)
    return ak.Array(fields)
