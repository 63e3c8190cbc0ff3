"""Pythia8 event generation (``pythia8mc``): pp at 13.6 TeV, hadronization on, seeded.

Processes (boosted, so AK8 jets contain the decays):

* ``ttbar``: gg/qqbar -> t tbar, W -> quarks only, pTHat > 400 GeV;
* ``qcd``: HardQCD:all, pTHat > 400 GeV;
* ``wjets``: W + parton, W -> quarks only, pTHat > 400 GeV.

MPI is off by default to keep generation fast on a laptop-class CPU (the jets' substructure comes
from the shower and hadronization; pile-up-like soft activity is not what the taggers learn here).
Each event becomes plain numpy arrays of its visible final-state particles plus the truth partons
used for jet labels and the generator-level missing transverse momentum (the neutrinos' vector
sum, ``gen_met``); the Python loop over Pythia's particles is the extraction, everything after
it is vectorized.

Example::

    for event in generate("ttbar", n=10, seed=1):
        event["px"].shape
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator

import numpy as np

__all__ = ["PROCESSES", "generate"]

_COMMON = [
    "Beams:eCM = 13600.",
    "Next:numberCount = 0",
    "Next:numberShowEvent = 0",
    "Next:numberShowInfo = 0",
    "Next:numberShowProcess = 0",
    "Init:showProcesses = off",
    "Init:showChangedSettings = off",
    "Init:showChangedParticleData = off",
    "Print:quiet = on",
    "PartonLevel:MPI = off",
    # like CMS's generator settings: only particles with c*tau < 10 mm decay (K0S, Lambda, ...
    # reach the detector), so displaced vertices are the B/D-hadron-like ones a tracker sees
    "ParticleDecays:limitTau0 = on",
    "ParticleDecays:tau0Max = 10.",
    "Random:setSeed = on",
]
_HADRONIC_W = ["24:onMode = off", "24:onIfAny = 1 2 3 4 5"]
PROCESSES: dict[str, list[str]] = {
    "ttbar": [
        "Top:gg2ttbar = on",
        "Top:qqbar2ttbar = on",
        "PhaseSpace:pTHatMin = 400.",
        *_HADRONIC_W,
    ],
    "qcd": ["HardQCD:all = on", "PhaseSpace:pTHatMin = 400."],
    "wjets": [
        "WeakBosonAndParton:qqbar2Wg = on",
        "WeakBosonAndParton:qg2Wq = on",
        "PhaseSpace:pTHatMin = 400.",
        *_HADRONIC_W,
    ],
}
_NEUTRINOS = (12, 14, 16)


@contextlib.contextmanager
def _quiet_stdout() -> Iterator[None]:
    """Pythia prints banners from C++ straight to fd 1: silence it while it initialises."""
    sys.stdout.flush()
    saved = os.dup(1)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1)
        yield
    finally:
        os.dup2(saved, 1)
        os.close(devnull)
        os.close(saved)


def _truth(event: object) -> dict[str, np.ndarray]:
    """Hadronic tops and Ws (with their quark daughters) and the outgoing hard partons."""
    decays = []  # (kind 0=top 1=W, [(eta, phi) of decay quarks], eta, phi)
    partons = []
    size = event.size()  # type: ignore[attr-defined]
    for i in range(size):
        p = event[i]  # type: ignore[index]
        aid = p.idAbs()
        if aid in (6, 24) and p.iBotCopyId() == i:
            quarks = []
            stack = list(p.daughterList())
            while stack:
                j = stack.pop()
                d = event[j]  # type: ignore[index]
                if d.idAbs() == 24:
                    stack += list(event[d.iBotCopyId()].daughterList())  # type: ignore[index]
                elif 1 <= d.idAbs() <= 5:
                    quarks.append((d.eta(), d.phi()))
            if (aid == 6 and len(quarks) == 3) or (aid == 24 and len(quarks) == 2):
                decays.append((0 if aid == 6 else 1, p.eta(), p.phi(), quarks))
        if abs(p.status()) == 23 and (p.idAbs() <= 5 or p.idAbs() == 21):
            partons.append((p.idAbs(), p.pT(), p.eta(), p.phi()))
    return {"decays": decays, "partons": partons}  # type: ignore[dict-item]


def generate(process: str, n: int, seed: int) -> Iterator[dict[str, object]]:
    """Yield ``n`` events: visible final-state particle arrays + truth for labels."""
    import pythia8mc

    if process not in PROCESSES:
        msg = f"unknown process '{process}' (known: {', '.join(PROCESSES)})"
        raise ValueError(msg)
    with _quiet_stdout():
        pythia = pythia8mc.Pythia("", False)
        for line in [*_COMMON, f"Random:seed = {seed}", *PROCESSES[process]]:
            pythia.readString(line)
        if not pythia.init():
            msg = f"Pythia failed to initialise process '{process}'"
            raise RuntimeError(msg)
    made = 0
    while made < n:
        if not pythia.next():
            continue
        ev = pythia.event
        rows = []
        nu_px = nu_py = 0.0
        for i in range(ev.size()):
            p = ev[i]
            if not p.isFinal():
                continue
            if p.idAbs() in _NEUTRINOS:
                nu_px += p.px()
                nu_py += p.py()
            else:
                rows.append(
                    (
                        p.px(),
                        p.py(),
                        p.pz(),
                        p.e(),
                        p.id(),
                        p.charge(),
                        p.xProd(),
                        p.yProd(),
                        p.zProd(),
                    )
                )
        arr = np.asarray(rows, dtype=np.float64).reshape(-1, 9)
        yield {
            "px": arr[:, 0],
            "py": arr[:, 1],
            "pz": arr[:, 2],
            "e": arr[:, 3],
            "pid": arr[:, 4].astype(np.int64),
            "charge": arr[:, 5],
            "vx": arr[:, 6],
            "vy": arr[:, 7],
            "vz": arr[:, 8],
            "gen_met": (nu_px, nu_py),
            **_truth(ev),
        }
        made += 1
