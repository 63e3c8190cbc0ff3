"""Jet tagging on awkward arrays: jagged jets in, the same jets with scores attached out.

A :class:`JetTagger` is only its configuration (a frozen dataclass: picklable, hashable), so it
can be put in a coffea processor or a dask graph as it is; the connection is made in each process
on first use (:func:`pysonic.analysis._engine.engine`). Calling it

1. checks the jets and their constituents line up and flattens the columns it needs,
2. builds the model's padded, masked inputs for all jets at once
   (:func:`pysonic.events.vectorized.jet_features_flat`, identical to the per-jet builder),
3. sends them in requests of ``batch_size`` jets, ``max_in_flight`` at a time, and
4. attaches each class score as a new jet field (``score_top``, ``score_W``, ...), in jet order.

dask-awkward arrays are tagged lazily, one partition per task (:mod:`._dask`).

Example::

    tagger = JetTagger("particlenet_lite", backend="local")      # or "direct", or "site"
    jets = tagger(events.ak8, jet_constituents(events, "ak8"))
    jets.score_top                                               # var * float32
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pysonic.analysis._columns import attach_outputs, flatten_jets
from pysonic.analysis._engine import Backend, EngineSpec, close_engine, engine
from pysonic.errors import InvalidArgumentError
from pysonic.events.vectorized import jet_features_flat
from pysonic.models.specs import JET_CLASSES, MODELS

__all__ = ["JET_INPUTS", "JetTagger"]

#: every input the jet builder makes
JET_INPUTS = (
    "pf_points",
    "pf_features",
    "pf_mask",
    "pf_vectors",
    "sv_points",
    "sv_features",
    "sv_mask",
    "sv_vectors",
)


def _is_dask(array: Any) -> bool:
    return type(array).__module__.startswith("dask_awkward")


@dataclass(frozen=True)
class JetTagger:
    """Tag jets with a pysonic jet model (ParticleNet, ParticleNet-Lite, ParT, or your own).

    ``backend``: ``"direct"`` (in-process onnxruntime), ``"local"`` (an embedded pysonic server
    in this process) or ``"site"`` (``servers`` such as ``("gpu-1:8001",)``, else the TOML
    ``site_config``, else the environment). ``batch_size`` jets per request, ``max_in_flight``
    requests at once. A model that is not one of pysonic's needs ``input_names`` (which of
    :data:`JET_INPUTS` it takes). Output fields are ``prefix + class`` when an output has one
    column per class, else ``prefix + output name``.
    """

    model: str = "particlenet_lite"
    backend: Backend = "local"
    servers: tuple[str, ...] = ()
    site_config: str | None = None
    model_repository: str = "model_repository"
    batch_size: int = 64
    max_in_flight: int = 8
    timeout: float | None = 120.0
    allowed_tries: int = 3
    prefix: str = "score_"
    classes: tuple[str, ...] = JET_CLASSES
    input_names: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        servers = self.servers
        if isinstance(servers, str):
            servers = tuple(s.strip() for s in servers.split(",") if s.strip())
        object.__setattr__(self, "servers", tuple(servers))
        object.__setattr__(self, "model_repository", str(Path(self.model_repository)))
        if self.site_config is not None:
            object.__setattr__(self, "site_config", str(self.site_config))
        object.__setattr__(self, "input_names", tuple(self.input_names))
        object.__setattr__(self, "classes", tuple(self.classes))
        if self.batch_size < 1:
            msg = f"batch_size must be at least 1, got {self.batch_size}"
            raise InvalidArgumentError(msg)
        unknown = [n for n in self.input_names if n not in JET_INPUTS]
        if unknown:
            msg = f"unknown jet inputs {unknown} (the builder makes: {', '.join(JET_INPUTS)})"
            raise InvalidArgumentError(msg)
        self.spec()  # validates backend and max_in_flight now, not on a worker later

    def spec(self) -> EngineSpec:
        """Where inference runs (what each process builds its engine from)."""
        return EngineSpec(
            model=self.model,
            backend=self.backend,
            servers=self.servers,
            site_config=self.site_config,
            model_repository=self.model_repository,
            timeout=self.timeout,
            allowed_tries=self.allowed_tries,
            max_in_flight=self.max_in_flight,
        )

    def model_inputs(self) -> tuple[str, ...]:
        """The inputs sent to the model, in its order."""
        if self.input_names:
            return self.input_names
        if self.model in MODELS and self.model != "deepmet":
            return tuple(t.name for t in MODELS[self.model].inputs)
        msg = (
            f"model '{self.model}' is not one of pysonic's jet models "
            f"({', '.join(m for m in MODELS if m != 'deepmet')}); pass input_names= naming "
            f"which of {', '.join(JET_INPUTS)} it takes"
        )
        raise InvalidArgumentError(msg)

    def inputs(self, jets: Any, constituents: Any) -> dict[str, np.ndarray]:
        """The model's padded, masked inputs for every jet (flat, jet order)."""
        return self._inputs(jets, constituents)[0]

    def _inputs(self, jets: Any, constituents: Any) -> tuple[dict[str, np.ndarray], Any]:
        names = self.model_inputs()
        flat = flatten_jets(jets, constituents)
        built = jet_features_flat(flat.jets, flat.counts, flat.constituents)
        return {n: built[n] for n in names}, flat.per_event

    def scores(self, jets: Any, constituents: Any) -> dict[str, np.ndarray]:
        """The model's outputs for every jet, flat and in jet order (numpy)."""
        return self.infer(self.inputs(jets, constituents))

    def infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the model on ready inputs (batched, in flight, in order)."""
        return engine(self.spec()).run(inputs, self.batch_size)

    def output_fields(self, outputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Model outputs -> one flat column per jet field: ``prefix + class`` for an output
        with one column per class, ``prefix + name`` for one value, ``prefix + name_i`` else."""
        fields: dict[str, np.ndarray] = {}
        for name, values in outputs.items():
            flat = values.reshape(len(values), int(np.prod(values.shape[1:])))
            if flat.shape[1] == 1:
                fields[f"{self.prefix}{name}"] = flat[:, 0].copy()
                continue
            labels = self.classes if flat.shape[1] == len(self.classes) else range(flat.shape[1])
            for i, label in enumerate(labels):
                key = (
                    f"{self.prefix}{label}"
                    if labels is self.classes
                    else f"{self.prefix}{name}_{i}"
                )
                fields[key] = np.ascontiguousarray(flat[:, i])
        return fields

    def __call__(self, jets: Any, constituents: Any) -> Any:
        """``jets`` with the scores attached as new fields (awkward, or dask-awkward: lazy)."""
        if _is_dask(jets) or _is_dask(constituents):
            from pysonic.analysis._dask import tag_dask

            return tag_dask(self, jets, constituents)
        return self.tag(jets, constituents)

    def tag(self, jets: Any, constituents: Any) -> Any:
        """Eager tagging of awkward arrays (what ``__call__`` does for each partition)."""
        inputs, per_event = self._inputs(jets, constituents)
        n_jets = len(next(iter(inputs.values())))
        outputs = self.infer(inputs) if n_jets else self._empty_outputs()
        return attach_outputs(jets, self.output_fields(outputs), per_event)

    def _empty_outputs(self) -> dict[str, np.ndarray]:
        """Zero-jet outputs with the model's output shapes; no request is sent."""
        from tritonclient.grpc import model_config_pb2

        from pysonic.protocol.datatypes import config_to_wire, to_numpy_dtype

        if self.model in MODELS:
            outs = [(t.name, t.shape, np.float32) for t in MODELS[self.model].outputs]
        else:  # a model of the user's: its config says (asked once per process)
            config = engine(self.spec()).model_config()
            name_of = model_config_pb2.DataType.Name
            outs = [
                (o.name, tuple(o.dims), to_numpy_dtype(config_to_wire(name_of(o.data_type))))
                for o in config.output
            ]
        return {name: np.zeros((0, *shape), dtype) for name, shape, dtype in outs}

    def close(self) -> None:
        """Close this process's engine for this tagger (a later call opens a new one)."""
        close_engine(self.spec())
