"""Generated events as awkward arrays, stored in parquet: particles, AK4 and AK8 jets, truth.

One record per event (columnar in memory and on disk)::

    process      string      "ttbar" | "qcd" | "wjets"
    seed, event  int64       generator seed and the event's index in that run
    gen_met_px, gen_met_py   float32, GeV: the neutrinos' vector sum (DeepMET's target)
    particles    var * {px, py, pz, e: float32 GeV; pid: int32; charge: int8;
                        vx, vy, vz: float32 mm (truth production vertex)}
    ak4, ak8     var * {px, py, pz, e, pt, eta, phi, mass: float32; label: int8
                        (index into JET_CLASSES); constituents: var * int16
                        (indices into the event's particles)}

Particles are the visible final state with |eta| < 5 and pT > 0.1 GeV, stored at 12
mantissa bits like miniAOD's packed candidates. Jets are anti-kt (FastJet) on the particles
inside the tracker-like acceptance; AK8: R=0.8,
pT > 200 GeV, |eta| < 2.0; AK4: R=0.4, pT > 20 GeV, |eta| < 2.5. Model inputs are built from
this on demand (:mod:`pysonic.events.inputs`), so one small file feeds every model.

Example::

    events = simulate("ttbar", n=100, seed=1)
    write_events(events, Path("ttbar.parquet"))
    events = read_events(Path("ttbar.parquet"))
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pysonic.events.features import _kinematics, cluster, label

__all__ = [
    "JET_COLLECTIONS",
    "PARTICLE_FIELDS",
    "concatenate",
    "file_checksum",
    "read_events",
    "simulate",
    "write_events",
]

#: name -> (radius, pT min GeV, |eta| max)
JET_COLLECTIONS: dict[str, tuple[float, float, float]] = {
    "ak4": (0.4, 20.0, 2.5),
    "ak8": (0.8, 200.0, 2.0),
}
PARTICLE_FIELDS: dict[str, type] = {
    "px": np.float32,
    "py": np.float32,
    "pz": np.float32,
    "e": np.float32,
    "pid": np.int32,
    "charge": np.int8,
    "vx": np.float32,
    "vy": np.float32,
    "vz": np.float32,
}
_JET_FLOATS = ("px", "py", "pz", "e", "pt", "eta", "phi", "mass")
#: stored particles: |eta| below this (the detector's reach; nothing beyond is seen) and pT
#: above this (GeV; softer particles, e.g. Pythia's eV-scale photons, leave no track or cluster)
ETA_STORED = 5.0
PT_STORED = 0.1
#: stored precision, like CMS miniAOD's packed candidates: four-vector components keep 12
#: mantissa bits (relative 1.2e-4, far below any detector resolution), vertices 0.1 um
MANTISSA_BITS = 12
VERTEX_PRECISION_MM = 1e-4


def _pack_float(a: np.ndarray, bits: int = MANTISSA_BITS) -> np.ndarray:
    """Round float32 values to ``bits`` mantissa bits, so the file compresses (zstd)."""
    u = np.ascontiguousarray(a, np.float32).view(np.uint32)
    drop = 23 - bits
    rounded = (u + np.uint32(1 << (drop - 1))) & np.uint32(~((1 << drop) - 1) & 0xFFFFFFFF)
    return rounded.view(np.float32)


def _jets(ev: dict, collection: str) -> dict[str, Any]:
    """Cluster one event; per-jet columns plus the constituents' (local) indices."""
    radius, pt_min, eta_max = JET_COLLECTIONS[collection]
    rows: list[tuple[np.ndarray, np.ndarray, int]] = []
    for p4, idx in cluster(ev, radius, pt_min):
        pt, eta, phi, _ = _kinematics(*p4)
        if abs(eta) <= eta_max:
            rows.append((p4, idx, label(ev, float(eta), float(phi), radius)))
    p4s = np.array([r[0] for r in rows], np.float64).reshape(-1, 4)
    pt, eta, phi, _ = _kinematics(*p4s.T)
    mass = np.sqrt(np.maximum(p4s[:, 3] ** 2 - (p4s[:, :3] ** 2).sum(axis=1), 0.0))
    cols = dict(zip(_JET_FLOATS, (*p4s.T, pt, eta, phi, mass), strict=True))
    return {
        **{k: np.asarray(v, np.float32) for k, v in cols.items()},
        "label": np.array([r[2] for r in rows], np.int8),
        "constituents": [np.sort(r[1]).astype(np.int16) for r in rows],
    }


