"""The miniAOD-like workflow: build it from a :class:`WorkflowConfig`, run it, write its outputs.

Path (a DAG by products; independent steps of one event run concurrently)::

    select particles -> cluster AK8 -> AK8 features -> ParticleNet AK8 -> top selection
                                                    -> ParT AK8
                     -> cluster AK4 -> AK4 features -> ParticleNet AK4
                     -> DeepMET inputs -> DeepMET

Outputs per event (parquet via awkward): AK8 and AK4 jets (pT, eta, truth label, tagger scores),
MET from DeepMET, the generator MET, the top-candidate flag. The ROC AUC of ParticleNet's
top-vs-QCD discriminant on the AK8 jets is computed from them.

Example::

    result = run_workflow(WorkflowConfig(events=200).with_mode("sonic-async"))
    result.report.events_per_s, result.auc
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pysonic.models.specs import MODELS
from pysonic.workflow._config import InferenceConfig, WorkflowConfig
from pysonic.workflow._event import Event, Module
from pysonic.workflow._framework import Process
from pysonic.workflow._inference import DirectInference, InferenceBackend, SonicInference
from pysonic.workflow._modules import (
    ClusterJets,
    DeepMETInputs,
    JetFeatures,
    JetTagger,
    MetRegressor,
    SelectParticles,
    TopSelection,
)
from pysonic.workflow._timing import TimingReport

__all__ = [
    "ML_MODULES",
    "WorkflowResult",
    "build_modules",
    "load_payloads",
    "run_workflow",
    "write_outputs",
]

ML_MODULES = ("particlenet_ak8", "particlenet_ak4", "part_ak8", "deepmet")


def load_payloads(
    source: str = "sample", limit: int = 0, *, spread: bool = False
) -> list[dict[str, Any]]:
    """Events as plain numpy payloads (particles, the file's labelled jets, generator MET).

    ``limit`` keeps the first events, or with ``spread`` events evenly spaced over the file
    (the shipped sample is ordered by process, so a spread subset has every process).
    """
    import awkward as ak

    from pysonic.events import read_events, sample_path

    events = read_events(sample_path() if source == "sample" else Path(source))
    if limit and limit < len(events):
        rows = np.linspace(0, len(events) - 1, limit).astype(np.int64) if spread else slice(limit)
        events = events[rows]
    parts = events["particles"]
    off = np.concatenate([[0], np.cumsum(ak.to_numpy(ak.num(parts)))])
    flat = {k: ak.to_numpy(ak.flatten(parts[k])) for k in parts.fields}
    jets = {}
    for c in ("ak4", "ak8"):
        j = events[c]
        joff = np.concatenate([[0], np.cumsum(ak.to_numpy(ak.num(j)))])
        cols = {k: ak.to_numpy(ak.flatten(j[k])) for k in ("pt", "eta", "phi", "label")}
        jets[c] = (joff, cols)
    process = np.asarray(ak.to_list(events["process"]), dtype=str)
    met = np.stack([ak.to_numpy(events["gen_met_px"]), ak.to_numpy(events["gen_met_py"])], 1)
    payloads = []
    for i in range(len(events)):
        payload = {
            "process": str(process[i]),
            "gen_met": met[i],
            "particles": {k: v[off[i] : off[i + 1]] for k, v in flat.items()},
        }
        for c, (joff, cols) in jets.items():
            payload[c] = {k: v[joff[i] : joff[i + 1]] for k, v in cols.items()}
        payloads.append(payload)
    return payloads


@dataclass
class WorkflowResult:
    """What a run gives: timing, per-event outputs, the tagger's AUC, where outputs went."""

    config: WorkflowConfig
    report: TimingReport
    outputs: list[dict[str, Any]]
    output_path: Path | None
    auc: float | None
    modes: dict[str, str] = field(default_factory=dict)

    @property
    def inference_share(self) -> float:
        return self.report.inference_share(ML_MODULES)


def _backend(cfg: InferenceConfig, server_url: str | None) -> InferenceBackend:
    if cfg.mode == "direct":
        return DirectInference(
            cfg.model_repository / cfg.model, intra_op_threads=cfg.intra_op_threads
        )
    from pysonic.client import GrpcTransport, SiteConfig, SonicClient, SonicConfig, connect

    sonic = SonicConfig(cfg.model, timeout=cfg.timeout, allowed_tries=2)
    if cfg.site is not None:
        return SonicInference(connect(sonic, SiteConfig.from_file(cfg.site)), cfg.mode)
    url = server_url if cfg.server == "local" else cfg.server
    if url is None:
        msg = "a local server was asked for but none is running"
        raise RuntimeError(msg)
    return SonicInference(SonicClient(sonic, GrpcTransport(url)), cfg.mode)


def build_modules(backends: dict[str, InferenceBackend], models: dict[str, str]) -> list[Module]:
    """The miniAOD-like path; ``backends`` and ``models`` are keyed by :data:`ML_MODULES`."""

    def tagger(name: str, jets: str) -> JetTagger:
        return JetTagger(name, backends[name], MODELS[models[name]], jets=jets)

    return [
        SelectParticles(),
        ClusterJets("ak8"),
        ClusterJets("ak4"),
        JetFeatures("ak8"),
        JetFeatures("ak4"),
        DeepMETInputs(),
        tagger("particlenet_ak8", "ak8"),
        tagger("particlenet_ak4", "ak4"),
        tagger("part_ak8", "ak8"),
        MetRegressor("deepmet", backends["deepmet"], MODELS[models["deepmet"]]),
        TopSelection("particlenet_ak8"),
    ]


@contextlib.contextmanager
def _local_server(config: WorkflowConfig) -> Iterator[str | None]:
    """A ``pysonic serve`` process for the modules with ``server = "local"`` (if any)."""
    wanted = [
        c
        for c in config.modules.values()
        if c.mode != "direct" and c.server == "local" and c.site is None
    ]
    if not wanted:
        yield None
        return
    from pysonic.server import ServerProcess

    models = sorted({c.model for c in wanted})
    with ServerProcess(wanted[0].model_repository, models=models) as server:
        yield server.grpc_url


def _event_output(event: Event) -> dict[str, Any]:
    ak8, ak4 = event.get("ak8"), event.get("ak4")
    return {
        "event": event.id,
        "process": event.payload["process"],
        "ak8_pt": np.array([j["pt"] for j in ak8], np.float32),
        "ak8_eta": np.array([j["eta"] for j in ak8], np.float32),
        "ak8_label": np.array([j["label"] for j in ak8], np.int8),
        "ak8_particlenet": event.get("particlenet_ak8"),
        "ak8_part": event.get("part_ak8"),
        "ak4_pt": np.array([j["pt"] for j in ak4], np.float32),
        "ak4_label": np.array([j["label"] for j in ak4], np.int8),
        "ak4_particlenet": event.get("particlenet_ak4"),
        "met": np.asarray(event.get("deepmet"), np.float32),
        "gen_met": np.asarray(event.payload["gen_met"], np.float32),
        "top_candidate": event.get("top_candidate"),
    }


def _auc(outputs: list[dict[str, Any]]) -> float | None:
    from pysonic.models.evaluate import top_vs_qcd

    probs = np.concatenate([o["ak8_particlenet"] for o in outputs]) if outputs else np.zeros((0, 5))
    labels = np.concatenate([o["ak8_label"] for o in outputs]) if outputs else np.zeros(0)
    process = (
        np.concatenate([[o["process"]] * len(o["ak8_label"]) for o in outputs])
        if outputs
        else np.zeros(0, str)
    )
    try:
        return top_vs_qcd(probs, labels, process)
    except ValueError:  # no top or no QCD jets in these events
        return None


def write_outputs(outputs: list[dict[str, Any]], path: Path) -> Path:
    """Per-event outputs as awkward records in parquet (jagged per-jet fields)."""
    import awkward as ak

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ak.to_parquet(
        ak.Array(
            [
                {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in o.items()}
                for o in outputs
            ]
        ),
        path,
    )
    return path


def run_workflow(
    config: WorkflowConfig,
    *,
    payloads: list[dict[str, Any]] | None = None,
    server_url: str | None = None,
    progress: Callable[[int], None] | None = None,
) -> WorkflowResult:
    """Run the workflow; ``server_url`` stands in for ``server = "local"`` when given;
    ``progress(events_done)`` is called after each event."""
    payloads = load_payloads(config.input, config.events) if payloads is None else payloads
    with contextlib.ExitStack() as stack:
        if server_url is None:
            server_url = stack.enter_context(_local_server(config))
        backends: dict[str, InferenceBackend] = {}
        for name, cfg in config.modules.items():
            backends[name] = _backend(cfg, server_url)
            stack.callback(backends[name].close)
        models = {n: c.model for n, c in config.modules.items()}
        outputs: dict[int, dict[str, Any]] = {}
        modules = build_modules(backends, models)
        process = Process(modules, streams=config.streams, threads=config.threads)

        def done(ev: Event) -> None:
            outputs[ev.id] = _event_output(ev)
            if progress is not None:
                progress(len(outputs))

        report = process.run(payloads, on_event_done=done)
    ordered = [outputs[i] for i in sorted(outputs)]
    path = write_outputs(ordered, config.output) if config.output else None
    modes = {n: c.mode for n, c in config.modules.items()}
    return WorkflowResult(config, report, ordered, path, _auc(ordered), modes)
