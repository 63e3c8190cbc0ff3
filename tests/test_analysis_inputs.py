"""Analysis inputs: vectorized padding and jet inputs against slow per-row references, on random
jagged arrays (hypothesis) and on the shipped sample; ROOT files; clear input errors."""

from __future__ import annotations

from pathlib import Path

import awkward as ak
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pysonic.analysis import JetTagger, flatten_jets, jet_constituents, pad_jagged
from pysonic.errors import InvalidArgumentError
from pysonic.events import jet_inputs, read_events, read_root, sample_path, write_root
from pysonic.events.features import jet_features
from pysonic.events.vectorized import jet_features_flat

KEYS = ("pf_points", "pf_features", "pf_mask", "pf_vectors")
KEYS += ("sv_points", "sv_features", "sv_mask", "sv_vectors")


@pytest.fixture(scope="module")
def sample() -> ak.Array:
    return read_events(sample_path())


# --- padding -------------------------------------------------------------------------------


def _pad_reference(lists: list[list[float]], length: int) -> tuple[np.ndarray, np.ndarray]:
    values = np.zeros((len(lists), length))
    mask = np.zeros((len(lists), length), bool)
    for i, row in enumerate(lists):
        for j, x in enumerate(row[:length]):
            values[i, j] = x
            mask[i, j] = True
    return values, mask


def _jagged(lists: list[list[float]]) -> ak.Array:
    """Typed (float64) even when empty, as arrays read from files are."""
    flat = np.array([x for row in lists for x in row], np.float64)
    return ak.unflatten(flat, np.array([len(r) for r in lists], np.int64))


jagged = st.lists(st.lists(st.floats(-1e3, 1e3, width=32), max_size=12), max_size=20)


@given(jagged, st.integers(1, 15))
def test_pad_jagged_matches_reference(lists: list[list[float]], length: int) -> None:
    values, mask = pad_jagged(_jagged(lists), length)
    ref_values, ref_mask = _pad_reference(lists, length)
    np.testing.assert_array_equal(values, ref_values)
    np.testing.assert_array_equal(mask, ref_mask)


@given(st.lists(jagged, max_size=6), st.integers(1, 15))
def test_pad_jagged_two_levels_is_every_inner_list(events: list, length: int) -> None:
    rows = [row for ev in events for row in ev]
    array = ak.unflatten(_jagged(rows), np.array([len(ev) for ev in events], np.int64))
    values, mask = pad_jagged(array, length)
    ref_values, ref_mask = _pad_reference(rows, length)
    np.testing.assert_array_equal(values, ref_values)
    np.testing.assert_array_equal(mask, ref_mask)


# --- jet inputs on random events ----------------------------------------------------------


