"""ParticleNet / ParT jet inputs for many jets at once: flat numpy, no Python loop over jets.

The same arithmetic as the per-jet reference (:func:`pysonic.events.features.jet_features`),
reorganised so that every step runs on the constituents of all jets together: kinematics on the
flat constituent arrays, one stable sort by (jet, falling pT) instead of one ``argsort`` per
jet, padding by scatter (``out[jet, :, slot] = values``), secondary vertices grouped by one
``lexsort`` on (jet, vertex position). Each value is computed by the same float64 operations in
the same order as the reference, so the padded inputs are bit-identical (tests compare them on
random events and on the shipped sample). Constituents (and vertices) with equal pT keep their
input order in both: a stable sort, where numpy's default ``argsort`` (SIMD-accelerated on some
CPUs) may order ties differently from one machine to another.

Layout: ``counts[j]`` constituents of jet ``j``, the constituents of all jets concatenated in
jet order (:func:`flat_jets` builds this from the events schema).

Example::

    jets = {"px": jpx, "py": jpy, "pz": jpz, "e": je}                 # [J] each
    parts = {"px": ..., "py": ..., "pid": ..., "charge": ..., ...}    # [sum(counts)] each
    out = jet_features_flat(jets, counts, parts)
    out["pf_features"].shape                                          # (J, 20, 100)
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from pysonic.events.features import (
    D_MAX_MM,
    N_PF,
    N_SV,
    PF_FEATURES,
    SV_FEATURES,
    _dphi,
    _kinematics,
)

__all__ = ["CONSTITUENT_FIELDS", "JET_P4_FIELDS", "jet_features_flat"]

#: what the builder reads per jet and per constituent
JET_P4_FIELDS = ("px", "py", "pz", "e")
CONSTITUENT_FIELDS = ("px", "py", "pz", "e", "pid", "charge", "vx", "vy", "vz")


def _segments(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The jet of each constituent, and the first constituent of each jet."""
    jet_of = np.repeat(np.arange(len(counts)), counts)
    starts = np.zeros(len(counts), np.int64)
    np.cumsum(counts[:-1], out=starts[1:])
    return jet_of, starts


