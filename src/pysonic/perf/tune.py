"""Configuration search, like Triton's Model Analyzer: real servers, the load generator, a ranking.

Each candidate config.pbtxt (the model's own with ``max_batch_size``, dynamic batching's
``preferred_batch_size`` and ``max_queue_delay_microseconds``, the instance count and the
runtime's ``intra_op_thread_count`` replaced) is served by a fresh ``pysonic serve`` process on a
temporary repository (the version directories are symlinked, not copied) and measured with
:func:`pysonic.perf.profiler.profile` at each concurrency level. A candidate's score is its best
throughput among the levels whose latency (p99 by default) stays within the budget; candidates
are ranked by score.

Two searches: ``brute`` measures every combination; ``quick`` climbs hills from the first value
of each parameter, measuring the neighbours (one parameter one step along its list) of the best
candidate so far, moving while one improves the score (Model Analyzer's quick search does the
same in spirit), so it measures far fewer candidates.

Example::

    space = SearchSpace(max_batch_size=(8, 32), instance_count=(1, 2))
    result = tune(Path("model_repository"), "dense_tagger", space, TuneSettings(budget_ms=50))
    result.best.config_text
"""

from __future__ import annotations

import itertools
import logging
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from pysonic.perf._control import Control
from pysonic.perf._engine import LoadLevel
from pysonic.perf._inputs import ModelIO, make_input_sets
from pysonic.perf._senders import TargetSpec
from pysonic.perf.profiler import LevelResult, ProfileSettings, profile

__all__ = [
    "Candidate",
    "SearchSpace",
    "TuneResult",
    "TuneSettings",
    "config_with",
    "link_model",
    "parse_sizes",
    "plot_tune",
    "tune",
]

log = logging.getLogger("pysonic.perf")
_PARAMS = ("max_batch_size", "preferred_batch_size", "max_queue_delay_us", "instance_count",
           "threads")  # fmt: skip


@dataclass(frozen=True)
class SearchSpace:
    """Values to try per parameter (an empty tuple keeps the model's own setting)."""

    max_batch_size: tuple[int, ...] = ()
    preferred_batch_size: tuple[tuple[int, ...], ...] = ()
    max_queue_delay_us: tuple[int, ...] = ()
    instance_count: tuple[int, ...] = ()
    threads: tuple[int, ...] = ()  #: the runtime's intra_op_thread_count

    def axes(self) -> dict[str, tuple[Any, ...]]:
        return {p: getattr(self, p) or (None,) for p in _PARAMS}


@dataclass(frozen=True)
class TuneSettings:
    budget_ms: float = 0.0  #: latency budget (0: none)
    percentile: int = 99  #: which latency the budget applies to
    levels: tuple[int, ...] = (1, 2, 4, 8)  #: concurrency levels measured per candidate
    batch: int = 1  #: rows per request
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    input_data: str = "random"
    profile: ProfileSettings = field(
        default_factory=lambda: ProfileSettings(window_ms=2000, max_trials=5)
    )
    processes: int = 1
    mode: str = "brute"  #: brute | quick


@dataclass
class Candidate:
    """One measured configuration."""

    values: dict[str, Any]
    config_text: str
    results: list[LevelResult] = field(default_factory=list)
    error: str = ""

    def latency_us(self, r: LevelResult, percentile: int) -> float:
        return r.percentile_us(percentile)

    def score(self, settings: TuneSettings) -> tuple[float, LevelResult | None]:
        """Best throughput within the latency budget, and the level that gave it."""
        ok = [
            r
            for r in self.results
            if r.requests
            and not r.errors
            and (
                not settings.budget_ms
                or r.percentile_us(settings.percentile) <= settings.budget_ms * 1000
            )
        ]
        best = max(ok, key=lambda r: r.throughput, default=None)
        return (best.throughput if best else 0.0), best

    def label(self) -> str:
        v = self.values
        parts = [
            f"mbs={v['max_batch_size']}" if v["max_batch_size"] is not None else "",
            f"pref={list(v['preferred_batch_size'])}" if v["preferred_batch_size"] is not None
            else "",
            f"delay={v['max_queue_delay_us']}us" if v["max_queue_delay_us"] is not None else "",
            f"inst={v['instance_count']}" if v["instance_count"] is not None else "",
            f"threads={v['threads']}" if v["threads"] is not None else "",
        ]  # fmt: skip
        return " ".join(p for p in parts if p) or "as shipped"


