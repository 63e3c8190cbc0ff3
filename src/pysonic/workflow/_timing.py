"""Per-module and per-event timing of a workflow run, in the spirit of CMSSW's FastTimerService.

Why: the SONIC question is "what fraction p of the per-event time is inference?", because that
fraction bounds what offloading to a server can win (Amdahl). The framework measures, per
module, the wall time of each ``acquire``/``produce`` call on its thread and, for ExternalWork
modules, the asynchronous wait from ``acquire`` returning to ``holder.done()``; per event, the
wall time from start to finish; and events/s for the whole run. :class:`TimingReport` holds the
result, computes p with :meth:`TimingReport.inference_share` and round-trips through JSON.

Example::

    report = process.run(payloads)
    p = report.inference_share({"particlenet", "deepmet"})
    report.to_json("timing.json")
    rich.print(report.table())
"""

from __future__ import annotations

import json
import threading
from collections.abc import Collection, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rich.table import Table

__all__ = ["ModuleTiming", "TimingRecorder", "TimingReport"]


@dataclass(frozen=True)
class ModuleTiming:
    """Where one module's time went over a run.

    ``calls`` counts the events the module completed; ``total_s`` is the real time spent in its
    acquire and produce calls (``acquire_s + produce_s``), ``mean_ms`` that per call, ``max_ms``
    the largest per event. ``async_wait_s`` is time an ExternalWork module's event spent
    suspended (acquire returned, ``holder.done`` not yet called), which occupied no thread.

    Example::

        t = report.modules["particlenet"]
        print(t.calls, t.mean_ms, t.async_wait_mean_ms)
    """

    name: str
    kind: str
    calls: int = 0
    total_s: float = 0.0
    mean_ms: float = 0.0
    max_ms: float = 0.0
    acquire_s: float = 0.0
    produce_s: float = 0.0
    async_wait_s: float = 0.0
    async_wait_mean_ms: float = 0.0

    @property
    def busy_s(self) -> float:
        """Calls plus asynchronous wait: the module's share of per-event time."""
        return self.total_s + self.async_wait_s


@dataclass(frozen=True)
class TimingReport:
    """The timing of one :meth:`Process.run`, like FastTimerService's summary.

    Example::

        report = process.run(payloads)
        print(f"{report.events_per_s:.1f} ev/s, p = {report.inference_share({'tagger'}):.2f}")
    """

    events: int
    wall_s: float
    events_per_s: float
    streams: int
    threads: int
    event_total_s: float = 0.0
    event_mean_ms: float = 0.0
    event_max_ms: float = 0.0
    modules: dict[str, ModuleTiming] = field(default_factory=dict)

    def inference_share(self, names: Collection[str]) -> float:
        """The fraction p of module time (calls + async waits) spent in the modules ``names``.

        Unknown names raise KeyError (a typo would otherwise silently give p = 0)."""
        unknown = sorted(set(names) - self.modules.keys())
        if unknown:
            msg = f"no timing for modules {unknown}; timed modules: {sorted(self.modules)}"
            raise KeyError(msg)
        total = sum(t.busy_s for t in self.modules.values())
        if total <= 0.0:
            return 0.0
        return sum(self.modules[n].busy_s for n in set(names)) / total

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict; :meth:`from_dict` reverses it."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TimingReport:
        fields = dict(data)
        fields["modules"] = {k: ModuleTiming(**v) for k, v in fields.get("modules", {}).items()}
        return cls(**fields)

    def to_json(self, path: str | Path) -> Path:
        """Write the report as JSON to ``path`` and return the path."""
        path = Path(path)
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return path

    @classmethod
    def from_json(cls, path: str | Path) -> TimingReport:
        return cls.from_dict(json.loads(Path(path).read_text()))

    def table(self) -> Table:
        """A rich table of the modules, slowest (calls + wait) first, with run totals."""
        table = Table(
            title="workflow timing",
            caption=(
                f"{self.events} events in {self.wall_s:.3f} s: {self.events_per_s:.2f} ev/s "
                f"({self.streams} streams, {self.threads} threads); "
                f"event mean {self.event_mean_ms:.2f} ms, max {self.event_max_ms:.2f} ms"
            ),
        )
        for col in (
            "module",
            "kind",
            "calls",
            "mean ms",
            "max ms",
            "total s",
            "wait mean ms",
            "share",
        ):
            table.add_column(col, justify="left" if col in ("module", "kind") else "right")
        total = sum(t.busy_s for t in self.modules.values()) or 1.0
        for t in sorted(self.modules.values(), key=lambda t: t.busy_s, reverse=True):
            table.add_row(
                t.name,
                t.kind,
                str(t.calls),
                f"{t.mean_ms:.3f}",
                f"{t.max_ms:.3f}",
                f"{t.total_s:.3f}",
                f"{t.async_wait_mean_ms:.3f}",
                f"{t.busy_s / total:.1%}",
            )
        return table


class TimingRecorder:
    """Thread-safe accumulators the framework feeds while a run is in progress.

    Example::

        rec = TimingRecorder({"tagger": "external"})
        rec.module_done("tagger", acquire_s=0.001, wait_s=0.020, produce_s=0.002)
        rec.event_done(0.025)
        report = rec.report(wall_s=0.03, streams=1, threads=1)
    """

    def __init__(self, kinds: Mapping[str, str]) -> None:
        self._lock = threading.Lock()
        self._kinds = dict(kinds)
        # name -> [calls, acquire_s, wait_s, produce_s, max_call_s]
        self._acc: dict[str, list[float]] = {name: [0, 0.0, 0.0, 0.0, 0.0] for name in kinds}
        self._events = 0
        self._event_total = 0.0
        self._event_max = 0.0

    def module_done(self, name: str, *, acquire_s: float, wait_s: float, produce_s: float) -> None:
        with self._lock:
            acc = self._acc[name]
            acc[0] += 1
            acc[1] += acquire_s
            acc[2] += wait_s
            acc[3] += produce_s
            acc[4] = max(acc[4], acquire_s + produce_s)

    def event_done(self, seconds: float) -> None:
        with self._lock:
            self._events += 1
            self._event_total += seconds
            self._event_max = max(self._event_max, seconds)

    def report(self, *, wall_s: float, streams: int, threads: int) -> TimingReport:
        with self._lock:
            modules = {}
            for name, (calls, acq, wait, prod, max_s) in self._acc.items():
                n = int(calls)
                modules[name] = ModuleTiming(
                    name=name,
                    kind=self._kinds[name],
                    calls=n,
                    total_s=acq + prod,
                    mean_ms=(acq + prod) / n * 1e3 if n else 0.0,
                    max_ms=max_s * 1e3,
                    acquire_s=acq,
                    produce_s=prod,
                    async_wait_s=wait,
                    async_wait_mean_ms=wait / n * 1e3 if n else 0.0,
                )
            events = self._events
            return TimingReport(
                events=events,
                wall_s=wall_s,
                events_per_s=events / wall_s if wall_s > 0 else 0.0,
                streams=streams,
                threads=threads,
                event_total_s=self._event_total,
                event_mean_ms=self._event_total / events * 1e3 if events else 0.0,
                event_max_ms=self._event_max * 1e3,
                modules=modules,
            )
