"""``pysonic models ...``: export the shipped HEP models (needs ``pysonic[torch]``)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

__all__ = ["app"]

app = typer.Typer(
    help="Export and train the HEP models (ParticleNet, ParticleNet-Lite).", no_args_is_help=True
)


@app.command()
def export(
    out: Annotated[Path, typer.Option(help="Model repository to write into.")] = Path(
        "model_repository"
    ),
    model: Annotated[
        list[str] | None, typer.Option(help="Model(s) to export (default: all).")
    ] = None,
) -> None:
    """Regenerate the models' ONNX files and config.pbtxt deterministically."""
    from pysonic.models.export import EXPORTABLE, export_model

    names = model or list(EXPORTABLE)
    unknown = [n for n in names if n not in EXPORTABLE]
    if unknown:
        raise typer.BadParameter(f"unknown model(s) {unknown}; known: {list(EXPORTABLE)}")
    table = Table(title=f"exported into {out}")
    for col in ("model", "file", "size (KiB)", "parameters"):
        table.add_column(col)
    import onnx

    for name in names:
        path = export_model(name, out)
        params = sum(math.prod(t.dims) for t in onnx.load(path).graph.initializer)
        table.add_row(name, str(path), f"{path.stat().st_size / 1024:.0f}", str(params))
    Console().print(table)