@dataclass
class TuneResult:
    model: str
    settings: TuneSettings
    candidates: list[Candidate]

    def ranked(self) -> list[Candidate]:
        return sorted(self.candidates, key=lambda c: c.score(self.settings)[0], reverse=True)

    @property
    def best(self) -> Candidate | None:
        ranked = self.ranked()
        return ranked[0] if ranked and ranked[0].score(self.settings)[0] > 0 else None

    def to_dict(self) -> dict[str, Any]:
        out = []
        for c in self.ranked():
            score, level = c.score(self.settings)
            out.append(
                {
                    "config": {k: v for k, v in c.values.items() if v is not None},
                    "label": c.label(),
                    "throughput": score,
                    "at_concurrency": level.level.concurrency if level else None,
                    "latency_us": level.percentile_us(self.settings.percentile) if level else None,
                    "error": c.error,
                    "levels": [r.summary() for r in c.results],
                }
            )
        return {"model": self.model, "budget_ms": self.settings.budget_ms, "candidates": out}


def config_with(base_text: str, values: dict[str, Any]) -> str:
    """The model's config.pbtxt with the candidate's values set (validated by parsing)."""
    from pysonic.repository.config import config_to_text, parse_model_config

    cfg = parse_model_config(base_text, "config.pbtxt")
    if values.get("max_batch_size") is not None:
        cfg.max_batch_size = values["max_batch_size"]
    db = values.get("preferred_batch_size"), values.get("max_queue_delay_us")
    if any(v is not None for v in db) or cfg.HasField("dynamic_batching"):
        if db[0] is not None:
            del cfg.dynamic_batching.preferred_batch_size[:]
            cfg.dynamic_batching.preferred_batch_size.extend(db[0])
        if db[1] is not None:
            cfg.dynamic_batching.max_queue_delay_microseconds = db[1]
    if values.get("instance_count") is not None:
        if not cfg.instance_group:
            cfg.instance_group.add()
        for group in cfg.instance_group:
            group.count = values["instance_count"]
    if values.get("threads") is not None:
        cfg.parameters["intra_op_thread_count"].string_value = str(values["threads"])
    return config_to_text(cfg)


def link_model(repo: Path, model: str, where: Path, config_text: str) -> None:
    """Put ``model`` into repository ``where`` with ``config_text``, its versions symlinked."""
    (where / model).mkdir()
    for entry in (repo / model).iterdir():
        if entry.name != "config.pbtxt":
            (where / model / entry.name).symlink_to(entry.resolve())
    (where / model / "config.pbtxt").write_text(config_text)


def _valid(values: dict[str, Any], base_mbs: int) -> bool:
    mbs = values["max_batch_size"] if values["max_batch_size"] is not None else base_mbs
    pref = values["preferred_batch_size"] or ()
    return all(p <= mbs for p in pref)


def _measure(
    repo: Path, model: str, values: dict[str, Any], settings: TuneSettings, work: Path
) -> Candidate:
    from pysonic.server.process import ServerProcess

    base = (repo / model / "config.pbtxt").read_text()
    cand = Candidate(values, config_with(base, values))
    where = Path(tempfile.mkdtemp(prefix="cand-", dir=work))
    link_model(repo, model, where, cand.config_text)
    try:
        with ServerProcess(where, models=[model]) as server, Control("grpc", server.grpc_url) as c:
            io = ModelIO.from_config(c.model_config(model))
            sets = make_input_sets(
                io, batch=settings.batch, shapes=settings.shapes, data=settings.input_data
            )
            spec = TargetSpec("grpc", server.grpc_url, model, tuple(sets), outputs=io.outputs)
            levels = [LoadLevel(concurrency=n) for n in settings.levels]
            prof = replace(settings.profile, percentile=settings.percentile)
            cand.results, _ = profile(spec, c, levels, prof, processes=settings.processes)
    except (RuntimeError, ValueError) as err:  # a config the server refuses scores zero
        cand.error = str(err).splitlines()[-1][:300] if str(err) else type(err).__name__
        log.warning("candidate %s failed: %s", cand.label(), cand.error)
    finally:
        shutil.rmtree(where, ignore_errors=True)
    return cand