@st.composite
def random_jets(draw: st.DrawFn) -> tuple[dict, list[np.ndarray]]:
    """Particles with a few shared displaced vertices; jets are random sorted subsets."""
    n = draw(st.integers(1, 130))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    p = rng.normal(0, 20, (n, 3)).astype(np.float32)
    p[:, 0] += 30  # mostly forward in x, so jets have a direction
    mass = rng.choice([0.0, 0.000511, 0.1057, 0.1396], n)
    e = np.sqrt((p.astype(np.float64) ** 2).sum(1) + mass**2).astype(np.float32)
    vertices = np.round(rng.normal(0, 2, (4, 3)), 4).astype(np.float32)
    which = rng.integers(-2, 4, n)  # < 0: prompt
    v = np.where(which[:, None] >= 0, vertices[np.clip(which, 0, None)], 0).astype(np.float32)
    parts = {
        "px": p[:, 0],
        "py": p[:, 1],
        "pz": p[:, 2],
        "e": e,
        "pid": rng.choice([211, -211, 22, 130, 11, -13, 2112], n),
        "charge": rng.choice([-1, 0, 1], n),
        "vx": v[:, 0],
        "vy": v[:, 1],
        "vz": v[:, 2],
    }
    if draw(st.booleans()):  # equal pT within a jet: the stable order must hold
        parts["px"][: n // 2] = parts["px"][0]
        parts["py"][: n // 2] = parts["py"][0]
    n_jets = draw(st.integers(0, 5))
    members = [np.sort(rng.choice(n, rng.integers(1, n + 1), replace=False)) for _ in range(n_jets)]
    return {k: np.asarray(v, np.float64 if k not in ("pid", "charge") else np.int64)
            for k, v in parts.items()}, members  # fmt: skip


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(random_jets())
def test_vectorized_jet_inputs_match_per_jet_builder(case: tuple[dict, list[np.ndarray]]) -> None:
    parts, members = case
    p4s = [np.array([parts[k][m].sum() for k in ("px", "py", "pz", "e")]) for m in members]
    refs = [jet_features(parts, p4, m) for p4, m in zip(p4s, members, strict=True)]
    jets = {k: np.array([p[i] for p in p4s]) for i, k in enumerate(("px", "py", "pz", "e"))}
    idx = np.concatenate(members) if members else np.zeros(0, np.int64)
    counts = np.array([len(m) for m in members], np.int64)
    got = jet_features_flat(jets, counts, {k: v[idx] for k, v in parts.items()})
    for key in KEYS:
        want = np.stack([r[key] for r in refs]) if refs else got[key][:0]
        np.testing.assert_array_equal(got[key], want, err_msg=key)


# --- the shipped sample ------------------------------------------------------------------


def test_sample_inputs_are_the_per_jet_builders(sample: ak.Array) -> None:
    """The vectorized jet_inputs reproduce the per-jet loop bit for bit (AK8 and AK4)."""
    events = sample[::10]
    for collection in ("ak8", "ak4"):
        got = jet_inputs(events, collection)
        parts = jet_constituents(events, collection)
        jets = ak.flatten(events[collection])
        per_jet = ak.flatten(parts, axis=1)
        for j in range(0, len(jets), 7):
            cols = {k: ak.to_numpy(per_jet[j][k]).astype(np.float64) for k in ("px", "py")}
            flat = {k: ak.to_numpy(per_jet[j][k]) for k in per_jet.fields}
            flat = {k: v.astype(np.float64 if v.dtype.kind == "f" else np.int64)
                    for k, v in flat.items()}  # fmt: skip
            p4 = np.array([jets[j][k] for k in ("px", "py", "pz", "e")], np.float64)
            ref = jet_features(flat, p4, np.arange(len(cols["px"])))
            for key in KEYS:
                np.testing.assert_array_equal(got[key][j], ref[key], err_msg=f"{key} jet {j}")


def test_tagger_inputs_equal_event_inputs(sample: ak.Array) -> None:
    events = sample[:400]
    want = jet_inputs(events, "ak8")
    got = JetTagger("part").inputs(events.ak8, jet_constituents(events, "ak8"))
    assert set(got) == {"pf_features", "pf_vectors", "pf_mask", "sv_features", "sv_vectors",
                        "sv_mask"}  # fmt: skip
    for key, value in got.items():
        np.testing.assert_array_equal(value, want[key], err_msg=key)


def test_flat_jets_and_per_event_jets_agree(sample: ak.Array) -> None:
    events = sample[:100]
    consts = jet_constituents(events, "ak8")
    per_event = flatten_jets(events.ak8, consts)
    flat = flatten_jets(ak.flatten(events.ak8), ak.flatten(consts, axis=1))
    assert flat.per_event is None
    np.testing.assert_array_equal(per_event.per_event, ak.to_numpy(ak.num(events.ak8)))
    np.testing.assert_array_equal(per_event.counts, flat.counts)


# --- ROOT ---------------------------------------------------------------------------------


def test_root_roundtrip_is_exact_and_nanoaod_like(sample: ak.Array, tmp_path: Path) -> None:
    import uproot

    events = sample[:300]
    path = write_root(events, tmp_path / "events.root")
    with uproot.open(path) as f:
        keys = set(f["Events"].keys())
    assert {"nPFCands", "PFCands_pt", "PFCands_pdgId", "nFatJet", "FatJet_pt", "Jet_eta",
            "FatJet_nConstituents", "FatJetPFCands_jetIdx", "FatJetPFCands_pFCandsIdx",
            "GenMET_pt", "run", "event"} <= keys  # fmt: skip
    back = read_root(path)
    for field in events.fields:
        assert ak.array_equal(events[field], back[field], dtype_exact=True), field
    sliced = read_root(path, entry_start=10, entry_stop=20)
    assert ak.array_equal(sliced.ak8, events.ak8[10:20], dtype_exact=True)


def test_coffea_nanoevents_give_the_same_inputs(sample: ak.Array, tmp_path: Path) -> None:
    from coffea.nanoevents import NanoEventsFactory

    from pysonic.analysis.coffea import PysonicNanoSchema

    events = sample[:200]
    path = write_root(events, tmp_path / "events.root")
    nano = NanoEventsFactory.from_root(
        {str(path): "Events"}, schemaclass=PysonicNanoSchema, mode="eager"
    ).events()
    tagger = JetTagger()
    got = tagger.inputs(nano.FatJet, nano.FatJet.constituents.pf)
    want = jet_inputs(events, "ak8")
    for key, value in got.items():
        np.testing.assert_array_equal(value, want[key], err_msg=key)


def test_cli_converts_the_sample_to_root(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from pysonic.cli import app

    out = tmp_path / "sample.root"
    result = CliRunner().invoke(app, ["events", "convert", "sample", str(out)])
    assert result.exit_code == 0, result.output
    assert len(read_root(out)) == 2000


# --- errors -------------------------------------------------------------------------------


def test_missing_field_names_it_and_what_there_is(sample: ak.Array) -> None:
    events = sample[:20]
    consts = jet_constituents(events, "ak8")
    no_charge = ak.without_field(consts, "charge")
    with pytest.raises(InvalidArgumentError, match=r"no field 'charge'.*they have: px, py"):
        JetTagger().inputs(events.ak8, no_charge)
    renamed = ak.zip({("chrge" if k == "charge" else k): consts[k] for k in consts.fields})
    with pytest.raises(InvalidArgumentError, match="did you mean 'chrge'"):
        JetTagger().inputs(events.ak8, renamed)
    jets = ak.without_field(events.ak8, "px")
    jets = ak.without_field(jets, "pt")
    with pytest.raises(InvalidArgumentError, match=r"jets have no field 'px' or 'rawPx'"):
        JetTagger().inputs(jets, consts)


def test_structure_mismatches_are_explained(sample: ak.Array) -> None:
    events = sample[:20]
    consts = jet_constituents(events, "ak8")
    with pytest.raises(InvalidArgumentError, match="particles of each event instead"):
        JetTagger().inputs(events.ak8, events.particles)
    with pytest.raises(InvalidArgumentError, match=r"event \d+ has \d+ jets but \d+ constituent"):
        JetTagger().inputs(events.ak8, jet_constituents(events, "ak4"))
    with pytest.raises(InvalidArgumentError, match="20 entries of jets but 19"):
        JetTagger().inputs(events.ak8, consts[:19])
    with pytest.raises(InvalidArgumentError, match="no field 'ak15'"):
        jet_constituents(events, "ak15")


def test_configuration_errors() -> None:
    with pytest.raises(InvalidArgumentError, match="pass input_names="):
        JetTagger("my_tagger").model_inputs()
    assert JetTagger("my_tagger", input_names=("pf_points",)).model_inputs() == ("pf_points",)
    with pytest.raises(InvalidArgumentError, match="unknown jet inputs"):
        JetTagger("my_tagger", input_names=("pf_pointz",))
    with pytest.raises(InvalidArgumentError, match="unknown backend 'gpu'"):
        JetTagger(backend="gpu")  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError, match="batch_size"):
        JetTagger(batch_size=0)


# --- optional dependencies ----------------------------------------------------------------


def test_importing_pysonic_needs_no_analysis_packages() -> None:
    import subprocess
    import sys

    code = (
        "import sys, pysonic, pysonic.analysis, pysonic.events, pysonic.client\n"
        "heavy = [m for m in ('uproot', 'hist', 'coffea', 'dask', 'distributed', 'dask_awkward')"
        " if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_missing_extra_names_the_install_command(
    monkeypatch: pytest.MonkeyPatch, sample: ak.Array, tmp_path: Path
) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "uproot", None)  # as if not installed
    with pytest.raises(ModuleNotFoundError, match=r"pip install 'pysonic\[analysis\]'"):
        write_root(sample[:2], tmp_path / "x.root")
