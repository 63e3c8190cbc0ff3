"""Analysis-facility throughput: jets/s tagging the shipped sample's AK8 jets (ParticleNet-Lite).

Side by side in one run, every path from jagged awkward jets to scores:

* ``direct``: ``JetTagger(backend="direct")``, in-process onnxruntime, batches of 64;
* ``pysonic async``: ``JetTagger(backend="site")`` to a local ``pysonic serve`` process,
  batches of 64, 8 in flight (and ``local``: the embedded in-process server);
* ``coffea triton_wrapper``: coffea's own wrapper against the same server, with its batch size
  rule (the model's first preferred size, 8) and at 64; one blocking request at a time, the
  last one padded with ``np.resize``;
* ``pysonic triton_wrapper``: pysonic's drop-in adapter, same subclass, same batch sizes.

All paths build the inputs with the same vectorized builder (timed separately, with the per-jet
loop it replaces for comparison), so the differences are the inference paths. The server is a
real subprocess on the same cores (as on a facility node with a local server). Paths alternate
within each round; each figure is the median of the rounds.

    python benchmarks/analysis.py --quick --json out/analysis.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import awkward as ak
import numpy as np
from rich.console import Console
from rich.table import Table

from pysonic.analysis import JetTagger, close_engines, jet_constituents
from pysonic.events import read_events, sample_path
from pysonic.events.features import jet_features
from pysonic.server import ServerProcess

ROOT = Path(__file__).resolve().parent.parent
MODEL = "particlenet_lite"
console = Console()


def _wrapper(base: type) -> type:
    """A user's analysis class: prepare_awkward builds the inputs, the base class infers."""

    def prepare_awkward(self: object, jets: ak.Array, consts: ak.Array) -> tuple:
        inputs = JetTagger().inputs(jets, consts)
        return [], {
            "output_list": ["softmax"],
            "input_dict": {k: ak.from_numpy(v) for k, v in inputs.items()},
        }

    return type("Tagger", (base,), {"prepare_awkward": prepare_awkward})


def _per_jet_inputs(jets: ak.Array, consts: ak.Array) -> None:
    """The per-jet loop the vectorized builder replaces (for the input-building figure)."""
    flat_jets, per_jet = ak.flatten(jets), ak.flatten(consts, axis=1)
    cols = {k: ak.to_numpy(ak.flatten(per_jet[k])) for k in per_jet.fields}
    cols = {k: v.astype(np.float64 if v.dtype.kind == "f" else np.int64) for k, v in cols.items()}
    offsets = np.concatenate([[0], np.cumsum(ak.to_numpy(ak.num(per_jet, axis=1)))])
    p4 = np.stack([ak.to_numpy(flat_jets[k]) for k in ("px", "py", "pz", "e")], 1)
    for j in range(len(p4)):
        jet_features(cols, p4[j].astype(np.float64), np.arange(offsets[j], offsets[j + 1]))


def _time(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a run of about a minute")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--events", type=int, help="events of the sample (default: all 2,000)")
    parser.add_argument("--rounds", type=int, help="alternating rounds")
    parser.add_argument("--repository", type=Path, default=ROOT / "model_repository")
    args = parser.parse_args()
    events = read_events(sample_path())
    n_events = args.events or (600 if args.quick else len(events))
    rounds = args.rounds or (1 if args.quick else 3)
    events = events[:n_events]
    jets, consts = events.ak8, jet_constituents(events, "ak8")
    flat_jets, flat_consts = ak.flatten(jets), ak.flatten(consts, axis=1)
    n_jets = len(flat_jets)
    console.print(f"{n_events} events, {n_jets} AK8 jets, {rounds} round(s)")

    from coffea.ml_tools.triton_wrapper import triton_wrapper as coffea_wrapper

    from pysonic.analysis.coffea import triton_wrapper as pysonic_wrapper

    paths: dict[str, Callable[[], object]] = {}
    coffea_clients: list[object] = []
    repo = str(args.repository)
    with ServerProcess(args.repository, models=[MODEL]) as server:
        url = f"triton+grpc://{server.grpc_url}/{MODEL}/1"
        direct = JetTagger(backend="direct", model_repository=repo)
        site = JetTagger(backend="site", servers=server.grpc_url, batch_size=64, max_in_flight=8)
        local = JetTagger(backend="local", model_repository=repo, batch_size=64)
        paths["direct (in-process, batch 64)"] = lambda: direct(jets, consts)
        paths["pysonic async, local server (batch 64, 8 in flight)"] = lambda: site(jets, consts)
        paths["pysonic async, embedded server (batch 64)"] = lambda: local(jets, consts)
        for label, base, args_ in (
            ("coffea triton_wrapper", coffea_wrapper, {"ssl": False}),
            ("pysonic triton_wrapper", pysonic_wrapper, {"ssl": False}),
        ):
            for batch in (-1, 64):
                wrapper = _wrapper(base)(url, args_, batch_size=batch)
                name = f"{label} (batch {wrapper.batch_size})"
                paths[name] = lambda w=wrapper: w(flat_jets, flat_consts)
                if base is coffea_wrapper:
                    coffea_clients.append(wrapper)
        times: dict[str, list[float]] = {name: [] for name in paths}
        times["inputs: vectorized builder"] = []
        times["inputs: per-jet loop"] = []
        for fn in paths.values():  # warm-up: sessions, connections, server instances
            fn()
        for _ in range(rounds):
            for name, fn in paths.items():
                times[name].append(_time(fn))
            times["inputs: vectorized builder"].append(_time(lambda: direct.inputs(jets, consts)))
            times["inputs: per-jet loop"].append(_time(lambda: _per_jet_inputs(jets, consts)))
        close_engines()
        for wrapper in coffea_clients:  # tritonclient's channels, before the interpreter exits
            wrapper.client.close()  # type: ignore[attr-defined]
            wrapper._client = None  # type: ignore[attr-defined]
        coffea_clients.clear()
        paths.clear()

    rates = {name: n_jets / statistics.median(t) for name, t in times.items()}
    table = Table(title=f"ParticleNet-Lite on the shipped sample: {n_jets} AK8 jets")
    table.add_column("path")
    table.add_column("jets/s", justify="right")
    table.add_column("vs direct", justify="right")
    base_rate = rates["direct (in-process, batch 64)"]
    for name, rate in rates.items():
        table.add_row(name, f"{rate:,.0f}", f"{rate / base_rate:.2f}x")
    console.print(table)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(
            json.dumps(
                {
                    "events": n_events,
                    "jets": n_jets,
                    "rounds": rounds,
                    "jets_per_s": rates,
                    "seconds": times,
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