def _neighbours(point: dict[str, int], sizes: dict[str, int]) -> list[dict[str, int]]:
    out = []
    for p in _PARAMS:
        for step in (-1, 1):
            k = point[p] + step
            if 0 <= k < sizes[p]:
                out.append({**point, p: k})
    return out


def tune(
    repo: Path,
    model: str,
    space: SearchSpace,
    settings: TuneSettings = TuneSettings(),
    *,
    progress: Callable[[Candidate, int, int], None] | None = None,
) -> TuneResult:
    """Search ``space`` for ``model`` in ``repo`` (see the module docstring)."""
    from pysonic.repository.config import parse_model_config

    if settings.mode not in ("brute", "quick"):
        msg = f"search mode must be brute or quick, got {settings.mode!r}"
        raise ValueError(msg)
    base_mbs = parse_model_config((repo / model / "config.pbtxt").read_text()).max_batch_size
    axes = space.axes()
    sizes = {p: len(v) for p, v in axes.items()}
    all_points = [
        dict(zip(_PARAMS, idx, strict=True))
        for idx in itertools.product(*(range(sizes[p]) for p in _PARAMS))
    ]

    def values(point: dict[str, int]) -> dict[str, Any]:
        return {p: axes[p][point[p]] for p in _PARAMS}

    points = [pt for pt in all_points if _valid(values(pt), base_mbs)]
    measured: dict[tuple[int, ...], Candidate] = {}
    work = Path(tempfile.mkdtemp(prefix="pysonic-tune-"))

    def run(point: dict[str, int]) -> Candidate:
        key = tuple(point[p] for p in _PARAMS)
        if key not in measured:
            measured[key] = _measure(repo, model, values(point), settings, work)
            if progress is not None:
                progress(measured[key], len(measured), len(points))
        return measured[key]

    try:
        if settings.mode == "brute":
            for point in points:
                run(point)
        elif points:
            current = points[0]
            best = run(current).score(settings)[0]
            while True:
                nexts = [n for n in _neighbours(current, sizes) if _valid(values(n), base_mbs)]
                scored = [(run(n).score(settings)[0], n) for n in nexts]
                top = max(scored, key=lambda s: s[0], default=(0.0, current))
                if top[0] <= best:
                    break
                best, current = top
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return TuneResult(model, settings, list(measured.values()))


def plot_tune(result: TuneResult, path: Path, top: int = 6) -> Path:
    """Latency vs throughput of the best candidates, and every candidate's score (bars)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ranked = result.ranked()
    q = result.settings.percentile
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 4.8))
    for c in ranked[:top]:
        rs = [r for r in c.results if r.requests]
        ax1.plot([r.throughput for r in rs], [r.percentile_us(q) / 1000 for r in rs], "o-",
                 label=c.label())  # fmt: skip
    if result.settings.budget_ms:
        ax1.axhline(result.settings.budget_ms, color="red", ls=":", label="budget")
    ax1.set_xlabel("inferences / s")
    ax1.set_ylabel(f"p{q} latency (ms)")
    ax1.set_title(f"{result.model}: best candidates")
    ax1.grid(alpha=0.3)
    ax1.legend(fontsize=7)
    labels = [c.label() for c in ranked]
    ax2.barh(labels[::-1], [c.score(result.settings)[0] for c in ranked][::-1])
    ax2.set_xlabel("inferences / s within the latency budget")
    ax2.tick_params(axis="y", labelsize=7)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def parse_sizes(texts: Sequence[str]) -> tuple[tuple[int, ...], ...]:
    """``["none", "4,8"]`` -> ``((), (4, 8))`` for ``--preferred-batch-size``."""
    out = []
    for t in texts:
        t = t.strip()
        out.append(() if t in ("", "none") else tuple(int(x) for x in t.split(",")))
    return tuple(out)
