"""``pysonic models ...``: export and train the shipped HEP models (needs ``pysonic[torch]``)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

__all__ = ["app"]

app = typer.Typer(
    help="Export and train the HEP models (ParticleNet, ParticleNet-Lite, ParT, DeepMET).",
    no_args_is_help=True,
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
    from pysonic.models.export import EXPORTABLE, WEIGHTS_DIR, export_model

    names = model or list(EXPORTABLE)
    unknown = [n for n in names if n not in EXPORTABLE]
    if unknown:
        raise typer.BadParameter(f"unknown model(s) {unknown}; known: {list(EXPORTABLE)}")
    table = Table(title=f"exported into {out}")
    for col in ("model", "file", "size (KiB)", "parameters", "weights"):
        table.add_column(col)
    import onnx

    for name in names:
        path = export_model(name, out)
        params = sum(math.prod(t.dims) for t in onnx.load(path).graph.initializer)
        trained = (WEIGHTS_DIR / f"{name}.npz").exists()
        table.add_row(
            name,
            str(path),
            f"{path.stat().st_size / 1024:.0f}",
            str(params),
            "trained" if trained else "random (untrained)",
        )
    Console().print(table)


@app.command()
def train(
    model: Annotated[str, typer.Option(help="Tagger to train.")] = "particlenet_lite",
    ttbar: Annotated[int, typer.Option(help="ttbar events to generate.")] = 10000,
    qcd: Annotated[int, typer.Option(help="QCD events to generate.")] = 8000,
    wjets: Annotated[int, typer.Option(help="W+jets events to generate.")] = 4000,
    data_dir: Annotated[
        Path, typer.Option(help="Where training events are generated (and reused).")
    ] = Path(".pysonic-train"),
    epochs: Annotated[int, typer.Option(min=1)] = 6,
    batch_size: Annotated[int, typer.Option(min=2)] = 128,
    lr: Annotated[float, typer.Option(help="Peak learning rate (one-cycle).")] = 3e-3,
    workers: Annotated[int, typer.Option(help="Generator processes.")] = 2,
    out: Annotated[Path, typer.Option(help="Model repository to export into.")] = Path(
        "model_repository"
    ),
    save: Annotated[
        bool, typer.Option(help="Ship the result: write weights/<model>.npz and export.")
    ] = True,
) -> None:
    """Generate events, train the tagger on AK8 jets (5 classes), report top-vs-QCD ROC AUC."""
    from pysonic.events.sample import sample_path
    from pysonic.models.export import WEIGHTS_DIR, export_model, save_weights
    from pysonic.models.train import load_training_jets, make_training_set, train_tagger

    console = Console()
    counts = {"ttbar": ttbar, "qcd": qcd, "wjets": wjets}
    columns = (TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn())
    with Progress(*columns, console=Console(stderr=True)) as bar:
        task = bar.add_task("generating", total=sum(counts.values()))
        files = make_training_set(
            data_dir, counts, workers=workers, progress=lambda k: bar.advance(task, k)
        )
        jets = load_training_jets(files)
        task = bar.add_task("training", total=1.0)
        result = train_tagger(
            jets,
            name=model,
            epochs=epochs,
            batch_size=batch_size,
            lr=lr,
            progress=lambda stage, f: bar.update(task, completed=f, description=stage),
        )
    table = Table(title=f"{model}: {result.n_train} training jets, {result.n_val} validation")
    for col in ("epoch", "loss", "val top-vs-QCD AUC", "val accuracy (5 classes)"):
        table.add_column(col, justify="right")
    for h in result.history:
        table.add_row(f"{h['epoch']:.0f}", f"{h['loss']:.4f}", f"{h['auc']:.4f}", f"{h['acc']:.3f}")
    console.print(table)
    console.print(f"trained in {result.seconds / 60:.1f} min")
    if save:
        weights = save_weights(result.model, WEIGHTS_DIR / f"{model}.npz")
        path = export_model(model, out)
        console.print(f"weights: {weights}\nexported: {path}")
        from pysonic.events.dataset import read_events
        from pysonic.events.inputs import jet_inputs
        from pysonic.models.evaluate import sample_auc

        auc = sample_auc(path, jet_inputs(read_events(sample_path()), "ak8"))
        console.print(f"top-vs-QCD AUC of the exported ONNX on the shipped sample: {auc:.4f}")