def _to_awkward(process: str, seed: int, events: Sequence[dict]) -> Any:
    """Columnar assembly (no per-value Python objects): concatenate, then unflatten."""
    import awkward as ak

    n_part = np.array([len(ev["px"]) for ev in events], np.int64)
    cols = {
        k: np.concatenate([np.asarray(ev[k]) for ev in events]).astype(t)
        for k, t in PARTICLE_FIELDS.items()
    }
    for k in ("px", "py", "pz", "e"):
        cols[k] = _pack_float(cols[k])
    for k in ("vx", "vy", "vz"):
        cols[k] = (np.round(cols[k] / VERTEX_PRECISION_MM) * VERTEX_PRECISION_MM).astype(np.float32)
    particles = ak.zip(cols)
    fields: dict[str, Any] = {
        "process": np.array([process] * len(events)),
        "seed": np.full(len(events), seed, np.int64),
        "event": np.arange(len(events), dtype=np.int64),
        "gen_met_px": np.array([ev["gen_met"][0] for ev in events], np.float32),
        "gen_met_py": np.array([ev["gen_met"][1] for ev in events], np.float32),
        "particles": ak.unflatten(particles, n_part),
    }
    for name in JET_COLLECTIONS:
        per_event = [ev[name] for ev in events]
        n_jets = np.array([len(j["label"]) for j in per_event], np.int64)
        consts = [c for j in per_event for c in j["constituents"]]
        flat = np.concatenate(consts) if consts else np.zeros(0, np.int16)
        jets = {k: np.concatenate([j[k] for j in per_event]) for k in (*_JET_FLOATS, "label")}
        jets["constituents"] = ak.unflatten(flat, np.array([len(c) for c in consts], np.int64))
        fields[name] = ak.unflatten(ak.zip(jets, depth_limit=1), n_jets)
    return ak.Array(fields)


def simulate(process: str, n: int, seed: int, progress: Callable[[int], None] | None = None) -> Any:
    """Generate ``n`` events (Pythia8), cluster AK4 and AK8 jets, label them; an awkward array."""
    from pysonic.events.generate import generate

    events = []
    for ev in generate(process, n, seed):
        pt, eta, _, _ = _kinematics(ev["px"], ev["py"], ev["pz"], ev["e"])
        seen = (np.abs(eta) < ETA_STORED) & (pt > PT_STORED)
        for k in PARTICLE_FIELDS:
            ev[k] = ev[k][seen]
        for name in JET_COLLECTIONS:
            ev[name] = _jets(ev, name)
        events.append(ev)
        if progress is not None:
            progress(1)
    return _to_awkward(process, seed, events)


def concatenate(parts: Iterable[Any]) -> Any:
    """Join event arrays (e.g. several processes) into one."""
    import awkward as ak

    return ak.concatenate(list(parts))


def write_events(events: Any, path: Path) -> Path:
    """Write events to parquet (zstd); returns the path."""
    import awkward as ak

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ak.to_parquet(events, path, compression="zstd", compression_level=19)
    return path


def read_events(path: Path) -> Any:
    """Read an events file written by :func:`write_events`."""
    import awkward as ak

    path = Path(path)
    if not path.exists():
        msg = f"no events file at {path} (make one with: pysonic events generate)"
        raise FileNotFoundError(msg)
    return ak.from_parquet(path)


def file_checksum(path: Path) -> str:
    """SHA-256 of a file's bytes (the shipped sample records its own)."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()
