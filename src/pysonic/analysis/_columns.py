"""Jagged awkward arrays <-> the flat numpy columns the input builder and models use.

Jets come per event (``var * jet``) or already flat (``N * jet``); their constituents one level
deeper (``var * var * particle`` or ``N * var * particle``): coffea's
``events.FatJet.constituents.pf``, or :func:`jet_constituents` for pysonic's own schema. Fields
are found under the names either layout uses (``px`` or ``rawPx``, else computed from
pt/eta/phi/mass; ``pid`` or ``pdgId``); what is missing, or a structure that does not line up,
is reported by name and event before anything is sent.

Example::

    cols = flatten_jets(events.ak8, jet_constituents(events, "ak8"))
    cols.counts            # constituents per jet, in jet order
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from pysonic.errors import InvalidArgumentError
from pysonic.events.vectorized import CONSTITUENT_FIELDS, JET_P4_FIELDS

__all__ = ["FlatJets", "attach_outputs", "flatten_jets", "jet_constituents", "pad_jagged"]

#: other names a field goes by (pysonic's NanoAOD-like ROOT files; NanoAOD)
ALIASES: dict[str, tuple[str, ...]] = {
    "px": ("rawPx",),
    "py": ("rawPy",),
    "pz": ("rawPz",),
    "e": ("rawE", "energy"),
    "pid": ("pdgId",),
}
_POLAR = ("pt", "eta", "phi", "mass")


@dataclass
class FlatJets:
    """Jets and their constituents as flat columns, plus the jets-per-event structure."""

    jets: dict[str, np.ndarray]  # px, py, pz, e per jet
    counts: np.ndarray  # constituents per jet
    constituents: dict[str, np.ndarray]  # CONSTITUENT_FIELDS, all jets' constituents in order
    per_event: np.ndarray | None  # jets per event; None when the jets came flat


def _fields(array: Any) -> list[str]:
    import awkward as ak

    return list(ak.fields(array))


def _numpy(array: Any, what: str) -> np.ndarray:
    import awkward as ak

    layout = ak.to_layout(array)
    if layout.is_option:
        if ak.any(ak.is_none(array, axis=0)):
            msg = f"{what} has missing (None) entries"
            raise InvalidArgumentError(msg)
        array = ak.drop_none(array, axis=0)
    return np.asarray(ak.to_numpy(array))


def _column(records: Any, name: str, what: str) -> np.ndarray:
    """One flat field by its name or an alias; four-vector parts from pt/eta/phi/mass."""
    have = _fields(records)
    for candidate in (name, *ALIASES.get(name, ())):
        if candidate in have:
            return _numpy(records[candidate], f"{what} field '{candidate}'")
    if name in JET_P4_FIELDS and all(k in have for k in _POLAR):
        pt, eta, phi, mass = (_numpy(records[k], what).astype(np.float64) for k in _POLAR)
        px, py, pz = pt * np.cos(phi), pt * np.sin(phi), pt * np.sinh(eta)
        if name == "e":
            return np.sqrt(px**2 + py**2 + pz**2 + mass**2)
        return {"px": px, "py": py, "pz": pz}[name]
    names = " or ".join(f"'{c}'" for c in (name, *ALIASES.get(name, ())))
    hint = difflib.get_close_matches(name, have, n=1)
    extra = f"; did you mean '{hint[0]}'?" if hint else ""
    polar = " (or pt, eta, phi, mass)" if name in JET_P4_FIELDS else ""
    msg = f"{what} have no field {names}{polar}; they have: {', '.join(have) or 'none'}{extra}"
    raise InvalidArgumentError(msg)


def _check_structure(jets: Any, constituents: Any) -> None:
    import awkward as ak

    if jets.ndim not in (1, 2):
        msg = (
            f"jets must be a list of jets per event (var * jet) or flat jets (N * jet); got "
            f"{jets.ndim} list levels ({ak.type(jets)})"
        )
        raise InvalidArgumentError(msg)
    if constituents.ndim != jets.ndim + 1:
        want = "var * var * particle" if jets.ndim == 2 else "var * particle"
        msg = (
            f"constituents must hold one list of particles per jet ({want}), one level deeper "
            f"than the jets; got {constituents.ndim} list levels for {jets.ndim}-level jets "
            "(passed all particles of each event instead of each jet's?)"
        )
        raise InvalidArgumentError(msg)
    if len(jets) != len(constituents):
        msg = f"{len(jets)} entries of jets but {len(constituents)} of constituents"
        raise InvalidArgumentError(msg)
    if jets.ndim == 2:
        n_jets = ak.to_numpy(ak.num(jets, axis=1))
        n_lists = ak.to_numpy(ak.num(constituents, axis=1))
        bad = np.flatnonzero(n_jets != n_lists)
        if bad.size:
            i = int(bad[0])
            msg = (
                f"jets and constituents do not line up: event {i} has {n_jets[i]} jets but "
                f"{n_lists[i]} constituent lists ({bad.size} events differ)"
            )
            raise InvalidArgumentError(msg)


def flatten_jets(jets: Any, constituents: Any) -> FlatJets:
    """Check the structure, then take the columns the input builder reads (no Python loop)."""
    import awkward as ak

    jets, constituents = ak.Array(jets), ak.Array(constituents)
    _check_structure(jets, constituents)
    per_event = None
    if jets.ndim == 2:
        per_event = ak.to_numpy(ak.num(jets, axis=1)).astype(np.int64)
        jets = ak.flatten(jets, axis=1)
        constituents = ak.flatten(constituents, axis=1)
    counts = ak.to_numpy(ak.num(constituents, axis=1)).astype(np.int64)
    parts = ak.flatten(constituents, axis=1)
    return FlatJets(
        jets={k: _column(jets, k, "jets") for k in JET_P4_FIELDS},
        counts=counts,
        constituents={k: _column(parts, k, "constituents") for k in CONSTITUENT_FIELDS},
        per_event=per_event,
    )


def touch_columns(jets: Any, constituents: Any) -> None:
    """Mark the fields :func:`flatten_jets` reads as needed (dask-awkward column projection)."""
    import awkward as ak

    for records, names in ((jets, JET_P4_FIELDS), (constituents, CONSTITUENT_FIELDS)):
        have = _fields(records)
        for name in names:
            found = [c for c in (name, *ALIASES.get(name, ())) if c in have]
            for field in found[:1] or [k for k in _POLAR if k in have]:
                ak.typetracer.touch_data(records[field])


def jet_constituents(events: Any, collection: str = "ak8") -> Any:
    """Each jet's particles (``var * var * particle``) in pysonic's schema, where constituents
    are indices into the event's particles; vectorized (one take over all particles)."""
    import awkward as ak

    for need in (collection, "particles"):
        if need not in _fields(events):
            msg = f"events have no field '{need}' (have: {', '.join(_fields(events))})"
            raise InvalidArgumentError(msg)
    parts = events["particles"]
    offsets = np.zeros(len(events) + 1, np.int64)
    np.cumsum(ak.to_numpy(ak.num(parts, axis=1)), out=offsets[1:])
    index = events[collection]["constituents"]
    n_jets = ak.to_numpy(ak.num(index, axis=1))
    per_jet = ak.flatten(index, axis=1)
    counts = ak.to_numpy(ak.num(per_jet, axis=1))
    local = ak.to_numpy(ak.flatten(per_jet, axis=1)).astype(np.int64)
    event_of = np.repeat(np.repeat(np.arange(len(events)), n_jets), counts)
    flat = ak.flatten(parts, axis=1)[local + offsets[event_of]]
    return ak.unflatten(ak.unflatten(flat, counts), n_jets)


