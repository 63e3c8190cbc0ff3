"""The workflow configuration: a TOML file, so switching inference needs no code change.

Every ML module takes the ``[inference]`` defaults and may override them in its own table::

    [process]
    streams = 4
    threads = 2
    events = 400                  # at most this many events from the input (0 = all)
    input = "sample"              # the shipped sample, or a path to an events parquet file

    [output]
    path = "out/workflow.parquet"

    [inference]
    mode = "sonic-async"          # direct | sonic-sync | sonic-async | sonic-pseudoasync
    server = "127.0.0.1:8001"     # or "local" (start a local pysonic serve), or a site file:
    # site = "site.toml"
    model_repository = "model_repository"   # direct mode, and the local server
    timeout = 30.0

    [modules.part_ak8]
    model = "part"
    mode = "direct"               # this one runs in-process

Example::

    config = WorkflowConfig.from_file(Path("workflow.toml"))
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from pysonic.workflow._inference import INFERENCE_MODES

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = ["DEFAULT_MODULES", "InferenceConfig", "WorkflowConfig"]

#: ML module name -> model served for it. ``particlenet_*``/``part_*`` tag jets; ``deepmet`` MET.
DEFAULT_MODULES: dict[str, str] = {
    "particlenet_ak8": "particlenet_lite",
    "particlenet_ak4": "particlenet_lite",
    "part_ak8": "part",
    "deepmet": "deepmet",
}


@dataclass(frozen=True)
class InferenceConfig:
    """Where one ML module's inference runs."""

    mode: str = "direct"
    model: str = ""
    server: str = "local"  #: HOST:PORT, or "local": a ``pysonic serve`` process started here
    site: Path | None = None
    model_repository: Path = Path("model_repository")
    timeout: float | None = 30.0
    intra_op_threads: int = 1  #: direct mode: onnxruntime threads per call

    def __post_init__(self) -> None:
        if self.mode not in INFERENCE_MODES:
            msg = f"inference mode '{self.mode}' unknown (known: {', '.join(INFERENCE_MODES)})"
            raise ValueError(msg)


@dataclass(frozen=True)
class WorkflowConfig:
    """Process settings plus one :class:`InferenceConfig` per ML module."""

    streams: int = 4
    threads: int = 2
    events: int = 0
    input: str = "sample"
    output: Path | None = Path("out/workflow.parquet")
    modules: dict[str, InferenceConfig] = field(
        default_factory=lambda: {n: InferenceConfig(model=m) for n, m in DEFAULT_MODULES.items()}
    )

    @classmethod
    def from_dict(cls, data: dict[str, Any], base: Path | None = None) -> WorkflowConfig:
        """Build from parsed TOML; relative paths are taken from ``base`` (the file's folder)."""
        unknown = set(data) - {"process", "output", "inference", "modules"}
        if unknown:
            msg = f"unknown workflow config sections {sorted(unknown)}"
            raise ValueError(msg)

        def path(value: str | None) -> Path | None:
            if value is None:
                return None
            p = Path(value)
            return p if p.is_absolute() or base is None else base / p

        proc = data.get("process", {})
        defaults = dict(data.get("inference", {}))
        for key in ("site", "model_repository"):
            if key in defaults:
                defaults[key] = path(defaults[key])
        tables = data.get("modules", {})
        unknown = set(tables) - set(DEFAULT_MODULES)
        if unknown:
            msg = f"unknown ML modules {sorted(unknown)} (known: {sorted(DEFAULT_MODULES)})"
            raise ValueError(msg)
        modules = {}
        for name, model in DEFAULT_MODULES.items():
            own = dict(tables.get(name, {}))
            for key in ("site", "model_repository"):
                if key in own:
                    own[key] = path(own[key])
            modules[name] = InferenceConfig(**{"model": model, **defaults, **own})
        source = proc.get("input", "sample")
        output = data.get("output", {}).get("path", "out/workflow.parquet")
        return cls(
            streams=int(proc.get("streams", 4)),
            threads=int(proc.get("threads", 2)),
            events=int(proc.get("events", 0)),
            input=source if source == "sample" else str(path(source)),
            output=path(output) if output else None,
            modules=modules,
        )

    @classmethod
    def from_file(cls, path: Path) -> WorkflowConfig:
        path = Path(path)
        with path.open("rb") as f:
            return cls.from_dict(tomllib.load(f), base=path.parent)

    def with_inference(self, **changes: Any) -> WorkflowConfig:
        """The same workflow with ``changes`` (InferenceConfig fields) on every ML module."""
        return replace(self, modules={n: replace(c, **changes) for n, c in self.modules.items()})

    def with_mode(self, mode: str, **overrides: Any) -> WorkflowConfig:
        """The same workflow with every ML module in ``mode`` (and other overrides)."""
        modules = {n: replace(c, mode=mode) for n, c in self.modules.items()}
        return replace(self, modules=modules, **overrides)
