"""``pysonic tune``: search a model's serving configuration with real servers (Model Analyzer).

Example::

    pysonic tune -m particlenet_lite --max-batch-size 64,256 --instance-count 1,2 \\
        --max-queue-delay-us 0,2000 --latency-budget-ms 50 --mode quick --out out/tune
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

__all__ = ["tune"]


def _ints(text: str, hint: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise typer.BadParameter("comma-separated integers", param_hint=hint) from None


def tune(
    model_name: Annotated[str, typer.Option("-m", "--model-name", help="Model to tune.")],
    model_repository: Annotated[Path, typer.Option(help="Repository holding the model.")] = Path(
        "model_repository"
    ),
    max_batch_size: Annotated[str, typer.Option(help="Values to try, e.g. 16,64,256.")] = "",
    preferred_batch_size: Annotated[
        list[str] | None,
        typer.Option(help="A preferred_batch_size list to try ('none' = empty); repeatable."),
    ] = None,
    max_queue_delay_us: Annotated[
        str, typer.Option(help="max_queue_delay_microseconds values, e.g. 0,1000,5000.")
    ] = "",
    instance_count: Annotated[str, typer.Option(help="Instance counts, e.g. 1,2.")] = "",
    threads: Annotated[
        str, typer.Option(help="Runtime threads per instance (intra_op_thread_count), e.g. 1,2.")
    ] = "",
    mode: Annotated[
        str, typer.Option(help="brute (every combination) | quick (hill climbing).")
    ] = "brute",
    latency_budget_ms: Annotated[
        float, typer.Option(help="Rank by throughput with latency within this (0 = none).")
    ] = 0.0,
    percentile: Annotated[
        int, typer.Option(min=1, max=99, help="The latency percentile the budget applies to.")
    ] = 99,
    concurrency: Annotated[str, typer.Option(help="Concurrency levels per candidate.")] = "1,2,4,8",
    batch_size: Annotated[int, typer.Option("-b", "--batch-size", min=1)] = 1,
    shape: Annotated[
        list[str] | None, typer.Option(help="NAME:d1,d2 for variable dims; repeatable.")
    ] = None,
    measurement_interval: Annotated[
        int, typer.Option("-p", "--measurement-interval", min=50, help="Window ms.")
    ] = 2000,
    max_trials: Annotated[int, typer.Option(min=1, help="Most windows per level.")] = 5,
    stability_percentage: Annotated[float, typer.Option("-s", "--stability-percentage")] = 10.0,
    out: Annotated[Path, typer.Option(help="Where the best config.pbtxt, plot and JSON go.")] = (
        Path("out/tune")
    ),
) -> None:
    """Search a model's serving config with real servers, like Triton's Model Analyzer.

    Tries max_batch_size, preferred_batch_size, max_queue_delay_microseconds, instance count and
    runtime threads, serving each candidate with a real `pysonic serve` and measuring it with the
    load generator; ranks by throughput within a latency budget; writes the best config.pbtxt, a
    report table, a plot and JSON."""
    from pysonic.perf._inputs import parse_shape
    from pysonic.perf.profiler import ProfileSettings
    from pysonic.perf.tune import SearchSpace, TuneSettings, parse_sizes, plot_tune
    from pysonic.perf.tune import tune as run_tune

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    if mode not in ("brute", "quick"):
        raise typer.BadParameter("brute or quick", param_hint="--mode")
    if not (model_repository / model_name / "config.pbtxt").exists():
        raise typer.BadParameter(f"no {model_repository / model_name / 'config.pbtxt'}")
    try:
        space = SearchSpace(
            max_batch_size=_ints(max_batch_size, "--max-batch-size"),
            preferred_batch_size=parse_sizes(preferred_batch_size or []),
            max_queue_delay_us=_ints(max_queue_delay_us, "--max-queue-delay-us"),
            instance_count=_ints(instance_count, "--instance-count"),
            threads=_ints(threads, "--threads"),
        )
        shapes = dict(parse_shape(s) for s in shape or [])
    except ValueError as err:
        raise typer.BadParameter(str(err)) from None
    settings = TuneSettings(
        budget_ms=latency_budget_ms,
        percentile=percentile,
        levels=_ints(concurrency, "--concurrency"),
        batch=batch_size,
        shapes=shapes,
        profile=ProfileSettings(
            window_ms=measurement_interval,
            max_trials=max_trials,
            stability_pct=stability_percentage,
        ),
        mode=mode,
    )
    console = Console()
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn())  # fmt: skip
    with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task(f"tuning {model_name}", total=None)

        def progress(cand, done: int, total: int) -> None:  # type: ignore[no-untyped-def]
            score = cand.score(settings)[0]
            bar.update(
                task,
                completed=done,
                total=total if mode == "brute" else None,
                description=f"{cand.label()}: {score:,.1f} infer/s",
            )

        result = run_tune(model_repository, model_name, space, settings, progress=progress)
    budget = f"p{percentile} <= {latency_budget_ms:g} ms" if latency_budget_ms else "no budget"
    table = Table(title=f"{model_name}: {len(result.candidates)} candidates ({mode}), {budget}")
    for col in ("rank", "configuration", "infer/s", "at conc.", f"p{percentile} ms", "note"):
        table.add_column(col, justify="left" if col == "configuration" else "right")
    for k, c in enumerate(result.ranked(), 1):
        score, level = c.score(settings)
        table.add_row(
            str(k),
            c.label(),
            f"{score:,.1f}",
            str(level.level.concurrency) if level else "-",
            f"{level.percentile_us(percentile) / 1000:.2f}" if level else "-",
            c.error or ("" if level else "over budget at every level"),
        )
    console.print(table)
    out.mkdir(parents=True, exist_ok=True)
    (out / "tune.json").write_text(json.dumps(result.to_dict(), indent=2))
    console.print(f"plot: {plot_tune(result, out / 'tune.png')}")
    best = result.best
    if best is None:
        console.print("[red]no candidate met the latency budget[/red]")
        raise typer.Exit(1)
    (out / "config.pbtxt").write_text(best.config_text)
    console.print(
        f"best: {best.label()}; config: {out / 'config.pbtxt'}; JSON: {out / 'tune.json'}"
    )
