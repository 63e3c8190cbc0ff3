"""``pysonic events ...``: generate Pythia8 + FastJet events, and the shipped sample."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

__all__ = ["app"]

app = typer.Typer(
    help="Generate events (Pythia8 + FastJet) and model inputs.", no_args_is_help=True
)


def _summary(events: object, path: Path, seconds: float) -> Table:
    import awkward as ak

    table = Table(title=f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB)")
    for col in ("events", "particles", "AK4 jets", "AK8 jets", "events/s"):
        table.add_column(col, justify="right")
    table.add_row(
        str(len(events)),  # type: ignore[arg-type]
        str(int(ak.sum(ak.num(events["particles"])))),  # type: ignore[index]
        str(int(ak.sum(ak.num(events["ak4"])))),  # type: ignore[index]
        str(int(ak.sum(ak.num(events["ak8"])))),  # type: ignore[index]
        f"{len(events) / seconds:.1f}",  # type: ignore[arg-type]
    )
    return table


@app.command()
def generate(
    process: Annotated[str, typer.Option(help="ttbar | qcd | wjets")],
    n: Annotated[int, typer.Option(help="Number of events.", min=1)] = 100,
    seed: Annotated[int, typer.Option(help="Random seed (same seed, same events).")] = 1,
    out: Annotated[
        Path, typer.Option(help="Output file: .parquet, or .root for a NanoAOD-like ROOT file.")
    ] = Path("events.parquet"),
) -> None:
    """Generate events: particles, AK4 and AK8 jets with truth labels, generator MET."""
    from pysonic.events.dataset import simulate
    from pysonic.events.generate import PROCESSES

    if process not in PROCESSES:
        raise typer.BadParameter(f"must be one of {', '.join(PROCESSES)}", param_hint="--process")
    start = time.monotonic()
    with Progress(console=Console(stderr=True)) as bar:
        task = bar.add_task(f"{process}: generating", total=n)
        events = simulate(process, n, seed, progress=lambda k: bar.advance(task, k))
    _write(events, out)
    Console().print(_summary(events, out, time.monotonic() - start))


def _write(events: object, out: Path) -> None:
    """Parquet, or NanoAOD-like ROOT (uproot) when the name ends in .root."""
    if out.suffix == ".root":
        from pysonic.events.nanoaod import write_root

        write_root(events, out)
    else:
        from pysonic.events.dataset import write_events

        write_events(events, out)


def _read(path: Path) -> object:
    if path.suffix == ".root":
        from pysonic.events.nanoaod import read_root

        return read_root(path)
    from pysonic.events.dataset import read_events

    return read_events(path)


@app.command()
def convert(
    source: Annotated[
        Path, typer.Argument(help="Events file (.parquet / .root), or 'sample' (the shipped one).")
    ],
    out: Annotated[Path, typer.Argument(help="Output file (.parquet or .root).")],
) -> None:
    """Convert events between parquet and NanoAOD-like ROOT (e.g. the shipped sample to ROOT)."""
    from pysonic.events.sample import sample_path

    start = time.monotonic()
    source = sample_path() if str(source) == "sample" else source
    events = _read(source)
    _write(events, out)
    Console().print(_summary(events, out, time.monotonic() - start))


@app.command()
def sample(
    out: Annotated[
        Path | None, typer.Option(help="Where to write (default: the shipped sample).")
    ] = None,
) -> None:
    """Regenerate the shipped ~2,000-event sample (fixed seeds) and record its checksum."""
    from pysonic.events.dataset import read_events
    from pysonic.events.sample import SAMPLE, make_sample

    start = time.monotonic()
    with Progress(console=Console(stderr=True)) as bar:
        task = bar.add_task("sample: generating", total=sum(n for _, n, _ in SAMPLE))
        path = make_sample(out, progress=lambda k: bar.advance(task, k))
    Console().print(_summary(read_events(path), path, time.monotonic() - start))