def jet_features_flat(
    jets: Mapping[str, np.ndarray], counts: np.ndarray, parts: Mapping[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """Padded inputs of every jet: ``pf_*`` [J, C, 100] and ``sv_*`` [J, C, 10], float32.

    ``jets`` holds px, py, pz, e per jet; ``parts`` the constituents' px, py, pz, e, pid,
    charge, vx, vy, vz (float64 / int64; other dtypes are converted once).
    """
    counts = np.asarray(counts, np.int64)
    jet = {k: np.asarray(jets[k], np.float64) for k in JET_P4_FIELDS}
    floats = ("px", "py", "pz", "e", "vx", "vy", "vz")
    p = {
        k: np.asarray(parts[k], np.float64 if k in floats else np.int64) for k in CONSTITUENT_FIELDS
    }
    jet_of, starts = _segments(counts)
    jkin = _kinematics(jet["px"], jet["py"], jet["pz"], jet["e"])
    return {**_pf(jet, jkin, jet_of, starts, p), **_sv(jkin, jet_of, len(counts), p)}


def _pf(
    jet: dict[str, np.ndarray],
    jkin: tuple[np.ndarray, ...],
    jet_of: np.ndarray,
    starts: np.ndarray,
    p: dict[str, np.ndarray],
) -> dict[str, np.ndarray]:
    n_jets = len(starts)
    jpt, jeta, jphi, jrap = jkin
    pt = _kinematics(p["px"], p["py"], p["pz"], p["e"])[0]
    order = np.lexsort((-pt, jet_of))  # by jet, then falling pT; stable for ties
    slot = np.arange(len(order)) - starts[jet_of]  # jet_of is already sorted by jet
    keep = slot < N_PF
    sel, j, slot = order[keep], jet_of[keep], slot[keep]
    px, py, pz, e = (p[k][sel] for k in ("px", "py", "pz", "e"))
    pt, eta, phi, rap = _kinematics(px, py, pz, e)
    pid, q = np.abs(p["pid"][sel]), p["charge"][sel]
    vx, vy, vz = p["vx"][sel], p["vy"][sel], p["vz"][sel]
    deta, dphi = eta - jeta[j], _dphi(phi, jphi[j])
    safe_pt = np.maximum(pt, 1e-9)
    d0 = np.clip((vx * py - vy * px) / safe_pt, -D_MAX_MM, D_MAX_MM)
    dz = np.clip(vz, -D_MAX_MM, D_MAX_MM)
    feats = np.stack(
        [
            np.log(safe_pt),
            np.log(np.maximum(e, 1e-9)),
            np.log(safe_pt / jpt[j]),
            np.log(np.maximum(e, 1e-9) / jet["e"][j]),
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
            rap - jrap[j],
        ],
        axis=1,
    ).astype(np.float32)
    out = {
        "pf_features": np.zeros((n_jets, len(PF_FEATURES), N_PF), np.float32),
        "pf_points": np.zeros((n_jets, 2, N_PF), np.float32),
        "pf_mask": np.zeros((n_jets, 1, N_PF), np.float32),
        "pf_vectors": np.zeros((n_jets, 4, N_PF), np.float32),
    }
    # advanced indices around a slice: the selected [M, C] block lands on [jet, :, slot]
    out["pf_features"][j, :, slot] = feats
    out["pf_points"][j, :, slot] = np.stack([deta, dphi], axis=1)
    out["pf_mask"][j, 0, slot] = 1
    out["pf_vectors"][j, :, slot] = np.stack([px, py, pz, e], axis=1)
    return out


def _sv(
    jkin: tuple[np.ndarray, ...], jet_of: np.ndarray, n_jets: int, p: dict[str, np.ndarray]
) -> dict[str, np.ndarray]:
    jpt, jeta, jphi, _ = jkin
    out = {
        "sv_features": np.zeros((n_jets, len(SV_FEATURES), N_SV), np.float32),
        "sv_points": np.zeros((n_jets, 2, N_SV), np.float32),
        "sv_mask": np.zeros((n_jets, 1, N_SV), np.float32),
        "sv_vectors": np.zeros((n_jets, 4, N_SV), np.float32),
    }
    vx, vy, vz = p["vx"], p["vy"], p["vz"]
    r3 = np.sqrt(vx**2 + vy**2 + vz**2)
    disp = np.flatnonzero((p["charge"] != 0) & (r3 > 0.01))
    if disp.size == 0:
        return out
    keys = np.round(np.stack([vx[disp], vy[disp], vz[disp]], 1), 6)
    jd = jet_of[disp]
    # groups = (jet, vertex position), in the reference's np.unique order within a jet; the
    # stable sort keeps each group's tracks in input order, which np.add.at sums in
    by = np.lexsort((keys[:, 2], keys[:, 1], keys[:, 0], jd))
    new = np.ones(len(by), bool)
    new[1:] = (jd[by][1:] != jd[by][:-1]) | (keys[by][1:] != keys[by][:-1]).any(axis=1)
    group = np.empty(len(by), np.int64)
    group[by] = np.cumsum(new) - 1
    n_groups = int(new.sum())
    sums = np.zeros((n_groups, 4))
    for k, name in enumerate(("px", "py", "pz", "e")):
        np.add.at(sums[:, k], group, p[name][disp])
    ntrk = np.bincount(group, minlength=n_groups)
    first = disp[by[new]]  # each group's first track in input order
    g_jet = jd[by[new]]
    vertex = ntrk >= 2  # like a vertex fit: one displaced track alone makes no vertex
    if not vertex.any():
        return out
    sums, ntrk, first, g_jet = sums[vertex], ntrk[vertex], first[vertex], g_jet[vertex]
    vx, vy, vz = vx[first], vy[first], vz[first]
    pt, eta, phi, _ = _kinematics(*sums.T)
    mass = np.sqrt(np.maximum(sums[:, 3] ** 2 - (sums[:, :3] ** 2).sum(1), 0))
    lxy, l3d = np.hypot(vx, vy), np.sqrt(vx**2 + vy**2 + vz**2)
    cos = (vx * sums[:, 0] + vy * sums[:, 1] + vz * sums[:, 2]) / np.maximum(
        l3d * np.sqrt((sums[:, :3] ** 2).sum(1)), 1e-12
    )
    feats = np.stack(
        [
            eta - jeta[g_jet],
            _dphi(phi, jphi[g_jet]),
            np.log(np.maximum(pt, 1e-9)),
            np.log(np.maximum(sums[:, 3], 1e-9)),
            mass,
            ntrk,
            np.log1p(lxy),
            np.log1p(l3d),
            np.log1p(lxy / 0.05),
            cos,
            np.log(np.maximum(pt, 1e-9) / jpt[g_jet]),
        ],
        axis=1,
    ).astype(np.float32)
    order = np.lexsort((-pt, g_jet))  # by jet, then falling pT
    g_sorted = g_jet[order]
    first_of_jet = np.searchsorted(g_sorted, g_sorted, side="left")
    slot = np.arange(len(order)) - first_of_jet
    keep = slot < N_SV
    order, j, slot = order[keep], g_sorted[keep], slot[keep]
    out["sv_features"][j, :, slot] = feats[order]
    out["sv_points"][j, :, slot] = feats[order, :2]
    out["sv_mask"][j, 0, slot] = 1
    out["sv_vectors"][j, :, slot] = sums[order]
    return out
