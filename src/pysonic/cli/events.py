"""``pysonic events ...``: generate Pythia8 + FastJet events into model-ready jet files."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import Progress

__all__ = ["app"]

app = typer.Typer(
    help="Generate events (Pythia8 + FastJet) and model inputs.", no_args_is_help=True
)


@app.command()
def generate(
    process: Annotated[str, typer.Option(help="ttbar | qcd | wjets")],
    n: Annotated[int, typer.Option(help="Number of events.")] = 100,
    seed: Annotated[int, typer.Option(help="Random seed (same seed, same events).")] = 1,
    out: Annotated[Path, typer.Option(help="Output parquet file.")] = Path("jets.parquet"),
) -> None:
    """Generate events and write their AK8 jets (features, masks, labels) to parquet."""
    from pysonic.events import generate_jets
    from pysonic.events.generate import PROCESSES
    from pysonic.events.store import write_jets

    if process not in PROCESSES:
        raise typer.BadParameter(f"must be one of {', '.join(PROCESSES)}", param_hint="--process")
    with Progress(console=Console(stderr=True)) as bar:
        task = bar.add_task(f"{process}: generating", total=n)
        jets = generate_jets(process, n, seed, progress=lambda k: bar.advance(task, k))
    if not jets:
        Console().print("[red]no jets passed the selection[/red]")
        raise typer.Exit(1)
    write_jets(jets, out)
    Console().print(f"wrote {len(jets['label'])} jets from {n} {process} events to {out}")
