"""Jets (FastJet anti-kt), truth labels and per-jet ParticleNet / ParT inputs.

Particles enter clustering within a tracker-like acceptance (charged |eta| < 2.5, neutral
|eta| < 4.7). Jets get truth labels (index into :data:`pysonic.models.JET_CLASSES`), with the
jet radius R as the matching cone:

* **top** (0): a hadronic top whose three decay quarks are all within R of the jet;
* **W** (1): otherwise a hadronic W with both quarks within R;
* otherwise the flavour of the hardest outgoing hard-process parton within R:
  **b** (2), **light** quark (3), **gluon** (4); light if none matches.

Per jet, up to 100 constituents sorted by pT, zero-padded, with :data:`PF_FEATURES` (20), points
(deta, dphi), four-vectors (px, py, pz, E) and a mask; impact parameters are clipped to
+-100 mm. Secondary vertices: charged constituents grouped by a displaced (> 10 um) truth
production vertex (at least two tracks, as a vertex fit needs), up to 10 sorted by pT, with
:data:`SV_FEATURES` (11; flight distances as log(1 + x)), points and summed four-vectors.
Every feature stays O(10), so float32 inference agrees across runtimes.

Example::

    out = jet_features(particles, jet_p4, constituent_indices)
    out["pf_features"].shape         # (20, 100)
"""

from __future__ import annotations

import numpy as np

__all__ = ["N_PF", "N_SV", "PF_FEATURES", "SV_FEATURES", "cluster", "jet_features", "label"]

PF_FEATURES = (
    "log_pt",
    "log_e",
    "log_pt_rel",
    "log_e_rel",
    "deta",
    "dphi",
    "dr",
    "abs_eta",
    "charge",
    "is_electron",
    "is_muon",
    "is_photon",
    "is_charged_hadron",
    "is_neutral_hadron",
    "d0",
    "dz",
    "tanh_d0",
    "tanh_dz",
    "log_d3d",
    "drapidity",
)
SV_FEATURES = (
    "deta",
    "dphi",
    "log_pt",
    "log_e",
    "mass",
    "ntracks",
    "log_lxy",
    "log_l3d",
    "log_lxy_sig",
    "cos_pointing",
    "log_pt_rel",
)
N_PF, N_SV = 100, 10
D_MAX_MM = 100.0
_BANNER_SHOWN = False


def _kinematics(px: np.ndarray, py: np.ndarray, pz: np.ndarray, e: np.ndarray) -> tuple:
    pt = np.hypot(px, py)
    eta = np.arcsinh(np.divide(pz, pt, out=np.zeros_like(pz), where=pt > 0))
    phi = np.arctan2(py, px)
    rap = 0.5 * np.log(np.maximum(e + pz, 1e-9) / np.maximum(e - pz, 1e-9))
    return pt, eta, phi, rap


def _dphi(a: np.ndarray | float, b: np.ndarray | float) -> np.ndarray:
    return (np.asarray(a) - b + np.pi) % (2 * np.pi) - np.pi


def cluster(ev: dict, radius: float, pt_min: float) -> list[tuple[np.ndarray, np.ndarray]]:
    """Anti-kt jets: list of (jet four-vector [px,py,pz,e], constituent indices)."""
    import fastjet

    pt, eta, _, _ = _kinematics(ev["px"], ev["py"], ev["pz"], ev["e"])
    charged = ev["charge"] != 0
    ok = np.where(charged, np.abs(eta) < 2.5, np.abs(eta) < 4.7) & (pt > 0)
    inputs = []
    for i in np.flatnonzero(ok):
        pj = fastjet.PseudoJet(
            float(ev["px"][i]), float(ev["py"][i]), float(ev["pz"][i]), float(ev["e"][i])
        )
        pj.set_user_index(int(i))
        inputs.append(pj)
    global _BANNER_SHOWN
    if not _BANNER_SHOWN:  # FastJet prints its banner from C++ on the first clustering
        from pysonic.events.generate import _quiet_stdout

        with _quiet_stdout():
            fastjet.ClusterSequence(
                [fastjet.PseudoJet(1.0, 0.0, 0.0, 1.0)],
                fastjet.JetDefinition(fastjet.antikt_algorithm, 0.4),
            )
        _BANNER_SHOWN = True
    seq = fastjet.ClusterSequence(inputs, fastjet.JetDefinition(fastjet.antikt_algorithm, radius))
    jets = []
    for j in fastjet.sorted_by_pt(seq.inclusive_jets(pt_min)):
        idx = np.array([c.user_index() for c in j.constituents()], dtype=np.int64)
        jets.append((np.array([j.px(), j.py(), j.pz(), j.e()]), idx))
    return jets


def label(ev: dict, eta: float, phi: float, radius: float = 0.8) -> int:
    """Truth label of a jet at (eta, phi): index into JET_CLASSES (see the module docstring)."""

    def close(e2: float, p2: float) -> bool:
        return float(np.hypot(eta - e2, _dphi(phi, p2))) < radius

    for kind in (0, 1):
        for k, _, _, quarks in ev["decays"]:
            if k == kind and all(close(qe, qp) for qe, qp in quarks):
                return kind
    best = None
    for pid, pt, pe, pp in ev["partons"]:
        if close(pe, pp) and (best is None or pt > best[1]):
            best = (pid, pt)
    if best is None or 1 <= best[0] <= 4:
        return 3
    return 2 if best[0] == 5 else 4


def jet_features(ev: dict, jet: np.ndarray, idx: np.ndarray) -> dict[str, np.ndarray]:
    """Padded ParticleNet / ParT inputs of one jet (four-vector ``jet``, constituents ``idx``).

    ``ev`` holds particle arrays (px, py, pz, e, pid, charge, vx, vy, vz) indexed by ``idx``.
    """
    return {**_pf(ev, jet, idx), **_sv(ev, jet, idx)}


