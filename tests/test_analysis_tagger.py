"""Analysis inference against real servers: JetTagger's backends give the scores of direct
inference, in jet order; the coffea triton_wrapper adapter matches coffea's own; the coffea
example runs on the shipped sample, in one process and on a dask LocalCluster."""

from __future__ import annotations

import importlib.util
import pickle
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import awkward as ak
import numpy as np
import pytest

from pysonic.analysis import JetTagger, close_engines, jet_constituents
from pysonic.events import jet_inputs, read_events, sample_path, write_root
from pysonic.models import JET_CLASSES
from pysonic.server import EmbeddedServer, ServerOptions

ROOT = Path(__file__).resolve().parents[1]
REPO = ROOT / "model_repository"
MODEL = "particlenet_lite"


@pytest.fixture(scope="module")
def sample() -> ak.Array:
    return read_events(sample_path())


@pytest.fixture(scope="module")
def server() -> Iterator[EmbeddedServer]:
    """A real pysonic server with ParticleNet-Lite, reached over gRPC by every test (and by the
    dask workers, which are other processes)."""
    options = ServerOptions(
        model_repository=REPO,
        host="127.0.0.1",
        grpc_port=0,
        metrics_port=None,
        model_control_mode="explicit",
        load_models=[MODEL],
    )
    with EmbeddedServer(options) as srv:
        yield srv
    close_engines()


@pytest.fixture(scope="module")
def direct_scores(sample: ak.Array) -> np.ndarray:
    """Reference: DirectInference (the workflow's) on jet_inputs, one batch of 64 at a time."""
    from pysonic.workflow._inference import DirectInference

    inputs = jet_inputs(sample[:500], "ak8")
    direct = DirectInference(REPO / MODEL)
    names = ("pf_points", "pf_features", "pf_mask", "sv_points", "sv_features", "sv_mask")
    parts = [
        direct.submit({k: inputs[k][i : i + 64] for k in names}).result()["softmax"]
        for i in range(0, len(inputs["label"]), 64)
    ]
    return np.concatenate(parts)


def _executed_batches(server: EmbeddedServer) -> dict[int, int]:
    """The server's executions by batch size (Triton's ModelStatistics.batch_stats)."""
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(server.grpc_url)
    try:
        stats = client.get_inference_statistics(MODEL).model_stats
    finally:
        client.close()
    return {int(b.batch_size): int(b.compute_infer.count) for s in stats for b in s.batch_stats}


def _scores(jets: ak.Array) -> np.ndarray:
    return np.stack([ak.to_numpy(ak.flatten(jets[f"score_{c}"])) for c in JET_CLASSES], axis=1)


@pytest.mark.parametrize("backend", ["direct", "local", "site"])
def test_backends_give_direct_inference_scores(
    backend: str, sample: ak.Array, server: EmbeddedServer, direct_scores: np.ndarray
) -> None:
    events = sample[:500]
    servers = (server.grpc_url,) if backend == "site" else ()
    # uneven batches, several in flight: the answers must still land on their jets
    tagger = JetTagger(
        backend=backend, servers=servers, model_repository=REPO, batch_size=7, max_in_flight=5
    )
    before = _executed_batches(server)
    try:
        jets = tagger(events.ak8, jet_constituents(events, "ak8"))
    finally:
        tagger.close()
    np.testing.assert_array_equal(_scores(jets), direct_scores)
    if backend == "site":  # requests were in flight together: the server merged some of them
        after = _executed_batches(server)
        merged = [size for size, n in after.items() if size > 7 and n > before.get(size, 0)]
        assert merged, after
    assert ak.all(ak.num(jets.score_top) == ak.num(events.ak8))
    assert jets.fields[: len(events.ak8.fields)] == events.ak8.fields
    assert ak.all(jets.pt == events.ak8.pt)


def test_flat_jets_and_empty_inputs(sample: ak.Array, server: EmbeddedServer) -> None:
    events = sample[:60]
    consts = jet_constituents(events, "ak8")
    tagger = JetTagger(backend="site", servers=server.grpc_url, model_repository=REPO)
    per_event = tagger(events.ak8, consts)
    flat = tagger(ak.flatten(events.ak8), ak.flatten(consts, axis=1))
    np.testing.assert_array_equal(ak.to_numpy(flat.score_W), ak.flatten(per_event.score_W))
    # no jets: the fields exist, and no server is asked (this one does not exist)
    nowhere = JetTagger(backend="site", servers="127.0.0.1:1", timeout=2)
    no_jets = events[ak.num(events.ak8) == 0][:5]
    out = nowhere(no_jets.ak8, jet_constituents(no_jets, "ak8"))
    assert "score_top" in out.fields
    assert ak.sum(ak.num(out.score_top)) == 0