def pad_jagged(array: Any, length: int, fill: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Pad (or clip) the innermost lists to ``length``: values [rows, length] and a bool mask.

    ``rows`` are the lists of ``N * var * x`` (N rows) or ``E * var * var * x`` (all lists of
    all events, in order). Vectorized: one scatter of the kept values.
    """
    import awkward as ak

    array = ak.Array(array)
    if array.ndim not in (2, 3):
        msg = f"pad_jagged takes 2 or 3 list levels, got {array.ndim} ({ak.type(array)})"
        raise InvalidArgumentError(msg)
    lists = ak.flatten(array, axis=1) if array.ndim == 3 else array
    counts = ak.to_numpy(ak.num(lists, axis=1)).astype(np.int64)
    values = _numpy(ak.flatten(lists, axis=1), "values")
    starts = np.zeros(len(counts), np.int64)
    np.cumsum(counts[:-1], out=starts[1:])
    row = np.repeat(np.arange(len(counts)), counts)
    slot = np.arange(len(values)) - starts[row]
    keep = slot < length
    out = np.full((len(counts), length), fill, values.dtype)
    mask = np.zeros((len(counts), length), bool)
    out[row[keep], slot[keep]] = values[keep]
    mask[row[keep], slot[keep]] = True
    return out, mask


def attach_outputs(jets: Any, columns: Mapping[str, np.ndarray], per_event: Any) -> Any:
    """``jets`` with one new field per column (flat, jet order), aligned with the jets."""
    import awkward as ak

    for name, values in columns.items():
        field = ak.Array(values) if per_event is None else ak.unflatten(values, per_event)
        jets = ak.with_field(jets, field, name)
    return jets
