"""The simulator's figure: coprocessor utilization per server (the seed's "GPU utilization per
Triton server"), events/s and replicas over time."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pysonic.simulate._engine import SimResult

__all__ = ["plot_simulation"]

MAX_LINES = 40  #: above this many servers the utilization panel shows mean and spread


def plot_simulation(result: SimResult, path: Path, title: str = "") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    minutes = np.asarray(result.times) / 60.0
    fig, (ax_u, ax_e, ax_r) = plt.subplots(3, 1, figsize=(10, 9), sharex=True)
    series = {
        k: np.array([np.nan if v is None else 100 * v for v in vals], dtype=float)
        for k, vals in result.utilization.items()
    }
    if len(series) <= MAX_LINES:
        for name, u in series.items():
            ax_u.plot(minutes, u, lw=1, label=name)
        if len(series) <= 10:
            ax_u.legend(fontsize=7, ncol=5, loc="upper left")
    elif series:
        stack = np.vstack(list(series.values()))
        with np.errstate(all="ignore"):
            lo, mid, hi = np.nanpercentile(stack, [5, 50, 95], axis=0)
        ax_u.fill_between(minutes, lo, hi, alpha=0.3, label="5-95% of servers")
        ax_u.plot(minutes, mid, lw=1.5, label="median server")
        ax_u.legend(fontsize=8)
    ax_u.set_ylabel("coprocessor utilization per server [%]")
    ax_u.set_ylim(0, 105)
    ax_e.plot(minutes, result.events_per_s, color="tab:green")
    ax_e.set_ylabel("events / s")
    ax_r.step(minutes, result.replicas, where="post", label="replicas")
    ax_r.step(minutes, result.ready_replicas, where="post", ls="--", label="ready")
    ax_r2 = ax_r.twinx()
    ax_r2.plot(minutes, result.jobs_running, color="tab:gray", lw=1, label="jobs running")
    ax_r2.set_ylabel("jobs running")
    ax_r.set_ylabel("servers")
    ax_r.set_xlabel("time [min]")
    ax_r.legend(loc="upper left", fontsize=8)
    ax_r2.legend(loc="upper right", fontsize=8)
    fig.suptitle(title or f"pysonic simulate: {result.scenario.get('name', '')}")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