def test_tagger_is_configuration_only(server: EmbeddedServer, sample: ak.Array) -> None:
    events = sample[:30]
    tagger = JetTagger(backend="site", servers=server.grpc_url)
    tagger(events.ak8, jet_constituents(events, "ak8"))  # a live engine now exists here
    blob = pickle.dumps(tagger)
    assert len(blob) < 2000
    assert pickle.loads(blob) == tagger
    assert hash(pickle.loads(blob)) == hash(tagger)


def test_server_errors_reach_the_caller(server: EmbeddedServer, sample: ak.Array) -> None:
    from pysonic.errors import UnavailableError

    events = sample[:30]
    tagger = JetTagger("particlenet", backend="site", servers=server.grpc_url, allowed_tries=1)
    with pytest.raises(UnavailableError, match="no server can serve model 'particlenet'"):
        tagger(events.ak8, jet_constituents(events, "ak8"))


# --- coffea's triton_wrapper and pysonic's drop-in ------------------------------------------


def _prepare(jets: ak.Array, constituents: ak.Array) -> tuple:
    """An analysis' prepare_awkward: the jet inputs, as awkward, for coffea to convert."""
    inputs = JetTagger().inputs(jets, constituents)
    return [], {
        "output_list": ["softmax"],
        "input_dict": {k: ak.from_numpy(v) for k, v in inputs.items()},
    }


def _wrapper_class(base: type) -> type:
    return type("Tagger", (base,), {"prepare_awkward": lambda self, *args: _prepare(*args)})


def _ours() -> type:
    from pysonic.analysis.coffea import triton_wrapper

    class PysonicTagger(triton_wrapper):
        def prepare_awkward(self, jets: ak.Array, constituents: ak.Array) -> tuple:
            return _prepare(jets, constituents)

    globals()["PysonicTagger"] = PysonicTagger  # picklable by reference, like a user's class
    PysonicTagger.__qualname__ = "PysonicTagger"
    return PysonicTagger


def test_triton_wrapper_adapter_matches_coffeas(
    server: EmbeddedServer, sample: ak.Array, direct_scores: np.ndarray
) -> None:
    from coffea.ml_tools.triton_wrapper import triton_wrapper as coffea_wrapper

    from pysonic.analysis.coffea import triton_wrapper

    events = sample[:500]
    jets, consts = ak.flatten(events.ak8), ak.flatten(jet_constituents(events, "ak8"), axis=1)
    url = f"triton+grpc://{server.grpc_url}/{MODEL}/1"
    theirs = _wrapper_class(coffea_wrapper)(url, {"ssl": False})
    ours = _wrapper_class(triton_wrapper)(url, {"ssl": False})
    assert ours.batch_size == theirs.batch_size == 8  # the model's first preferred size
    assert ours.model_inputs == {
        k: {**v, "shape": tuple(v["shape"])} for k, v in theirs.model_inputs.items()
    }
    got, want = ours(jets, consts), theirs(jets, consts)
    assert set(got) == set(want) == {"softmax"}
    assert type(got["softmax"]) is type(want["softmax"])
    np.testing.assert_array_equal(ak.to_numpy(got["softmax"]), ak.to_numpy(want["softmax"]))
    np.testing.assert_array_equal(ak.to_numpy(got["softmax"]), direct_scores)
    # numpy in, numpy out (no awkward), like coffea's
    inputs = JetTagger().inputs(jets[:20], consts[:20])
    out = ours(["softmax"], inputs)
    np.testing.assert_array_equal(out["softmax"], direct_scores[:20])


