"""The results of ``benchmarks/peers.py``: cells of (point, server) windows, a table and a plot.

A :class:`Cell` holds one server's windows at one point with the reference window measured just
before each (direct onnxruntime, or the asyncio echo floor for identity) and their ratios
(items/s over items/s; identity requests are batch 1, so that is requests/s over requests/s
there). The table shows medians over the windows; the plot, grouped bars of the ratios.

Example::

    cell = Cell("lite b16 c4", "pysonic")
    cell.add(served_window, direct_reference)
    cell.merged()["ratio"]
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

__all__ = ["Cell", "Point", "plot_ratios", "print_table"]

_NAN = float("nan")


@dataclass(frozen=True)
class Point:
    """A load point: ``batch``-row requests at ``concurrency`` on ``model``; ``direct_batch`` is
    the batch of the direct onnxruntime reference (0: the echo floor is the reference)."""

    name: str
    model: str
    batch: int
    concurrency: int
    direct_batch: int = 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Cell:
    """One server at one point: its windows, the adjacent references, the ratios."""

    point: str
    server: str
    windows: list[dict[str, Any]] = field(default_factory=list)
    references: list[dict[str, Any] | None] = field(default_factory=list)
    ratios: list[float] = field(default_factory=list)
    error: str = ""

    def add(self, window: dict[str, Any], reference: dict[str, Any] | None) -> None:
        self.windows.append(window)
        self.references.append(reference)
        if not window["requests"]:
            self.error = f"{window['errors']} errors, 0 answers: {window['error_sample']}"
        ok = reference and reference["items_per_s"] > 0 and window["requests"]
        self.ratios.append(window["items_per_s"] / reference["items_per_s"] if ok else _NAN)

    def merged(self) -> dict[str, float]:
        """Medians over the windows that got answers (NaN where none did)."""
        good = [w for w in self.windows if w["requests"]]

        def med(key: str) -> float:
            return float(np.median([w[key] for w in good])) if good else _NAN

        finite = [r for r in self.ratios if math.isfinite(r)]
        is_reference = self.server in ("direct", "echo")
        ratio = 1.0 if is_reference and good else (float(np.median(finite)) if finite else _NAN)
        return {
            "throughput": med("throughput"),
            "items_per_s": med("items_per_s"),
            "p50_ms": med("p50_ms"),
            "p99_ms": med("p99_ms"),
            "ratio": ratio,
            "errors": float(sum(w["errors"] for w in self.windows)),
        }

    def last_line(self) -> str:
        w, r = self.windows[-1], self.ratios[-1]
        return (
            f"{w['throughput']:9.1f} req/s {w['items_per_s']:9.1f} items/s  ratio {r:5.2f}  "
            f"p50 {w['p50_ms']:7.2f} ms  p99 {w['p99_ms']:7.2f} ms  errors {w['errors']}"
        )

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "merged": self.merged()}


def _num(x: float, digits: int = 0) -> str:
    return f"{x:,.{digits}f}" if math.isfinite(x) else "-"


def _short(text: str, width: int = 100) -> str:
    line = " ".join(text.split())
    return line if len(line) <= width else line[: width - 3] + "..."


def print_table(
    points: Sequence[Point],
    rows: Sequence[str],
    labels: Mapping[str, str],
    cells: Mapping[tuple[str, str], Cell],
    servers: Mapping[str, Mapping[str, Any]],
    notes: Mapping[str, str],
    model_lines: Sequence[str],
    *,
    missing: str = "not measured",
    console: Console | None = None,
) -> None:
    """One section per point, one row per server; then what each server got, and failures."""
    console = console or Console(width=200)
    table = Table(
        title="Python inference servers side by side (same models, load generator, machine)",
        caption="ratio: items/s over direct onnxruntime (HEP models; the window just before), "
        "requests/s over the asyncio echo floor (identity)",
    )
    for col in ("point", "server", "req/s", "items/s", "ratio", "p50 ms", "p99 ms", "note"):
        table.add_column(col, justify="left" if col in ("point", "server", "note") else "right")
    for point in points:
        for key in rows:
            if key == "direct" and not point.direct_batch:
                continue
            if key.startswith("echo") and point.direct_batch:
                continue
            cell = cells.get((point.name, key))
            start_error = servers.get(key, {}).get("error", "")
            label = labels[key] + (f" b{point.direct_batch}" if key == "direct" else "")
            if cell is None or not cell.windows:
                why = (cell.error if cell else "") or start_error or missing
                table.add_row(point.name, label, "-", "-", "-", "-", "-", _short(why))
                continue
            m = cell.merged()
            table.add_row(
                point.name,
                label,
                _num(m["throughput"]),
                _num(m["items_per_s"]),
                _num(m["ratio"], 2),
                _num(m["p50_ms"], 2),
                _num(m["p99_ms"], 2),
                _short(cell.error) if cell.error else "",
            )
        table.add_section()
    console.print(table)
    console.print("[bold]What each server got[/bold]")
    for key in rows:
        console.print(f"  {labels[key]}: {notes.get(key, '')}", highlight=False)
    console.print("[bold]Model settings (config.pbtxt), the same for every server[/bold]")
    for line in model_lines:
        console.print(f"  {line}", highlight=False)
    failed = {k: v["error"] for k, v in servers.items() if v.get("error")}
    if failed:
        console.print("[bold]Not run[/bold]")
        for key, why in failed.items():
            console.print(f"  {labels[key]}: {why}", highlight=False)


def plot_ratios(
    points: Sequence[Point],
    keys: Sequence[str],
    labels: Mapping[str, str],
    cells: Mapping[tuple[str, str], Cell],
    path: Path,
) -> Path:
    """Grouped bars: per point, one bar per server, height = ratio (1 = the reference)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [k for k in keys if k != "echo"]  # the identity reference itself is the 1.0 line
    fig, ax = plt.subplots(figsize=(11, 5.5))
    width = 0.8 / max(1, len(keys))
    for i, key in enumerate(keys):
        heights = []
        for point in points:
            cell = cells.get((point.name, key))
            heights.append(cell.merged()["ratio"] if cell and cell.windows else _NAN)
        xs = np.arange(len(points)) + (i - (len(keys) - 1) / 2) * width
        bars = ax.bar(xs, np.nan_to_num(heights), width, label=labels[key])
        for bar, h, point in zip(bars, heights, points, strict=True):
            if key.startswith("echo") and point.direct_batch:
                continue  # no model behind the echo: not a gap, not applicable
            text = f"{h:.2f}" if math.isfinite(h) else "n/a"
            ax.annotate(
                text,
                (bar.get_x() + bar.get_width() / 2, max(h, 0) if math.isfinite(h) else 0),
                ha="center",
                va="bottom",
                fontsize=7,
            )
    ax.axhline(1.0, color="black", linewidth=0.8, linestyle="--")
    ax.set_xticks(np.arange(len(points)), [p.name for p in points])
    ax.set_ylabel("ratio to reference")
    ax.set_title(
        "served / direct onnxruntime (HEP models), served / asyncio echo floor (identity)",
        fontsize=10,
    )
    ax.legend(fontsize=8, ncols=3, loc="upper center", bbox_to_anchor=(0.5, -0.08))
    ax.grid(True, axis="y", alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