def _pf(ev: dict, jet: np.ndarray, idx: np.ndarray) -> dict[str, np.ndarray]:
    jpt, jeta, jphi, jrap = _kinematics(*jet)
    px, py, pz, e = (ev[k][idx] for k in ("px", "py", "pz", "e"))
    pt, eta, phi, rap = _kinematics(px, py, pz, e)
    order = np.argsort(-pt, kind="stable")[:N_PF]  # ties keep input order, on any CPU
    px, py, pz, e, pt, eta, phi, rap = (a[order] for a in (px, py, pz, e, pt, eta, phi, rap))
    sel = idx[order]
    pid, q = np.abs(ev["pid"][sel]), ev["charge"][sel]
    vx, vy, vz = ev["vx"][sel], ev["vy"][sel], ev["vz"][sel]
    deta, dphi = eta - jeta, _dphi(phi, jphi)
    safe_pt = np.maximum(pt, 1e-9)
    # impact parameters in mm, bounded like a tracker's reach (keeps the inputs O(10))
    d0 = np.clip((vx * py - vy * px) / safe_pt, -D_MAX_MM, D_MAX_MM)
    dz = np.clip(vz, -D_MAX_MM, D_MAX_MM)
    feats = np.stack(
        [
            np.log(safe_pt),
            np.log(np.maximum(e, 1e-9)),
            np.log(safe_pt / jpt),
            np.log(np.maximum(e, 1e-9) / jet[3]),
            deta,
            dphi,
            np.hypot(deta, dphi),
            np.abs(eta),
            q,
            pid == 11,
            pid == 13,
            pid == 22,
            (q != 0) & (pid != 11) & (pid != 13),
            (q == 0) & (pid != 22),
            d0,
            dz,
            np.tanh(d0),
            np.tanh(dz),
            np.log1p(np.sqrt(vx**2 + vy**2 + vz**2)),
            rap - jrap,
        ]
    ).astype(np.float32)
    n = len(order)
    out = {
        "pf_features": np.zeros((len(PF_FEATURES), N_PF), np.float32),
        "pf_points": np.zeros((2, N_PF), np.float32),
        "pf_mask": np.zeros((1, N_PF), np.float32),
        "pf_vectors": np.zeros((4, N_PF), np.float32),
    }
    out["pf_features"][:, :n] = feats
    out["pf_points"][:, :n] = np.stack([deta, dphi])
    out["pf_mask"][:, :n] = 1
    out["pf_vectors"][:, :n] = np.stack([px, py, pz, e])
    return out


def _sv(ev: dict, jet: np.ndarray, idx: np.ndarray) -> dict[str, np.ndarray]:
    jpt, jeta, jphi, _ = _kinematics(*jet)
    charged = idx[ev["charge"][idx] != 0]
    r3 = np.sqrt(ev["vx"][charged] ** 2 + ev["vy"][charged] ** 2 + ev["vz"][charged] ** 2)
    disp = charged[r3 > 0.01]
    out = {
        "sv_features": np.zeros((len(SV_FEATURES), N_SV), np.float32),
        "sv_points": np.zeros((2, N_SV), np.float32),
        "sv_mask": np.zeros((1, N_SV), np.float32),
        "sv_vectors": np.zeros((4, N_SV), np.float32),
    }
    if disp.size == 0:
        return out
    keys = np.round(np.stack([ev["vx"][disp], ev["vy"][disp], ev["vz"][disp]], 1), 6)
    _, group = np.unique(keys, axis=0, return_inverse=True)
    group = group.reshape(-1)
    ngroups = int(group.max()) + 1
    sums = np.zeros((ngroups, 4))
    for k, name in enumerate(("px", "py", "pz", "e")):
        np.add.at(sums[:, k], group, ev[name][disp])
    ntrk = np.bincount(group, minlength=ngroups)
    first = np.array([disp[group == g][0] for g in range(ngroups)])
    vertex = ntrk >= 2  # like a vertex fit: one displaced track alone makes no vertex
    if not vertex.any():
        return out
    sums, ntrk, first = sums[vertex], ntrk[vertex], first[vertex]
    vx, vy, vz = ev["vx"][first], ev["vy"][first], ev["vz"][first]
    pt, eta, phi, _ = _kinematics(*sums.T)
    mass = np.sqrt(np.maximum(sums[:, 3] ** 2 - (sums[:, :3] ** 2).sum(1), 0))
    lxy, l3d = np.hypot(vx, vy), np.sqrt(vx**2 + vy**2 + vz**2)
    cos = (vx * sums[:, 0] + vy * sums[:, 1] + vz * sums[:, 2]) / np.maximum(
        l3d * np.sqrt((sums[:, :3] ** 2).sum(1)), 1e-12
    )
    feats = np.stack(
        [
            eta - jeta,
            _dphi(phi, jphi),
            np.log(np.maximum(pt, 1e-9)),
            np.log(np.maximum(sums[:, 3], 1e-9)),
            mass,
            ntrk,
            np.log1p(lxy),
            np.log1p(l3d),
            np.log1p(lxy / 0.05),
            cos,
            np.log(np.maximum(pt, 1e-9) / jpt),
        ]
    ).astype(np.float32)
    order = np.argsort(-pt, kind="stable")[:N_SV]
    n = len(order)
    out["sv_features"][:, :n] = feats[:, order]
    out["sv_points"][:, :n] = feats[:2, order]
    out["sv_mask"][:, :n] = 1
    out["sv_vectors"][:, :n] = sums[order].T
    return out