def test_triton_wrapper_adapter_checks_and_pickles(server: EmbeddedServer) -> None:
    from pysonic.errors import InvalidArgumentError, UnimplementedError

    url = f"triton+grpc://{server.grpc_url}/{MODEL}/1"
    PysonicTagger = _ours()
    ours = PysonicTagger(url, {"ssl": False, "max_in_flight": 4})
    with pytest.raises(ValueError, match=r"Input \[sv_mask\] not given"):
        ours(["softmax"], {"pf_points": np.zeros((2, 2, 100), np.float32)} | {
            k: np.zeros((2, *s), np.float32)
            for k, s in (("pf_features", (20, 100)), ("pf_mask", (1, 100)),
                         ("sv_points", (2, 10)), ("sv_features", (11, 10)))
        })  # fmt: skip
    with pytest.raises(ValueError, match="Requested output"):
        ours(["probs"], {k: np.zeros((1, *v["shape"][1:]), np.float32)
                         for k, v in ours.model_inputs.items()})  # fmt: skip
    empty = ours(["softmax"], {k: np.zeros((0, *v["shape"][1:]), np.float32)
                               for k, v in ours.model_inputs.items()})  # fmt: skip
    assert empty["softmax"].shape == (0, 5)
    clone = pickle.loads(pickle.dumps(ours))
    assert clone._client is None  # nothing live travels
    with pytest.raises(UnimplementedError, match="speaks gRPC"):
        PysonicTagger(f"triton+http://{server.grpc_url}/{MODEL}/1")
    with pytest.raises(InvalidArgumentError, match="not triton"):
        PysonicTagger("grpc://nowhere")
    with pytest.raises(InvalidArgumentError, match="not supported"):
        PysonicTagger(url, {"channel_args": []})


# --- the coffea example, in one process and on dask workers ------------------------------


@pytest.fixture(scope="module")
def example() -> ModuleType:
    path = ROOT / "examples" / "coffea_tagger.py"
    spec = importlib.util.spec_from_file_location("coffea_tagger_example", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def sample_root(sample: ak.Array, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_root(sample, tmp_path_factory.mktemp("root") / "sample.root")


@pytest.fixture(scope="module")
def eager_histogram(example: ModuleType, sample_root: Path, server: EmbeddedServer) -> object:
    tagger = JetTagger(backend="site", servers=server.grpc_url)
    return example.run(sample_root, tagger)["score_by_label"]


def test_coffea_example_on_the_shipped_sample(eager_histogram: object, sample: ak.Array) -> None:
    import hist

    h = eager_histogram
    assert isinstance(h, hist.Hist)
    labels = ak.to_numpy(ak.flatten(sample.ak8.label))
    assert int(h.sum()) == len(labels) == 4032
    for i in range(len(JET_CLASSES)):
        assert int(h[{"label": i}].sum()) == int((labels == i).sum())
    # the tagger works: top jets mostly score high, light-quark jets low
    top, light = h[{"label": 0}].values(), h[{"label": 3}].values()
    assert top[10:].sum() > top[:10].sum()
    assert light[:10].sum() > 10 * light[10:].sum()


@pytest.mark.slow
def test_coffea_example_on_dask_workers_gives_the_same_histogram(
    example: ModuleType, sample_root: Path, server: EmbeddedServer, eager_histogram: object
) -> None:
    from distributed import Client, LocalCluster

    tagger = JetTagger(backend="site", servers=server.grpc_url)
    with (
        LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
        ) as cluster,
        Client(cluster) as client,
    ):
        lazy = example.run(sample_root, tagger, dask_client=client, steps=4)["score_by_label"]
        workers = client.run(lambda: __import__("os").getpid())
    assert len(set(workers.values())) == 2
    np.testing.assert_array_equal(lazy.values(), eager_histogram.values())  # type: ignore[attr-defined]
    assert lazy.axes == eager_histogram.axes  # type: ignore[attr-defined]


def test_dask_graph_reads_only_the_columns_the_builder_needs(sample_root: Path) -> None:
    import dask_awkward as dak
    from coffea.nanoevents import NanoEventsFactory

    from pysonic.analysis.coffea import PysonicNanoSchema

    files = {str(sample_root): {"object_path": "Events", "steps": [[0, 1000], [1000, 2000]]}}
    events = NanoEventsFactory.from_root(files, schemaclass=PysonicNanoSchema, mode="dask").events()
    tagged = JetTagger(backend="direct")(events.FatJet, events.FatJet.constituents.pf)
    assert isinstance(tagged, dak.Array)  # lazy: nothing computed, no engine made
    (columns,) = dak.report_necessary_columns(tagged.score_top).values()
    assert set(columns) == {
        "nFatJet", "FatJet_rawPx", "FatJet_rawPy", "FatJet_rawPz", "FatJet_rawE",
        "FatJet_nConstituents", "nFatJetPFCands", "FatJetPFCands_pFCandsIdx", "nPFCands",
        "PFCands_rawPx", "PFCands_rawPy", "PFCands_rawPz", "PFCands_rawE", "PFCands_pdgId",
        "PFCands_charge", "PFCands_vx", "PFCands_vy", "PFCands_vz",
    }  # fmt: skip
